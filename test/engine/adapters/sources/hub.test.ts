// The hub source against a fake Hub over real HTTP: cache layout, revisions, tokens, gating, faults, single-flight.
// The fake Hub is test/helpers/fake-hub.ts; tokens here start with "hf_" like real ones but mean nothing.

import { lstat, readFile, readdir, readlink, realpath, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { AdapterAccessError, CancelledError, NotFoundError, UpstreamError, ValidationError } from "../../../../engine/src/errors.js";
import { pickToken } from "../../../../engine/src/adapters/sources/index.js";
import { FakeHub, gitBlobSha1, loraAdapterFiles, safetensors, sha256 } from "../../../helpers/fake-hub.js";
import { errorOf, harness, type Harness, occursUnder, tree } from "./setup.js";

const TOKEN = "hf_reader_token_5f3a9c";
const OTHER = "hf_other_token_11aa";
let hub: FakeHub;
let h: Harness;

beforeAll(async () => {
  hub = await FakeHub.start();
  hub.addToken(TOKEN);
  hub.addToken(OTHER);
});
afterAll(async () => {
  await hub.close();
});
afterEach(async () => {
  hub.clearFaults();
  hub.resetCounts();
  await h?.cleanup();
});

async function sources(over: Parameters<typeof harness>[0] = {}): Promise<Harness> {
  h = await harness({ hub: { endpoint: hub.url }, ...over });
  return h;
}

describe("hub source: cache layout", () => {
  it("writes the standard Hub cache: refs/main → sha, snapshots as relative links to blobs named by etag", async () => {
    const files = loraAdapterFiles({ extra: [{ path: "tokenizer_config.json", content: Buffer.from('{"chat_template":"x"}') }] });
    const weights = safetensors({ w: { dtype: "F32", shape: [1024, 300] } });
    files[1] = { path: "adapter_model.safetensors", content: weights, lfs: true };
    const sha = hub.addRepo("org/layout", files);
    const { sources: s, hubCache } = await sources();

    const a = await s.fetch("hub", "org/layout", undefined);
    const repoDir = join(hubCache, "models--org--layout");
    expect(a.dir).toBe(join(repoDir, "snapshots", sha));
    expect(a.fromCache).toBe(false);
    expect((await readFile(join(repoDir, "refs", "main"), "utf8"))).toBe(sha);

    const cfg = files[0].content;
    expect(await tree(join(repoDir, "snapshots", sha))).toEqual(["adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"]);
    expect(await readlink(join(a.dir, "adapter_config.json"))).toBe(`../../blobs/${gitBlobSha1(cfg)}`);
    expect(await readlink(join(a.dir, "adapter_model.safetensors"))).toBe(`../../blobs/${sha256(weights)}`);
    expect((await lstat(join(a.dir, "adapter_model.safetensors"))).isSymbolicLink()).toBe(true);
    expect((await readFile(join(a.dir, "adapter_model.safetensors"))).equals(weights)).toBe(true);
    expect((await readdir(join(repoDir, "blobs"))).sort()).toEqual([gitBlobSha1(cfg), sha256(weights), gitBlobSha1(files[3].content)].sort());
    expect(a.bytes).toBe(cfg.length + weights.length + files[3].content.length);
    // README.md is not part of an adapter.
    expect(hub.count("resolve", "README.md")).toBe(0);
    a.release();
  });

  it("a second request costs one access check and no download", async () => {
    hub.addRepo("org/twice", loraAdapterFiles());
    const { sources: s } = await sources();
    await s.checkAccess("hub", "org/twice", undefined);
    (await s.fetch("hub", "org/twice", undefined)).release();
    hub.resetCounts();

    await s.checkAccess("hub", "org/twice", undefined);
    const again = await s.fetch("hub", "org/twice", undefined);
    expect(again.fromCache).toBe(true);
    expect(again.timings.downloadMs).toBe(0);
    expect(hub.requests.map((r) => r.kind)).toEqual(["revision"]);
    again.release();
  });

  it("reuses blobs already in the Hub cache (e.g. written by the Python tools): lists, downloads nothing", async () => {
    hub.addRepo("org/shared", loraAdapterFiles());
    const first = await sources();
    (await first.sources.fetch("hub", "org/shared", undefined)).release();
    await first.sources.close();
    // A new server with its own index but the same HF cache.
    const second = await harness({ hub: { endpoint: hub.url } }, { hubCache: first.hubCache });
    hub.resetCounts();
    const a = await second.sources.fetch("hub", "org/shared", undefined);
    expect(hub.count("resolve") + hub.count("cdn")).toBe(0);
    expect(hub.count("tree")).toBe(1);
    expect(JSON.parse(await readFile(join(a.dir, "adapter_config.json"), "utf8")).r).toBe(4);
    a.release();
    await second.sources.close();
    await rm(second.dataDir, { recursive: true, force: true });
  });
});

describe("hub source: revisions", () => {
  it("id@branch, id@sha and main resolve to their own snapshots; refs name branches only", async () => {
    const mainSha = hub.addRepo("org/revs", loraAdapterFiles({ r: 2 }));
    const devSha = hub.addRepo("org/revs", loraAdapterFiles({ r: 8 }), { branch: "dev" });
    const { sources: s, hubCache } = await sources();
    const repoDir = join(hubCache, "models--org--revs");

    const dev = await s.fetch("hub", "org/revs@dev", undefined);
    expect(dev.dir).toBe(join(repoDir, "snapshots", devSha));
    expect(JSON.parse(await readFile(join(dev.dir, "adapter_config.json"), "utf8")).r).toBe(8);
    expect(await readFile(join(repoDir, "refs", "dev"), "utf8")).toBe(devSha);

    const pinned = await s.fetch("hub", `org/revs@${mainSha}`, undefined);
    expect(JSON.parse(await readFile(join(pinned.dir, "adapter_config.json"), "utf8")).r).toBe(2);
    expect((await readdir(join(repoDir, "refs"))).sort()).toEqual(["dev"]);
    dev.release();
    pinned.release();
  });

  it("a new commit on the branch is picked up on the next request", async () => {
    hub.addRepo("org/moving", loraAdapterFiles({ r: 2 }));
    const { sources: s } = await sources({ resolutionReuseMs: 0 });
    const before = await s.fetch("hub", "org/moving", undefined);
    const newSha = hub.addRepo("org/moving", loraAdapterFiles({ r: 16 }));
    const after = await s.fetch("hub", "org/moving", undefined);
    expect(after.dir.endsWith(newSha)).toBe(true);
    expect(after.dir).not.toBe(before.dir);
    before.release();
    after.release();
  });

  it("an unknown revision is a 404 naming it; a malformed id is a 400", async () => {
    hub.addRepo("org/norev", loraAdapterFiles());
    const { sources: s } = await sources();
    const e = await errorOf(s.fetch("hub", "org/norev@nope", undefined));
    expect(e).toBeInstanceOf(NotFoundError);
    expect(e.message).toContain('revision "nope"');
    for (const bad of ["a/b/c", "org/../x", "org/x@..", "org--x/y", ""]) {
      expect(await errorOf(s.checkAccess("hub", bad, undefined))).toBeInstanceOf(ValidationError);
    }
  });
});

describe("hub source: private, gated and revoked", () => {
  it("private: 401 without a token, 200 with a reader's token, 404 for a token that cannot see it", async () => {
    hub.addRepo("org/private", loraAdapterFiles(), { private: true, readers: [TOKEN] });
    const { sources: s } = await sources();
    const anon = await errorOf(s.checkAccess("hub", "org/private", undefined));
    expect(anon).toBeInstanceOf(AdapterAccessError);
    expect(anon.kind).toBe("unauthorized");
    expect(anon.message).toContain('"org/private"');
    expect(anon.message).toContain("api_token");

    await s.checkAccess("hub", "org/private", TOKEN);
    const a = await s.fetch("hub", "org/private", TOKEN);
    expect(a.bytes).toBeGreaterThan(0);
    a.release();

    expect((await errorOf(s.checkAccess("hub", "org/private", OTHER))).kind).toBe("not_found");
    expect((await errorOf(s.checkAccess("hub", "org/private", "hf_unknown_token"))).kind).toBe("unauthorized");
  });

  it("gated: 401 without a token, 403 for a token not granted, served once granted", async () => {
    hub.addRepo("org/gated", loraAdapterFiles(), { gated: true });
    const { sources: s } = await sources();
    expect((await errorOf(s.checkAccess("hub", "org/gated", undefined))).kind).toBe("unauthorized");
    const denied = await errorOf(s.checkAccess("hub", "org/gated", TOKEN));
    expect(denied.kind).toBe("forbidden");
    expect(denied.message).toContain("accept its conditions");
    hub.grant("org/gated", TOKEN);
    (await s.fetch("hub", "org/gated", TOKEN)).release();
  });

  it("a revoked token is refused on an adapter already cached", async () => {
    const tok = "hf_soon_revoked_77";
    hub.addToken(tok);
    hub.addRepo("org/revoke", loraAdapterFiles(), { private: true, readers: [tok] });
    const { sources: s } = await sources();
    await s.checkAccess("hub", "org/revoke", tok);
    (await s.fetch("hub", "org/revoke", tok)).release();
    hub.revoke(tok);
    const e = await errorOf(s.checkAccess("hub", "org/revoke", tok));
    expect(e).toBeInstanceOf(AdapterAccessError);
    expect(e.kind).toBe("unauthorized");
    // fetch does not reuse a resolution whose access check was just refused.
    expect((await errorOf(s.fetch("hub", "org/revoke", tok))).kind).toBe("unauthorized");
  });

  it("the global token: used for hub only with LORAX_USE_GLOBAL_HF_TOKEN, never otherwise", async () => {
    const serverToken = "hf_server_global_token_99";
    hub.addToken(serverToken);
    hub.addRepo("org/global", loraAdapterFiles(), { private: true, readers: [serverToken] });
    const { sources: s } = await sources();
    const base = { bodyToken: undefined, authorizationHeader: undefined, apiKeysEnabled: false, serverToken, source: "hub" as const };

    const off = pickToken({ ...base, useGlobalHfToken: false });
    expect(off).toBeUndefined();
    expect((await errorOf(s.checkAccess("hub", "org/global", off))).kind).toBe("unauthorized");

    const on = pickToken({ ...base, useGlobalHfToken: true });
    expect(on).toBe(serverToken);
    await s.checkAccess("hub", "org/global", on);
    (await s.fetch("hub", "org/global", on)).release();
    expect(hub.requests.filter((r) => r.kind === "revision").map((r) => r.token)).toEqual([undefined, serverToken]);
  });

  it("a token is never logged, never written under the caches, never sent to the CDN", async () => {
    const secret = "hf_very_secret_value_0xDEADBEEF";
    hub.addToken(secret);
    const files = loraAdapterFiles();
    files[1] = { ...files[1], lfs: true };
    hub.addRepo("org/secret", files, { private: true, readers: [secret] });
    hub.addRepo("org/secret-gone", loraAdapterFiles(), { private: true, readers: [] });
    const { sources: s, log, dataDir, hubCache } = await sources({ progress: { intervalMs: 0, minBytes: 0 } });
    await s.checkAccess("hub", "org/secret", secret);
    (await s.fetch("hub", "org/secret", secret)).release();
    hub.failNext("revision", 1, 503);
    await s.checkAccess("hub", "org/secret", secret);
    await errorOf(s.checkAccess("hub", "org/secret-gone", secret));
    await s.close();

    expect(log.lines.length).toBeGreaterThan(0);
    expect(log.text()).not.toContain(secret);
    expect(log.text()).not.toContain(secret.slice(3));
    expect(await occursUnder(hubCache, secret)).toEqual([]);
    expect(await occursUnder(dataDir, secret)).toEqual([]);
    const cdn = hub.requests.filter((r) => r.kind === "cdn");
    expect(cdn.length).toBe(1);
    expect(cdn[0].token).toBeUndefined();
  });
});

describe("hub source: failures", () => {
  it("retries 5xx with backoff, then succeeds", async () => {
    hub.addRepo("org/flaky", loraAdapterFiles());
    const { sources: s, log } = await sources();
    hub.failNext("revision", 2, 503);
    await s.checkAccess("hub", "org/flaky", undefined);
    expect(hub.count("revision")).toBe(3);
    hub.failNext("resolve", 1, 502);
    (await s.fetch("hub", "org/flaky", undefined)).release();
    expect(log.text()).toContain("retrying");
  });

  it("an upstream that stays down → 502, no cache entry, no partial file; other adapters still serve", async () => {
    hub.addRepo("org/down", loraAdapterFiles());
    hub.addRepo("org/up", loraAdapterFiles());
    const { sources: s, hubCache } = await sources();
    (await s.fetch("hub", "org/up", undefined)).release();
    hub.failNext("resolve", 100, 500);
    const e = await errorOf(s.fetch("hub", "org/down", undefined));
    expect(e).toBeInstanceOf(UpstreamError);
    expect(e.kind).toBe("upstream");
    expect(e.message).toContain('"org/down"');
    expect(s.cache.get(`hub:org/down@${hub.repos.get("org/down")!.refs.get("main")}`)).toBeUndefined();
    const leftovers = (await tree(join(hubCache, "models--org--down"))).filter((p) => p.includes("incomplete") || p.includes(".tmp") || p.includes("snapshots/"));
    expect(leftovers).toEqual([]);
    hub.clearFaults();
    const up = await s.fetch("hub", "org/up", undefined);
    expect(up.fromCache).toBe(true);
    up.release();
  });

  it("a slow Hub → 504 (timeout), reported as such", async () => {
    hub.addRepo("org/slow", loraAdapterFiles());
    const { sources: s } = await sources({ timeouts: { requestMs: 150, stallMs: 300, accessMs: 1_000, totalMs: 1_000 } });
    hub.slow("revision", 2_000);
    const e = await errorOf(s.checkAccess("hub", "org/slow", undefined));
    expect(e).toBeInstanceOf(UpstreamError);
    expect(e.kind).toBe("upstream_timeout");
  });

  it("the overall access-check deadline → 504 even while one attempt is still allowed to wait", async () => {
    hub.addRepo("org/slower", loraAdapterFiles());
    const { sources: s } = await sources({ timeouts: { requestMs: 5_000, stallMs: 5_000, accessMs: 300, totalMs: 5_000 } });
    hub.slow("revision", 2_000);
    const started = Date.now();
    const e = await errorOf(s.checkAccess("hub", "org/slower", undefined));
    expect(e.kind).toBe("upstream_timeout");
    expect(e.message).toContain("timed out after 300 ms");
    expect(Date.now() - started).toBeLessThan(1_500);
  });

  it("a connection cut mid-file is retried; the partial bytes never become a blob", async () => {
    const files = loraAdapterFiles({ hidden: 512, layers: 4 });
    files[1] = { ...files[1], lfs: true };
    hub.addRepo("org/cut", files);
    const { sources: s, hubCache } = await sources();
    hub.cutNext(1, 10_000);
    const a = await s.fetch("hub", "org/cut", undefined);
    expect((await readFile(join(a.dir, "adapter_model.safetensors"))).equals(files[1].content)).toBe(true);
    expect(hub.count("cdn")).toBe(2);
    a.release();

    hub.addRepo("org/cut-always", files.map((f) => ({ ...f })));
    hub.cutNext(100, 10_000);
    const e = await errorOf(s.fetch("hub", "org/cut-always", undefined));
    expect(e.kind).toBe("upstream");
    const blobs = await readdir(join(hubCache, "models--org--cut-always", "blobs")).catch(() => [] as string[]);
    expect(blobs.filter((b) => b.includes("incomplete"))).toEqual([]);
    expect(blobs).not.toContain(sha256(files[1].content));
  });

  it("a body with the right length but wrong bytes fails its hash check, is retried, and never becomes a blob", async () => {
    const files = loraAdapterFiles({ hidden: 128 });
    files[1] = { ...files[1], lfs: true };
    hub.addRepo("org/corrupt", files);
    hub.addRepo("org/corrupt-always", loraAdapterFiles({ hidden: 128 }).map((f) => ({ ...f, lfs: false })));
    const { sources: s, hubCache } = await sources();
    hub.corruptNext(1);
    const a = await s.fetch("hub", "org/corrupt", undefined);
    expect((await readFile(join(a.dir, "adapter_model.safetensors"))).equals(files[1].content)).toBe(true);
    a.release();
    hub.corruptNext(100);
    const e = await errorOf(s.fetch("hub", "org/corrupt-always", undefined));
    expect(e.kind).toBe("upstream");
    expect(e.message).toMatch(/corrupt download: git-sha1/);
    expect(await readdir(join(hubCache, "models--org--corrupt-always", "blobs"))).toEqual([]);
  });

  it("a stalled body is cut after stallMs and retried", async () => {
    const files = loraAdapterFiles({ hidden: 256 });
    hub.addRepo("org/stall", files);
    const { sources: s } = await sources({ timeouts: { requestMs: 1_000, stallMs: 200, accessMs: 2_000, totalMs: 5_000 }, retry: { attempts: 2, baseDelayMs: 1, maxDelayMs: 1 } });
    hub.throttle(1_000, 400);
    const e = await errorOf(s.fetch("hub", "org/stall", undefined));
    expect(e.message).toMatch(/no data for 200 ms/);
  });

  it("a caller that goes away gets CancelledError; the shared download still finishes for the others", async () => {
    hub.addRepo("org/cancel", loraAdapterFiles({ hidden: 2048 }));
    const { sources: s } = await sources();
    hub.throttle(16_384, 20);
    const ctl = new AbortController();
    const leaving = s.fetch("hub", "org/cancel", undefined, ctl.signal);
    const staying = s.fetch("hub", "org/cancel", undefined);
    setTimeout(() => ctl.abort(), 50);
    expect(await errorOf(leaving)).toBeInstanceOf(CancelledError);
    const a = await staying;
    expect(a.bytes).toBeGreaterThan(0);
    a.release();
  });

  it("big downloads log progress", async () => {
    const files = loraAdapterFiles({ hidden: 1024, layers: 4 });
    hub.addRepo("org/big", files);
    const { sources: s, log } = await sources({ progress: { intervalMs: 10, minBytes: 64 * 1024 } });
    hub.throttle(64 * 1024, 15);
    (await s.fetch("hub", "org/big", undefined)).release();
    const progress = log.lines.map((l) => JSON.parse(l) as { msg: string; what?: string; bytes?: number }).filter((l) => l.msg === "adapter download progress");
    expect(progress.length).toBeGreaterThan(1);
    expect(progress[0].what).toContain("adapter_model.safetensors");
  });
});

describe("hub source: single-flight and adapter kinds", () => {
  it("50 concurrent requests for one uncached adapter → one download", async () => {
    const files = loraAdapterFiles({ hidden: 256 });
    files[1] = { ...files[1], lfs: true };
    hub.addRepo("org/popular", files);
    const { sources: s } = await sources();
    hub.throttle(8_192, 2);
    const all = await Promise.all(
      Array.from({ length: 50 }, async () => {
        await s.checkAccess("hub", "org/popular", undefined);
        return s.fetch("hub", "org/popular", undefined);
      }),
    );
    expect(new Set(all.map((a) => a.dir)).size).toBe(1);
    expect(hub.count("cdn")).toBe(1);
    expect(hub.count("resolve", "adapter_model.safetensors")).toBe(1);
    expect(hub.count("resolve", "adapter_config.json")).toBe(1);
    expect(hub.count("tree")).toBe(1);
    for (const a of all) a.release();
  });

  it("a request that joined a download refused on another request's token runs its own", async () => {
    const leader = "hf_leader_token_revoked_midway";
    const joiner = "hf_joiner_token_valid";
    hub.addToken(leader);
    hub.addToken(joiner);
    hub.addRepo("org/two-tokens", loraAdapterFiles(), { private: true, readers: [leader, joiner] });
    const { sources: s } = await sources();
    hub.slow("tree", 300);
    const first = s.fetch("hub", "org/two-tokens", leader);
    await new Promise((r) => setTimeout(r, 50));
    const second = s.fetch("hub", "org/two-tokens", joiner);
    await new Promise((r) => setTimeout(r, 50));
    hub.revoke(leader);
    expect((await errorOf(first)).kind).toBe("unauthorized");
    const a = await second;
    expect(a.bytes).toBeGreaterThan(0);
    expect(hub.requests.filter((r) => r.kind === "tree").map((r) => r.token)).toEqual([leader, joiner]);
    a.release();
  });

  it("50 concurrent requests while the Hub is down share one failing download, not 50", async () => {
    hub.addRepo("org/down-popular", loraAdapterFiles());
    const { sources: s } = await sources();
    hub.failNext("tree", 1_000, 503);
    const errors = await Promise.all(Array.from({ length: 50 }, () => errorOf(s.fetch("hub", "org/down-popular", undefined))));
    expect(new Set(errors.map((e) => e.kind))).toEqual(new Set(["upstream"]));
    expect(hub.count("tree")).toBe(3);
  });

  it("Medusa heads: config.json with medusa_num_heads pulls the head weights", async () => {
    const heads = safetensors({ "0.0.linear.weight": { dtype: "F16", shape: [16, 16] } });
    hub.addRepo("org/medusa", [
      { path: "config.json", content: Buffer.from(JSON.stringify({ medusa_num_heads: 3, medusa_num_layers: 1, base_model_name_or_path: "x" })) },
      { path: "medusa_lm_head.safetensors", content: heads },
    ]);
    const { sources: s } = await sources();
    const a = await s.fetch("hub", "org/medusa", undefined);
    expect((await readFile(join(a.dir, "medusa_lm_head.safetensors"))).equals(heads)).toBe(true);
    a.release();
  });

  it("a repo that is no adapter (a base model) is refused without downloading its weights", async () => {
    hub.addRepo("org/base-model", [
      { path: "config.json", content: Buffer.from(JSON.stringify({ model_type: "llama", hidden_size: 16 })) },
      { path: "model.safetensors", content: safetensors({ w: { dtype: "F32", shape: [64, 64] } }) },
    ]);
    hub.addRepo("org/no-weights", [{ path: "adapter_config.json", content: Buffer.from("{}") }]);
    const { sources: s } = await sources();
    const e = await errorOf(s.fetch("hub", "org/base-model", undefined));
    expect(e.kind).toBe("incompatible");
    expect(e.message).toMatch(/neither a PEFT LoRA/);
    expect(hub.count("resolve", "model.safetensors")).toBe(0);
    expect((await errorOf(s.fetch("hub", "org/no-weights", undefined))).message).toMatch(/neither adapter_model.safetensors nor adapter_model.bin/);
  });

  it("adapter_model.bin is fetched when there is no safetensors; safetensors wins when both exist", async () => {
    const files = loraAdapterFiles();
    hub.addRepo("org/bin", [files[0], { path: "adapter_model.bin", content: Buffer.from("PK-not-really") }]);
    hub.addRepo("org/both", [...files, { path: "adapter_model.bin", content: Buffer.from("PK-not-really") }]);
    const { sources: s } = await sources();
    const bin = await s.fetch("hub", "org/bin", undefined);
    expect(await tree(bin.dir)).toEqual(["adapter_config.json", "adapter_model.bin"]);
    const both = await s.fetch("hub", "org/both", undefined);
    expect(await tree(both.dir)).toEqual(["adapter_config.json", "adapter_model.safetensors"]);
    bin.release();
    both.release();
  });

  it("a cached entry whose files were deleted is fetched again", async () => {
    hub.addRepo("org/deleted", loraAdapterFiles());
    const { sources: s } = await sources();
    const a = await s.fetch("hub", "org/deleted", undefined);
    a.release();
    const target = await realpath(join(a.dir, "adapter_model.safetensors"));
    await rm(target);
    const b = await s.fetch("hub", "org/deleted", undefined);
    expect(b.fromCache).toBe(false);
    expect((await stat(join(b.dir, "adapter_model.safetensors"))).size).toBeGreaterThan(0);
    b.release();
  });
});
