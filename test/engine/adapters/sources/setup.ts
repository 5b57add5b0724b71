// Shared fixtures of the adapter-source suites: a log captured in memory, temp dirs, fast retry/timeout settings.
// Servers (fake Hub, fake Predibase, s3rver) live in test/helpers.

import { mkdtemp, readFile, readdir, readlink, lstat, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Logger, pino } from "pino";
import { type AdapterSources, type AdapterSourcesConfig, createAdapterSources } from "../../../../engine/src/adapters/sources/index.js";
import { LoraserveError } from "../../../../engine/src/errors.js";

export interface MemoryLog {
  logger: Logger<never>;
  lines: string[];
  text(): string;
}

export function memoryLog(): MemoryLog {
  const lines: string[] = [];
  const logger = pino({ level: "debug" }, { write: (s: string) => void lines.push(s) });
  return { logger, lines, text: () => lines.join("") };
}

export async function tempDir(prefix: string): Promise<string> {
  return mkdtemp(join(tmpdir(), `loraserve-${prefix}-`));
}

export const FAST = {
  timeouts: { requestMs: 1_000, stallMs: 1_000, accessMs: 4_000, totalMs: 8_000 },
  retry: { attempts: 3, baseDelayMs: 5, maxDelayMs: 20 },
};

export interface Harness {
  sources: AdapterSources;
  log: MemoryLog;
  dataDir: string;
  hubCache: string;
  cleanup(): Promise<void>;
}

/** Sources over fresh temp dirs with fast timeouts; `over` replaces any part of the config. */
export async function harness(over: Partial<AdapterSourcesConfig> = {}, dirs?: { dataDir?: string; hubCache?: string }): Promise<Harness> {
  const log = memoryLog();
  const dataDir = dirs?.dataDir ?? (await tempDir("data"));
  const hubCache = dirs?.hubCache ?? (await tempDir("hf"));
  const sources = await createAdapterSources({
    dataDir,
    logger: log.logger,
    ...FAST,
    ...over,
    hub: { cacheDir: hubCache, ...over.hub },
  });
  return {
    sources,
    log,
    dataDir,
    hubCache,
    cleanup: async () => {
      await sources.close();
      await rm(dataDir, { recursive: true, force: true });
      await rm(hubCache, { recursive: true, force: true });
    },
  };
}

/** Every path under `dir` (files, links, dirs), relative, sorted. */
export async function tree(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string, rel: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) {
      const r = rel === "" ? e.name : `${rel}/${e.name}`;
      out.push(r);
      if (e.isDirectory()) await walk(join(d, e.name), r);
    }
  };
  await walk(dir, "");
  return out.sort();
}

/** Whether `needle` occurs in any file name, link target or file content under `dir`. */
export async function occursUnder(dir: string, needle: string): Promise<string[]> {
  const hits: string[] = [];
  for (const rel of await tree(dir)) {
    const p = join(dir, rel);
    if (rel.includes(needle)) hits.push(rel);
    const st = await lstat(p);
    if (st.isSymbolicLink() && (await readlink(p)).includes(needle)) hits.push(`${rel} (link)`);
    if (st.isFile() && (await readFile(p)).includes(needle)) hits.push(`${rel} (content)`);
  }
  return hits;
}

/** The engine error `p` rejects with; fails the test when it resolves or rejects with anything else. */
export async function errorOf(p: Promise<unknown>): Promise<LoraserveError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof LoraserveError) return err;
    throw err;
  }
  throw new Error("expected a failure");
}
