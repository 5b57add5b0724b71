// The disk cache's bookkeeping: which downloaded adapters exist, their bytes and last use, pins, and LRU eviction.
// Sources download and lay out files themselves; this only records complete entries and removes whole ones.

import { randomBytes } from "node:crypto";
import { lstat, mkdir, readFile, readdir, readlink, rename, rm, stat, writeFile } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { AdapterAccessError, LoraserveError } from "../../errors.js";
import { SingleFlight } from "./single-flight.js";
import { untilAborted } from "./transfer.js";
import type { SourceLogger } from "./types.js";

/**
 * One complete cached adapter.
 * `hub`: a snapshot in the shared Hub cache (`repoDir/snapshots/<sha>`); removing it also removes blobs no
 * other snapshot links to, and refs naming the sha. `dir`: a directory this cache owns outright (s3, pbase).
 */
export type CacheEntry =
  | { kind: "hub"; key: string; dir: string; repoDir: string; sha: string; files: string[]; bytes: number; lastUsed: number }
  | { kind: "dir"; key: string; dir: string; files: string[]; bytes: number; lastUsed: number };

/** An entry as a source hands it over; the cache stamps `lastUsed`. */
export type NewCacheEntry = DistributiveOmit<CacheEntry, "lastUsed">;
type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** A cached entry handed to one caller: pinned until `release`. */
export interface Obtained {
  entry: CacheEntry;
  release: () => void;
  /** No download ran (or was joined) for this caller. */
  fromCache: boolean;
  downloadMs: number;
}

interface IndexFile {
  version: 1;
  entries: CacheEntry[];
}

/** A tiny async mutex per key. */
class KeyedLock {
  private readonly tails = new Map<string, Promise<void>>();

  isHeld(key: string): boolean {
    return this.tails.has(key);
  }

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const tail = prev.then(() => mine);
    this.tails.set(key, tail);
    await prev;
    try {
      return await fn();
    } finally {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}

export class AdapterDiskCache {
  private readonly entries = new Map<string, CacheEntry>();
  private readonly pins = new Map<string, number>();
  private readonly locks = new KeyedLock();
  private readonly downloads = new SingleFlight<CacheEntry>();
  private saving: Promise<void> = Promise.resolve();
  private dirty = false;

  private constructor(
    /** Where the index lives and where `dir` entries are laid out. */
    readonly root: string,
    readonly budgetBytes: number,
    private readonly log: SourceLogger,
  ) {}

  /** Opens (or creates) the cache under `root`, dropping leftovers of downloads a crash interrupted. */
  static async open(root: string, budgetBytes: number, log: SourceLogger): Promise<AdapterDiskCache> {
    if (!(budgetBytes > 0)) throw new Error(`adapter disk cache budget must be a positive byte count, got ${budgetBytes}`);
    const cache = new AdapterDiskCache(resolve(root), budgetBytes, log);
    await mkdir(cache.root, { recursive: true });
    await rm(cache.tmpRoot(), { recursive: true, force: true });
    try {
      const parsed = JSON.parse(await readFile(cache.indexPath(), "utf8")) as IndexFile;
      if (parsed.version === 1) for (const e of parsed.entries) cache.entries.set(e.key, e);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
        log.warn({ path: cache.indexPath(), err: (err as Error).message }, "adapter disk cache: unreadable index, starting empty");
      }
    }
    return cache;
  }

  indexPath(): string {
    return join(this.root, "index.json");
  }

  /** A fresh private directory for an in-progress download; renamed into place once complete. */
  async makeTempDir(): Promise<string> {
    const dir = join(this.tmpRoot(), randomBytes(8).toString("hex"));
    await mkdir(dir, { recursive: true });
    return dir;
  }

  private tmpRoot(): string {
    return join(this.root, ".tmp");
  }

  /** Total bytes of all entries (blobs shared between Hub snapshots count once per snapshot). */
  totalBytes(): number {
    let sum = 0;
    for (const e of this.entries.values()) sum += e.bytes;
    return sum;
  }

  get(key: string): CacheEntry | undefined {
    return this.entries.get(key);
  }

  list(): CacheEntry[] {
    return [...this.entries.values()];
  }

  isPinned(key: string): boolean {
    return (this.pins.get(key) ?? 0) > 0;
  }

  /** Pins `key` against eviction; the returned function unpins (once, however often called). */
  pin(key: string): () => void {
    this.pins.set(key, (this.pins.get(key) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = (this.pins.get(key) ?? 1) - 1;
      if (n <= 0) this.pins.delete(key);
      else this.pins.set(key, n);
    };
  }

  /** Serialises work on one storage location (a Hub repo folder, an s3 cache dir) against eviction and other downloads. */
  withLock<T>(lockKey: string, fn: () => Promise<T>): Promise<T> {
    return this.locks.run(lockKey, fn);
  }

  /**
   * A pinned, touched entry whose files are all still on disk, or undefined (an entry whose files vanished,
   * e.g. someone cleaned the Hub cache, is dropped).
   */
  async acquire(key: string): Promise<{ entry: CacheEntry; release: () => void } | undefined> {
    const entry = this.entries.get(key);
    if (entry === undefined) return undefined;
    const release = this.pin(key);
    for (const f of entry.files) {
      try {
        await stat(join(entry.dir, f));
      } catch {
        release();
        if (this.entries.get(key) === entry) {
          this.entries.delete(key);
          this.scheduleSave();
          this.log.warn({ key, missing: f }, "adapter disk cache: entry lost a file, will fetch it again");
        }
        return undefined;
      }
    }
    entry.lastUsed = Date.now();
    this.scheduleSave();
    return { entry, release };
  }

  /**
   * The entry for `key`, pinned and touched. When it is missing, `download` (which must commit it) runs once for all
   * concurrent callers; each caller may leave through its own `signal` without stopping it for the others.
   * `rerunOnAccessError`: a caller that joined a download made with another request's token, and saw it refused,
   * runs one of its own (its own access was checked separately).
   */
  async obtain(key: string, download: () => Promise<CacheEntry>, signal: AbortSignal | undefined, what: string, rerunOnAccessError = false): Promise<Obtained> {
    let downloadMs = 0;
    let fromCache = true;
    let reran = false;
    for (let tries = 0; tries < 3; tries++) {
      const hit = await this.acquire(key);
      if (hit !== undefined) {
        this.trimInBackground();
        return { ...hit, fromCache, downloadMs };
      }
      fromCache = false;
      const t0 = Date.now();
      let mine = false;
      const shared = this.downloads.run(key, () => {
        mine = true;
        return download();
      });
      try {
        await untilAborted(shared, signal, what);
      } catch (err) {
        if (!rerunOnAccessError || !(err instanceof AdapterAccessError) || mine || reran) throw err;
        reran = true;
        tries--;
      }
      downloadMs += Date.now() - t0;
    }
    throw new LoraserveError("internal", `${what}: cached copy vanished three times right after download (disk cache budget too small?)`);
  }

  /** Records a complete entry (its files already in place). */
  commit(entry: NewCacheEntry): CacheEntry {
    const full = { ...entry, lastUsed: Date.now() } as CacheEntry;
    this.entries.set(entry.key, full);
    this.scheduleSave();
    return full;
  }

  /**
   * Evicts least recently used, unpinned, unlocked entries until the total plus `incomingBytes` fits the budget.
   * When everything left is pinned, logs and returns: a request is never failed for lack of disk budget.
   */
  async enforceBudget(incomingBytes = 0): Promise<void> {
    const skipped = new Set<string>();
    while (this.totalBytes() + incomingBytes > this.budgetBytes) {
      const victim = [...this.entries.values()]
        .filter((e) => !skipped.has(e.key) && !this.isPinned(e.key) && !this.locks.isHeld(lockKeyOf(e)))
        .sort((a, b) => a.lastUsed - b.lastUsed)[0];
      if (victim === undefined) {
        this.log.warn(
          { budgetBytes: this.budgetBytes, totalBytes: this.totalBytes(), incomingBytes },
          "adapter disk cache over budget, but every remaining entry is in use",
        );
        return;
      }
      skipped.add(victim.key);
      await this.locks.run(lockKeyOf(victim), async () => {
        if (this.entries.get(victim.key) !== victim || this.isPinned(victim.key)) return;
        this.entries.delete(victim.key);
        this.scheduleSave();
        try {
          await removeEntryFiles(victim);
        } catch (err) {
          this.log.warn({ key: victim.key, err: (err as Error).message }, "adapter disk cache: could not remove all files of an evicted entry");
          return;
        }
        this.log.info({ key: victim.key, bytes: victim.bytes, lastUsed: new Date(victim.lastUsed).toISOString() }, "adapter evicted from disk cache");
      });
    }
  }

  /** enforceBudget() without waiting; failures are logged, never thrown. */
  trimInBackground(): void {
    this.enforceBudget().catch((err: unknown) => this.log.warn({ err: (err as Error).message }, "adapter disk cache: clean-up failed"));
  }

  /** Resolves once the index on disk reflects every change made so far. */
  async flush(): Promise<void> {
    while (this.dirty) await this.saveNow();
    await this.saving;
  }

  private scheduleSave(): void {
    this.dirty = true;
    void this.saveNow().catch((err: unknown) => this.log.warn({ err: (err as Error).message }, "adapter disk cache: could not write index"));
  }

  private saveNow(): Promise<void> {
    this.saving = this.saving.then(async () => {
      if (!this.dirty) return;
      this.dirty = false;
      const body: IndexFile = { version: 1, entries: [...this.entries.values()] };
      const tmp = `${this.indexPath()}.${randomBytes(4).toString("hex")}.tmp`;
      await writeFile(tmp, JSON.stringify(body));
      await rename(tmp, this.indexPath());
    });
    return this.saving;
  }
}

/** The lock an entry's storage is guarded by: a Hub repo folder is shared by its snapshots. */
export function lockKeyOf(e: Pick<CacheEntry, "kind" | "dir"> & { repoDir?: string }): string {
  return e.kind === "hub" && e.repoDir !== undefined ? `hub-repo:${e.repoDir}` : `dir:${e.dir}`;
}

async function removeEntryFiles(e: CacheEntry): Promise<void> {
  if (e.kind === "dir") {
    await rm(e.dir, { recursive: true, force: true });
    return;
  }
  await rm(e.dir, { recursive: true, force: true });
  const refsDir = join(e.repoDir, "refs");
  for (const ref of await walkFiles(refsDir)) {
    const sha = (await readFile(ref, "utf8").catch(() => "")).trim();
    if (sha === e.sha) await rm(ref, { force: true });
  }
  const stillLinked = new Set<string>();
  const snapshots = join(e.repoDir, "snapshots");
  for (const link of await walkFiles(snapshots)) {
    const st = await lstat(link).catch(() => undefined);
    if (st?.isSymbolicLink() === true) stillLinked.add(basename(resolve(dirname(link), await readlink(link))));
  }
  const blobs = join(e.repoDir, "blobs");
  for (const name of await readdir(blobs).catch(() => [] as string[])) {
    if (!stillLinked.has(name) && !name.endsWith(".incomplete")) await rm(join(blobs, name), { force: true });
  }
  const left = [...(await readdir(snapshots).catch(() => [] as string[])), ...(await readdir(blobs).catch(() => [] as string[]))];
  if (left.length === 0) await rm(e.repoDir, { recursive: true, force: true });
}

/** Every non-directory path under `dir`, recursively; empty when `dir` does not exist. */
export async function walkFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  let names: import("node:fs").Dirent[];
  try {
    names = await readdir(dir, { withFileTypes: true });
  } catch {
    return out;
  }
  for (const d of names) {
    const p = join(dir, d.name);
    if (d.isDirectory()) out.push(...(await walkFiles(p)));
    else out.push(p);
  }
  return out;
}
