// The pbase source: a fake Predibase API (v2 and legacy endpoints, every status) resolving into s3rver's bucket.
// Tokens are fake; the bucket fetch is the same S3 code the s3 suite covers in depth.

import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { AdapterAccessError, NotFoundError, UpstreamError, ValidationError } from "../../../../engine/src/errors.js";
import { FakePredibase } from "../../../helpers/fake-predibase.js";
import { loraAdapterFiles } from "../../../helpers/fake-hub.js";
import { S3RVER_CREDENTIALS, TestS3 } from "../../../helpers/s3.js";
import { errorOf, type Harness, harness, occursUnder } from "./setup.js";

const BUCKET = "pbase-models";
const TOKEN = "pb_token_of_tenant_a_123";
const FOREIGN = "pb_token_of_tenant_b_456";
let s3: TestS3;
let pb: FakePredibase;
let h: Harness | undefined;

beforeAll(async () => {
  s3 = await TestS3.start([BUCKET, "elsewhere"]);
  pb = await FakePredibase.start();
  pb.validTokens.add(TOKEN);
  pb.foreignTokens.add(FOREIGN);
  await s3.putAll(BUCKET, "tenant-a/sql/3", loraAdapterFiles({ r: 3 }));
  await s3.putAll(BUCKET, "tenant-a/sql/4", loraAdapterFiles({ r: 4 }));
  await s3.putAll(BUCKET, "uuid-1/run-9/artifacts/model/model_weights", loraAdapterFiles({ r: 9 }));
  await s3.putAll(BUCKET, "uuid-2/run-5/artifacts/model/model_weights", loraAdapterFiles({ r: 5 }));
  await s3.putAll("elsewhere", "x/y", loraAdapterFiles({ r: 7 }));
  pb.add({ repo: "sql", version: 3, status: "completed", adapterPath: "tenant-a/sql/3" });
  pb.add({ repo: "sql", version: 4, status: "training", adapterPath: "tenant-a/sql/4" });
  pb.add({ repo: "sql", version: 5, status: "training" });
  pb.add({ repo: "old", version: 1, status: "completed", uuid: "uuid-1", bestRunID: "run-9", legacyOnly: true });
  pb.add({ repo: "old", version: 2, status: "completed", uuid: "uuid-2", bestRunID: "run-5", legacyOnly: true });
  pb.add({ repo: "full-url", version: 1, status: "completed", adapterPath: "s3://elsewhere/x/y" });
  pb.add({ repo: "odd", version: 1, status: "reticulating", adapterPath: "tenant-a/sql/3" });
  pb.add({ repo: "done-no-path", version: 1, status: "completed" });
  for (const [i, status] of ["pending", "queued", "stopping", "stopped", "canceled", "errored"].entries()) {
    pb.add({ repo: "states", version: i + 1, status, adapterPath: "tenant-a/sql/3" });
  }
});
afterAll(async () => {
  await pb.close();
  await s3.close();
});
afterEach(async () => {
  pb.failNext(0);
  pb.requests.length = 0;
  await h?.cleanup();
  h = undefined;
});

async function sources(extra: Parameters<typeof harness>[0] = {}): Promise<Harness> {
  h = await harness({
    predibase: { gatewayEndpoint: pb.url, modelBucket: BUCKET },
    s3: { endpoint: s3.endpoint, credentials: S3RVER_CREDENTIALS },
    ...extra,
  });
  return h;
}

async function rankOf(dir: string): Promise<number> {
  return (JSON.parse(await readFile(join(dir, "adapter_config.json"), "utf8")) as { r: number }).r;
}

describe("pbase source", () => {
  it("v2: a completed version resolves to its adapterPath in PREDIBASE_MODEL_BUCKET and is fetched", async () => {
    const { sources: s } = await sources();
    await s.checkAccess("pbase", "sql/3", TOKEN);
    const a = await s.fetch("pbase", "sql/3", TOKEN);
    expect(a.source).toBe("pbase");
    expect(a.cacheKey).toBe(`s3:${BUCKET}/tenant-a/sql/3`);
    expect(await rankOf(a.dir)).toBe(3);
    // The access check's resolution is reused by the fetch right after it.
    expect(pb.requests.map((r) => r.path)).toEqual(["/v2/repos/sql/version/3"]);
    expect(pb.requests[0].token).toBe(TOKEN);
    a.release();
  });

  it("a cached adapter: the access check still asks Predibase, the bucket is not touched", async () => {
    const { sources: s, dataDir, hubCache } = await sources();
    (await s.fetch("pbase", "sql/3", TOKEN)).release();
    await s.close();
    pb.requests.length = 0;
    h = await harness({ predibase: { gatewayEndpoint: pb.url, modelBucket: BUCKET }, s3: { endpoint: "http://127.0.0.1:9", credentials: S3RVER_CREDENTIALS } }, { dataDir, hubCache });
    await h.sources.checkAccess("pbase", "sql/3", TOKEN);
    const a = await h.sources.fetch("pbase", "sql/3", TOKEN);
    expect(a.fromCache).toBe(true);
    expect(pb.count("/v2/")).toBe(1);
    a.release();
  });

  it("training with weights is served; training without weights names the status", async () => {
    const { sources: s, log } = await sources();
    const a = await s.fetch("pbase", "sql/4", TOKEN);
    expect(await rankOf(a.dir)).toBe(4);
    a.release();
    expect(log.text()).toContain("still training");
    const e = await errorOf(s.checkAccess("pbase", "sql/5", TOKEN));
    expect(e).toBeInstanceOf(NotFoundError);
    expect(e.message).toContain('"sql/5"');
    expect(e.message).toContain('its status is "training"');
  });

  it.each(["pending", "queued", "stopping", "stopped", "canceled", "errored"])("status %s → a clear error naming it", async (status) => {
    const { sources: s } = await sources();
    const version = ["pending", "queued", "stopping", "stopped", "canceled", "errored"].indexOf(status) + 1;
    const e = await errorOf(s.fetch("pbase", `states/${version}`, TOKEN));
    expect(e).toBeInstanceOf(NotFoundError);
    expect(e.message).toContain(`its status is "${status}"`);
  });

  it("completed without adapterPath → not available yet; an unknown status with a path is tried (and logged)", async () => {
    const { sources: s, log } = await sources();
    expect((await errorOf(s.checkAccess("pbase", "done-no-path/1", TOKEN))).message).toMatch(/no weights yet/);
    const a = await s.fetch("pbase", "odd/1", TOKEN);
    expect(await rankOf(a.dir)).toBe(3);
    a.release();
    expect(log.text()).toContain("reticulating");
  });

  it("legacy fallback: v2 404 → /v1/models/version/name/{name}?version=N → {uuid}/{bestRunID}/artifacts/model/model_weights/", async () => {
    const { sources: s } = await sources();
    const a = await s.fetch("pbase", "old/1", TOKEN);
    expect(await rankOf(a.dir)).toBe(9);
    expect(pb.requests.map((r) => r.path)).toEqual(["/v2/repos/old/version/1", "/v1/models/version/name/old?version=1"]);
    a.release();
  });

  it("no version → the latest, through the legacy endpoint", async () => {
    const { sources: s } = await sources();
    const a = await s.fetch("pbase", "old", TOKEN);
    expect(await rankOf(a.dir)).toBe(5);
    expect(pb.requests.map((r) => r.path)).toEqual(["/v1/models/version/name/old"]);
    a.release();
  });

  it("an adapterPath that is a full s3:// URL names its own bucket", async () => {
    const { sources: s } = await sources();
    const a = await s.fetch("pbase", "full-url/1", TOKEN);
    expect(a.cacheKey).toBe("s3:elsewhere/x/y");
    expect(await rankOf(a.dir)).toBe(7);
    a.release();
  });

  it("tokens: none → 401 without asking, invalid or revoked → 401, another tenant's → 403; unknown repo → 404", async () => {
    const { sources: s } = await sources();
    const none = await errorOf(s.checkAccess("pbase", "sql/3", undefined));
    expect(none).toBeInstanceOf(AdapterAccessError);
    expect(none.kind).toBe("unauthorized");
    expect(none.message).toContain("api_token");
    expect(pb.requests).toHaveLength(0);
    expect((await errorOf(s.checkAccess("pbase", "sql/3", "pb_bogus"))).kind).toBe("unauthorized");
    expect((await errorOf(s.checkAccess("pbase", "sql/3", FOREIGN))).kind).toBe("forbidden");
    expect((await errorOf(s.checkAccess("pbase", "nothing/1", TOKEN))).kind).toBe("not_found");
    expect((await errorOf(s.checkAccess("pbase", "a/b/c", TOKEN)))).toBeInstanceOf(ValidationError);

    const revoked = "pb_revoked_later_789";
    pb.validTokens.add(revoked);
    (await s.fetch("pbase", "sql/3", revoked)).release();
    pb.validTokens.delete(revoked);
    expect((await errorOf(s.checkAccess("pbase", "sql/3", revoked))).kind).toBe("unauthorized");
  });

  it("5xx is retried; a Predibase that stays down → 502; tokens never reach logs or cache files", async () => {
    const { sources: s, log, dataDir } = await sources();
    pb.failNext(2, 503);
    await s.checkAccess("pbase", "sql/3", TOKEN);
    pb.failNext(100, 500);
    const e = await errorOf(s.checkAccess("pbase", "sql/4", TOKEN));
    expect(e).toBeInstanceOf(UpstreamError);
    expect(e.kind).toBe("upstream");
    pb.failNext(0);
    (await s.fetch("pbase", "sql/3", TOKEN)).release();
    await s.close();
    expect(log.text()).not.toContain(TOKEN);
    expect(await occursUnder(dataDir, TOKEN)).toEqual([]);
  });
});
