// The disk cache budget: LRU eviction of unpinned entries, pins, the index across restarts, Hub blob sharing.
// Unit cases use plain directories; the Hub case goes through the fake Hub to check the shared cache stays intact.

import { mkdir, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AdapterDiskCache } from "../../../../engine/src/adapters/sources/disk-cache.js";
import { FakeHub, gitBlobSha1, loraAdapterFiles, safetensors } from "../../../helpers/fake-hub.js";
import { harness, memoryLog, tempDir } from "./setup.js";

async function dirEntry(cache: AdapterDiskCache, name: string, bytes: number) {
  const dir = join(cache.root, "s3", name);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, "w.bin"), Buffer.alloc(bytes));
  return cache.commit({ kind: "dir", key: `s3:b/${name}`, dir, files: ["w.bin"], bytes });
}

const tick = () => new Promise((r) => setTimeout(r, 5));

describe("AdapterDiskCache", () => {
  it("evicts the least recently used unpinned entries until the budget fits", async () => {
    const root = await tempDir("cache");
    const log = memoryLog();
    const cache = await AdapterDiskCache.open(root, 250, log.logger);
    await dirEntry(cache, "a", 100);
    await tick();
    await dirEntry(cache, "b", 100);
    await tick();
    (await cache.acquire("s3:b/a"))!.release(); // a is now more recent than b
    await tick();
    await dirEntry(cache, "c", 100);
    await cache.enforceBudget();
    expect(cache.list().map((e) => e.key).sort()).toEqual(["s3:b/a", "s3:b/c"]);
    await expect(stat(join(root, "s3", "b"))).rejects.toThrow();
    expect(log.text()).toContain("adapter evicted from disk cache");
    await cache.flush();
    await rm(root, { recursive: true, force: true });
  });

  it("never evicts a pinned entry; warns when only pinned entries are left", async () => {
    const root = await tempDir("cache");
    const log = memoryLog();
    const cache = await AdapterDiskCache.open(root, 150, log.logger);
    await dirEntry(cache, "old", 100);
    const lease = await cache.acquire("s3:b/old");
    await tick();
    await dirEntry(cache, "new", 100);
    await cache.enforceBudget();
    expect(cache.list().map((e) => e.key)).toEqual(["s3:b/old"]);
    await dirEntry(cache, "newer", 100);
    await cache.enforceBudget(1000);
    expect(cache.list().map((e) => e.key)).toEqual(["s3:b/old"]);
    expect(log.text()).toContain("every remaining entry is in use");
    lease!.release();
    lease!.release();
    expect(cache.isPinned("s3:b/old")).toBe(false);
    await cache.enforceBudget(100);
    expect(cache.list()).toEqual([]);
    await cache.flush();
    await rm(root, { recursive: true, force: true });
  });

  it("keeps its index across restarts and drops entries whose files vanished", async () => {
    const root = await tempDir("cache");
    const log = memoryLog();
    const first = await AdapterDiskCache.open(root, 1e9, log.logger);
    await dirEntry(first, "kept", 10);
    await dirEntry(first, "lost", 10);
    await first.flush();
    const idx = JSON.parse(await readFile(first.indexPath(), "utf8")) as { entries: unknown[] };
    expect(idx.entries).toHaveLength(2);
    await rm(join(root, "s3", "lost"), { recursive: true });
    const second = await AdapterDiskCache.open(root, 1e9, log.logger);
    expect(await second.acquire("s3:b/kept")).toBeDefined();
    expect(await second.acquire("s3:b/lost")).toBeUndefined();
    expect(second.list().map((e) => e.key)).toEqual(["s3:b/kept"]);
    await second.flush();
    await rm(root, { recursive: true, force: true });
  });

  it("refuses a budget that is not a positive number", async () => {
    await expect(AdapterDiskCache.open("/tmp/x-never", 0, memoryLog().logger)).rejects.toThrow(/positive byte count, got 0/);
  });
});

describe("disk cache over the Hub cache", () => {
  let hub: FakeHub;
  beforeAll(async () => {
    hub = await FakeHub.start();
  });
  afterAll(async () => {
    await hub.close();
  });

  it("evicting a snapshot removes its refs and unshared blobs, keeps blobs another snapshot links", async () => {
    const config = Buffer.from(JSON.stringify({ r: 4, peft_type: "LORA" }));
    const weightsOf = () => safetensors({ w: { dtype: "F32", shape: [64, 64] } });
    const w1 = weightsOf();
    const w2 = weightsOf();
    const sha1 = hub.addRepo("org/evict", [{ path: "adapter_config.json", content: config }, { path: "adapter_model.safetensors", content: w1 }]);
    const sha2 = hub.addRepo("org/evict", [{ path: "adapter_config.json", content: config }, { path: "adapter_model.safetensors", content: w2 }], { branch: "v2" });
    hub.addRepo("org/other", loraAdapterFiles());
    const budget = w1.length + config.length + w2.length + config.length + 10;
    const h = await harness({ hub: { endpoint: hub.url }, cacheBudgetBytes: budget });
    const repoDir = join(h.hubCache, "models--org--evict");

    (await h.sources.fetch("hub", "org/evict", undefined)).release();
    await tick();
    (await h.sources.fetch("hub", "org/evict@v2", undefined)).release();
    await tick();
    (await h.sources.fetch("hub", "org/other", undefined)).release();
    await h.sources.cache.enforceBudget();

    // The oldest (main) went: snapshot, refs/main and its weights blob; the shared config blob stays for v2.
    expect(await readdir(join(repoDir, "snapshots"))).toEqual([sha2]);
    expect(await readdir(join(repoDir, "refs"))).toEqual(["v2"]);
    const blobs = await readdir(join(repoDir, "blobs"));
    expect(blobs).toContain(gitBlobSha1(config));
    expect(blobs).toHaveLength(2);
    expect(h.sources.cache.get(`hub:org/evict@${sha1}`)).toBeUndefined();
    const v2 = await h.sources.fetch("hub", "org/evict@v2", undefined);
    expect(v2.fromCache).toBe(true);
    v2.release();
    await h.cleanup();
  });
});
