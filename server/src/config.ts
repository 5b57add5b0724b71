// The command line and environment of `loraserve`: every flag of SPEC §1 with its environment variable
// (upper snake case), default and help text, parsed into a typed ServerConfig. Nothing here starts anything.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { Command, InvalidArgumentError, Option } from "commander";

/** The checkout (or installed package) root: the nearest directory above this file with our package.json. */
export const REPO_ROOT = ((): string => {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!fs.existsSync(path.join(dir, "package.json")) || !fs.readFileSync(path.join(dir, "package.json"), "utf8").includes('"name": "loraserve"')) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error("cannot find loraserve's package.json above " + fileURLToPath(import.meta.url));
    dir = up;
  }
  return dir;
})();

export const VERSION: string = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, "package.json"), "utf8")).version;
export const DEMO_MODEL_DIR = path.join(REPO_ROOT, "models", "demo");

export type AdapterSourceName = "hub" | "pbase" | "local" | "s3";

export interface ServerConfig {
  modelId: string;
  source: "hub" | "s3" | "local" | undefined;
  revision?: string;
  /** Names `model` may use for the base model besides "" and --model-id; the first is its id in /v1/models. */
  servedModelNames: string[];
  adapterId?: string;
  adapterSource: AdapterSourceName;
  preloadedAdapterIds: string[];
  maxActiveAdapters: number;
  adapterMemoryFraction: number;
  adapterMemoryBytes?: number;
  adapterCycleTimeS: number;
  maxConcurrentRequests: number;
  maxInputLength?: number;
  maxTotalTokens?: number;
  maxBatchPrefillTokens: number;
  maxBatchTotalTokens?: number;
  maxWaitingTokens: number;
  waitingServedRatio: number;
  maxBestOf: number;
  maxStopSequences: number;
  maxMergeIds: number;
  speculativeTokens: number;
  medusaTreeSize: number;
  fixedSpeculation: boolean;
  prefixCaching: boolean;
  mmapWeights: boolean;
  dtype?: "float32" | "bfloat16" | "float16";
  device: "cpu" | "cuda" | undefined;
  hostname: string;
  port: number;
  jsonOutput: boolean;
  corsAllowOrigin: string[];
  apiKeys: string[];
  dataDir: string;
  adapterLocalRoots: string[];
  kvCacheBytes?: number;
  kvCacheFraction: number;
  threads: number;
  payloadLimit: number;
  rateLimitRpm: number;
  loraMaxRank: number;
  shutdownTimeoutS: number;
}

const int = (name: string, min = 0) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer ≥ ${min}, got "${v}"`);
  return n;
};
const num = (name: string, min: number, max = Infinity) => (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be a number in [${min}, ${max}], got "${v}"`);
  return n;
};
const onOff = (name: string) => (v: string) => {
  if (["on", "true", "1"].includes(v)) return true;
  if (["off", "false", "0"].includes(v)) return false;
  throw new InvalidArgumentError(`${name} must be on or off, got "${v}"`);
};
const list = (v: string) => v.split(",").map((s) => s.trim()).filter(Boolean);
const choice = <T extends string>(name: string, options: readonly T[]) => (v: string) => {
  if (!(options as readonly string[]).includes(v)) throw new InvalidArgumentError(`${name} must be one of ${options.join(", ")}, got "${v}"`);
  return v as T;
};

/** `--max-total-tokens` ↔ MAX_TOTAL_TOKENS. */
function opt(flags: string, description: string): Option {
  const long = flags.split(/[ ,]/).find((f) => f.startsWith("--"))!;
  return new Option(flags, description).env(long.slice(2).replace(/-/g, "_").toUpperCase());
}

export function buildCommand(): Command {
  const cmd = new Command("loraserve")
    .description("Serve one base LLM and any number of LoRA adapters, batched together, over an OpenAI-compatible and a LoRAX-compatible HTTP API.")
    .version(VERSION)
    .showHelpAfterError()
    .addOption(opt("--model-id <id>", "base model: a local directory, a Hugging Face Hub id or s3://bucket/prefix (default: the demo model in models/demo)"))
    .addOption(opt("--source <source>", "where --model-id comes from (default: a path → local, s3:// → s3, else hub)").argParser(choice("--source", ["hub", "s3", "local"] as const)))
    .addOption(opt("--revision <rev>", "Hub revision of the base model"))
    .addOption(opt("--served-model-name <names>", "comma-separated names clients may give as `model` for the base model; the first is its id in /v1/models (default: --model-id)").argParser(list))
    .addOption(opt("--adapter-id <id>", "default adapter for requests that name none (a Medusa adapter turns on speculative decoding)"))
    .addOption(opt("--adapter-source <source>", "default source of request adapters").argParser(choice("--adapter-source", ["hub", "pbase", "local", "s3"] as const)).default("hub"))
    .addOption(opt("--preloaded-adapter-ids <ids>", "comma-separated adapters loaded at start and never evicted").argParser(list).default([]))
    .addOption(opt("--max-active-adapters <n>", "adapters in the engine's pool at once").argParser(int("--max-active-adapters", 1)).default(32))
    .addOption(opt("--adapter-memory-fraction <f>", "share of the memory budget for active adapters").argParser(num("--adapter-memory-fraction", 0, 1)).default(0.1))
    .addOption(opt("--adapter-memory-bytes <bytes>", "absolute byte budget for active adapters (overrides the fraction)").argParser(int("--adapter-memory-bytes", 1)))
    .addOption(opt("--adapter-cycle-time-s <s>", "how often the active adapter set rotates when more are wanted than fit").argParser(num("--adapter-cycle-time-s", 0)).default(2))
    .addOption(opt("--max-concurrent-requests <n>", "requests in flight before new ones get 429").argParser(int("--max-concurrent-requests", 1)).default(128))
    .addOption(opt("--max-input-length <n>", "longest prompt in tokens (default: max-total-tokens - 1)").argParser(int("--max-input-length", 1)))
    .addOption(opt("--max-total-tokens <n>", "prompt + max_new_tokens limit (default: the model's context, capped by the KV pool)").argParser(int("--max-total-tokens", 2)))
    .addOption(opt("--max-batch-prefill-tokens <n>", "prefill tokens per step (the prefill chunk size)").argParser(int("--max-batch-prefill-tokens", 1)).default(2048))
    .addOption(opt("--max-batch-total-tokens <n>", "KV tokens all running requests may hold, a shared prefix counted once (default: the KV pool)").argParser(int("--max-batch-total-tokens", 1)))
    .addOption(opt("--max-waiting-tokens <n>", "decode steps a waiting request may be held back before it joins the batch").argParser(int("--max-waiting-tokens", 0)).default(20))
    .addOption(opt("--waiting-served-ratio <r>", "new requests join a running batch once waiting ≥ running × ratio (0: join at the next step; chunked prefill keeps that cheap)").argParser(num("--waiting-served-ratio", 0)).default(0))
    .addOption(opt("--max-best-of <n>", "largest best_of / n").argParser(int("--max-best-of", 1)).default(4))
    .addOption(opt("--max-stop-sequences <n>", "most stop sequences per request").argParser(int("--max-stop-sequences", 0)).default(4))
    .addOption(opt("--max-merge-ids <n>", "most adapters in one merged_adapters request").argParser(int("--max-merge-ids", 1)).default(8))
    .addOption(opt("--speculative-tokens <n>", "prompt-lookup speculation depth when no Medusa adapter is set (0 = off)").argParser(int("--speculative-tokens", 0)).default(0))
    .addOption(opt("--medusa-tree-size <n>", "most nodes of a Medusa candidate tree; each step proposes as many as measured step cost and acceptance say pay off").argParser(int("--medusa-tree-size", 1)).default(8))
    .addOption(opt("--fixed-speculation", "propose every draft token each step (all --medusa-tree-size nodes, or --speculative-tokens) instead of as many as pay off").default(false))
    .addOption(
      opt("--prefix-caching <on|off>", "keep the KV of full 16-token blocks by prefix (and adapter), and start a request past the longest prefix held: a shared system prompt or few-shot examples are computed once")
        .argParser(onOff("--prefix-caching"))
        .default(true, "on"),
    )
    .addOption(opt("--mmap-weights", "leave the weights in read-only mappings of their files (page cache shared between processes, faster start) instead of reading them into huge-page memory, ~10% faster decode on the CPU").default(false))
    .addOption(opt("--dtype <dtype>", "weights in memory (default: as stored)").argParser(choice("--dtype", ["float32", "bfloat16", "float16"] as const)))
    .addOption(opt("--device <device>", "compute device (default: cuda when a GPU is usable, else cpu)").argParser(choice("--device", ["cpu", "cuda"] as const)))
    .addOption(opt("--hostname <host>", "address to listen on").default("127.0.0.1"))
    .addOption(opt("--port <port>", "port to listen on").argParser(int("--port", 0)).default(8080))
    .addOption(opt("--json-output", "structured JSON logs (one object per line)").default(false))
    .addOption(opt("--cors-allow-origin <origins>", "comma-separated origins allowed by CORS (none by default)").argParser(list).default([]))
    .addOption(opt("--api-keys <keys>", "comma-separated bearer keys the server requires (none by default)").argParser(list).default([]))
    .addOption(opt("--data-dir <dir>", "data directory (adapter cache, Hub cache fallback)").default("./data"))
    .addOption(opt("--adapter-local-roots <dirs>", "comma-separated directories local adapters may be read from (default: the data directory)").argParser(list))
    .addOption(opt("--kv-cache-bytes <bytes>", "KV cache budget in bytes (overrides the fraction)").argParser(int("--kv-cache-bytes", 1)))
    .addOption(opt("--kv-cache-fraction <f>", "share of the machine's free memory for the KV cache").argParser(num("--kv-cache-fraction", 0.001, 0.95)).default(0.2))
    .addOption(opt("--threads <n>", "compute threads (0: every core)").argParser(int("--threads", 0)).default(0))
    .addOption(opt("--payload-limit <bytes>", "largest request body").argParser(int("--payload-limit", 1)).default(2_000_000))
    .addOption(opt("--rate-limit-rpm <n>", "requests per minute per caller (API key, else address); 0 = off").argParser(int("--rate-limit-rpm", 0)).default(0))
    .addOption(opt("--lora-max-rank <n>", "largest LoRA rank accepted").argParser(int("--lora-max-rank", 1)).default(128))
    .addOption(opt("--shutdown-timeout-s <s>", "on SIGTERM, how long in-flight requests may finish").argParser(num("--shutdown-timeout-s", 0)).default(30));
  return cmd;
}

/** Parses flags (argv without node and script) and the environment; throws CommanderError on bad input. */
export function parseConfig(argv: string[]): ServerConfig {
  const cmd = buildCommand();
  cmd.exitOverride();
  cmd.parse(argv, { from: "user" });
  const o = cmd.opts();
  const dataDir = path.resolve(o.dataDir);
  return {
    modelId: o.modelId ?? DEMO_MODEL_DIR,
    source: o.source,
    revision: o.revision,
    servedModelNames: o.servedModelName ?? [],
    adapterId: o.adapterId,
    adapterSource: o.adapterSource,
    preloadedAdapterIds: o.preloadedAdapterIds,
    maxActiveAdapters: o.maxActiveAdapters,
    adapterMemoryFraction: o.adapterMemoryFraction,
    adapterMemoryBytes: o.adapterMemoryBytes,
    adapterCycleTimeS: o.adapterCycleTimeS,
    maxConcurrentRequests: o.maxConcurrentRequests,
    maxInputLength: o.maxInputLength,
    maxTotalTokens: o.maxTotalTokens,
    maxBatchPrefillTokens: o.maxBatchPrefillTokens,
    maxBatchTotalTokens: o.maxBatchTotalTokens,
    maxWaitingTokens: o.maxWaitingTokens,
    waitingServedRatio: o.waitingServedRatio,
    maxBestOf: o.maxBestOf,
    maxStopSequences: o.maxStopSequences,
    maxMergeIds: o.maxMergeIds,
    speculativeTokens: o.speculativeTokens,
    medusaTreeSize: o.medusaTreeSize,
    fixedSpeculation: o.fixedSpeculation,
    prefixCaching: o.prefixCaching,
    mmapWeights: o.mmapWeights,
    dtype: o.dtype,
    device: o.device,
    hostname: o.hostname,
    port: o.port,
    jsonOutput: o.jsonOutput === true || o.jsonOutput === "true" || o.jsonOutput === "1",
    corsAllowOrigin: o.corsAllowOrigin,
    apiKeys: o.apiKeys,
    dataDir,
    adapterLocalRoots: (o.adapterLocalRoots ?? [dataDir]).map((d: string) => path.resolve(d)),
    kvCacheBytes: o.kvCacheBytes,
    kvCacheFraction: o.kvCacheFraction,
    threads: o.threads,
    payloadLimit: o.payloadLimit,
    rateLimitRpm: o.rateLimitRpm,
    loraMaxRank: o.loraMaxRank,
    shutdownTimeoutS: o.shutdownTimeoutS,
  };
}

/** Memory this process may still use: free memory, capped by a container's limit (cgroup) when there is one. */
export function availableMemory(): number {
  const limit = process.constrainedMemory?.() ?? 0;
  const free = os.freemem();
  return limit > 0 ? Math.min(free, Math.max(0, limit - process.memoryUsage().rss)) : free;
}

/** The KV budget: explicit bytes, else a fraction of the memory available now. */
export function kvBudgetBytes(c: ServerConfig): number {
  return c.kvCacheBytes ?? Math.floor(availableMemory() * c.kvCacheFraction);
}
