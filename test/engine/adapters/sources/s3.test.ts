// The s3 source against s3rver (a real S3 endpoint on 127.0.0.1), plus a cutting proxy and a refusing fake for faults.
// s3rver cannot reject a wrong secret (it does not verify SigV4); the AccessDenied fake stands in for that case.

import { readFile, readdir } from "node:fs/promises";
import { type IncomingMessage, type ServerResponse, createServer, request } from "node:http";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { adapterSourcesConfigFromEnv } from "../../../../engine/src/adapters/sources/index.js";
import { AdapterAccessError, NotFoundError, UpstreamError, ValidationError } from "../../../../engine/src/errors.js";
import { listen, loraAdapterFiles } from "../../../helpers/fake-hub.js";
import { S3RVER_CREDENTIALS, TestS3 } from "../../../helpers/s3.js";
import { errorOf, harness, type Harness, occursUnder, tree } from "./setup.js";

const BUCKET = "adapters-bucket";
let s3: TestS3;
let h: Harness | undefined;
const files = loraAdapterFiles({ extra: [{ path: "sub/notes.json", content: Buffer.from('{"n":1}') }] });

beforeAll(async () => {
  s3 = await TestS3.start([BUCKET]);
  await s3.putAll(BUCKET, "team/a", files);
  await s3.putAll(BUCKET, "team/ab", loraAdapterFiles({ r: 8 }));
});
afterAll(async () => {
  await s3.close();
});
afterEach(async () => {
  await h?.cleanup();
  h = undefined;
});

async function sources(endpoint = s3.endpoint, credentials = S3RVER_CREDENTIALS, extra: Parameters<typeof harness>[0] = {}): Promise<Harness> {
  h = await harness({ s3: { endpoint, credentials }, ...extra });
  return h;
}

describe("s3 source", () => {
  it("fetches every object under the prefix (and only that prefix) into the cache", async () => {
    const { sources: s, dataDir } = await sources();
    const a = await s.fetch("s3", `s3://${BUCKET}/team/a`, undefined);
    expect(a.source).toBe("s3");
    expect(a.cacheKey).toBe(`s3:${BUCKET}/team/a`);
    expect(a.dir.startsWith(join(dataDir, "adapter-cache", "s3", BUCKET))).toBe(true);
    expect(await tree(a.dir)).toEqual(["README.md", "adapter_config.json", "adapter_model.safetensors", "sub", "sub/notes.json"]);
    expect((await readFile(join(a.dir, "adapter_model.safetensors"))).equals(files[1].content)).toBe(true);
    expect(a.bytes).toBe(files.reduce((n, f) => n + f.content.length, 0));
    expect(a.fromCache).toBe(false);
    a.release();
  });

  it("a trailing slash names the same adapter; a cached adapter needs no S3 call at all", async () => {
    const { sources: s, dataDir, hubCache } = await sources();
    (await s.fetch("s3", `s3://${BUCKET}/team/ab/`, undefined)).release();
    await s.close();
    // A new server process over the same data dir, with S3 unreachable: served from the disk cache.
    const again = await harness({ s3: { endpoint: "http://127.0.0.1:9", credentials: S3RVER_CREDENTIALS } }, { dataDir, hubCache });
    h = again;
    const a = await again.sources.fetch("s3", `s3://${BUCKET}/team/ab`, undefined);
    expect(a.fromCache).toBe(true);
    expect(JSON.parse(await readFile(join(a.dir, "adapter_config.json"), "utf8")).r).toBe(8);
    a.release();
  });

  it("credentials from the SDK's default chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)", async () => {
    const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
    process.env.AWS_ACCESS_KEY_ID = S3RVER_CREDENTIALS.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = S3RVER_CREDENTIALS.secretAccessKey;
    try {
      h = await harness({ s3: { endpoint: s3.endpoint } });
      (await h.sources.fetch("s3", `s3://${BUCKET}/team/a`, undefined)).release();
    } finally {
      process.env.AWS_ACCESS_KEY_ID = saved.id;
      process.env.AWS_SECRET_ACCESS_KEY = saved.secret;
      if (saved.id === undefined) delete process.env.AWS_ACCESS_KEY_ID;
      if (saved.secret === undefined) delete process.env.AWS_SECRET_ACCESS_KEY;
    }
  });

  it("an unknown access key → 403 naming the location and the credentials to check", async () => {
    const { sources: s } = await sources(s3.endpoint, { accessKeyId: "NOT-A-KEY", secretAccessKey: "x" });
    const e = await errorOf(s.fetch("s3", `s3://${BUCKET}/team/a`, undefined));
    expect(e).toBeInstanceOf(AdapterAccessError);
    expect(e.kind).toBe("forbidden");
    expect(e.message).toContain(`s3://${BUCKET}/team/a`);
    expect(e.message).toContain("InvalidAccessKeyId");
    expect(e.message).toContain("AWS_ACCESS_KEY_ID");
  });

  // A wrong secret for a known key cannot be tested against s3rver 3.7: it does not verify SigV4 signatures and
  // accepts any secret. The AccessDenied fake below covers how a refusal maps to 403.
  it("an endpoint answering AccessDenied → 403", async () => {
    const deny = createServer((_req, res) => {
      const body = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>';
      res.writeHead(403, { "Content-Type": "application/xml", "Content-Length": String(Buffer.byteLength(body)) });
      res.end(body);
    });
    const url = await listen(deny);
    try {
      const { sources: s } = await sources(url);
      const e = await errorOf(s.fetch("s3", `s3://${BUCKET}/team/a`, undefined));
      expect(e.kind).toBe("forbidden");
      expect(e.message).toContain("AccessDenied");
    } finally {
      deny.closeAllConnections();
      deny.close();
    }
  });

  it("a missing prefix or bucket → 404; a malformed location → 400", async () => {
    const { sources: s } = await sources();
    const missing = await errorOf(s.fetch("s3", `s3://${BUCKET}/team/nope`, undefined));
    expect(missing).toBeInstanceOf(NotFoundError);
    expect(missing.message).toContain(`s3://${BUCKET}/team/nope/`);
    expect(await errorOf(s.fetch("s3", "s3://no-such-bucket/team/a", undefined))).toBeInstanceOf(NotFoundError);
    for (const bad of ["s3://", `s3://${BUCKET}`, `s3://${BUCKET}/`, "s3://UPPER/x", `s3://${BUCKET}/a/../b`, "team/a"]) {
      expect(await errorOf(s.checkAccess("s3", bad, undefined))).toBeInstanceOf(ValidationError);
    }
  });

  it("an endpoint that is down → 502 after retries", async () => {
    const { sources: s } = await sources("http://127.0.0.1:9");
    const e = await errorOf(s.fetch("s3", `s3://${BUCKET}/team/a`, undefined));
    expect(e).toBeInstanceOf(UpstreamError);
    expect(e.kind).toBe("upstream");
    expect(e.message).toMatch(/failed after 3 tries/);
  });

  it("a connection cut mid-object is retried; a download that keeps failing leaves no cache entry", async () => {
    let cutsLeft = 1;
    let cuts = 0;
    const proxy = createServer((req: IncomingMessage, res: ServerResponse) => {
      const target = new URL(s3.endpoint);
      const up = request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        const isObject = req.method === "GET" && new URL(req.url ?? "/", "http://x").pathname.endsWith(".safetensors");
        if (isObject && cutsLeft > 0) {
          cutsLeft--;
          cuts++;
          upRes.once("data", (chunk: Buffer) => res.write(chunk.subarray(0, 100), () => res.socket?.destroy()));
          return;
        }
        upRes.pipe(res);
      });
      req.pipe(up);
    });
    const url = await listen(proxy);
    try {
      const { sources: s, dataDir } = await sources(url);
      const a = await s.fetch("s3", `s3://${BUCKET}/team/a`, undefined);
      expect((await readFile(join(a.dir, "adapter_model.safetensors"))).equals(files[1].content)).toBe(true);
      a.release();
      expect(cuts).toBe(1);

      cutsLeft = 100;
      const e = await errorOf(s.fetch("s3", `s3://${BUCKET}/team/ab`, undefined));
      expect(e.kind).toBe("upstream");
      expect(s.cache.get(`s3:${BUCKET}/team/ab`)).toBeUndefined();
      expect(await readdir(join(dataDir, "adapter-cache", "s3", BUCKET))).toHaveLength(1);
      expect((await occursUnder(join(dataDir, "adapter-cache"), "incomplete")).length).toBe(0);
      expect(await readdir(join(dataDir, "adapter-cache", ".tmp"))).toEqual([]);
    } finally {
      proxy.closeAllConnections();
      proxy.close();
    }
  });

  it("50 concurrent requests for one uncached prefix → one download", async () => {
    const { sources: s, log } = await sources();
    const all = await Promise.all(Array.from({ length: 50 }, () => s.fetch("s3", `s3://${BUCKET}/team/a`, undefined)));
    expect(new Set(all.map((a) => a.dir)).size).toBe(1);
    expect(log.lines.filter((l) => l.includes('"adapter download started"'))).toHaveLength(1);
    for (const a of all) a.release();
  });

  it("the endpoint comes from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / S3_ENDPOINT_URL, in that order", () => {
    const base = { dataDir: "/d", logger: { debug() {}, info() {}, warn() {}, error() {} } };
    expect(adapterSourcesConfigFromEnv(base, { S3_ENDPOINT_URL: "http://minio:9000" }).s3?.endpoint).toBe("http://minio:9000");
    expect(adapterSourcesConfigFromEnv(base, { S3_ENDPOINT_URL: "http://b", AWS_ENDPOINT_URL: "http://a" }).s3?.endpoint).toBe("http://a");
    expect(adapterSourcesConfigFromEnv(base, { AWS_ENDPOINT_URL: "http://a", AWS_ENDPOINT_URL_S3: "http://s3" }).s3?.endpoint).toBe("http://s3");
    expect(adapterSourcesConfigFromEnv(base, {}).s3?.endpoint).toBeUndefined();
    expect(adapterSourcesConfigFromEnv(base, { AWS_REGION: "eu-west-1" }).s3?.region).toBe("eu-west-1");
  });
});
