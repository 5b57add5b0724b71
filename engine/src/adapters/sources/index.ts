// Entry point of adapter sources: the config the server passes, the factory, and the facade the registry calls.
// Parsing adapter files, residency states and HTTP mapping live elsewhere (formats/, the registry, server/).

import { homedir } from "node:os";
import { join, resolve } from "node:path";
import { ValidationError } from "../../errors.js";
import { AdapterDiskCache } from "./disk-cache.js";
import { HubSource } from "./hub.js";
import { LocalSource } from "./local.js";
import { PredibaseSource } from "./pbase.js";
import { S3Fetcher, type S3Options, S3Source, makeS3Client } from "./s3.js";
import {
  type AdapterSource,
  type FetchedAdapter,
  type ProgressOptions,
  type RetryPolicy,
  SOURCE_NAMES,
  type SourceContext,
  type SourceLogger,
  type SourceName,
  type SourceTimeouts,
} from "./types.js";

export type { AdapterSource, FetchedAdapter, FetchTimings, ProgressOptions, RetryPolicy, SourceLogger, SourceName, SourceTimeouts } from "./types.js";
export { SOURCE_NAMES } from "./types.js";
export { pickToken, resolveSource, globalTokenFromEnv, type TokenInputs } from "./tokens.js";
export { AdapterDiskCache, type CacheEntry } from "./disk-cache.js";
export { parseHubId, hubRepoFolder } from "./hub.js";
export { parseS3Url } from "./s3.js";
export { parsePbaseId } from "./pbase.js";

export interface AdapterSourcesConfig {
  /** --data-dir: the default local root, and the home of the disk cache unless `cacheDir` says otherwise. */
  dataDir: string;
  /** --adapter-local-roots; default [dataDir]. */
  localRoots?: string[];
  /** Index + s3/pbase copies; default `<dataDir>/adapter-cache`. Hub files go to `hub.cacheDir`. */
  cacheDir?: string;
  /** Disk cache budget in bytes (LRU beyond it); default 20 GiB. */
  cacheBudgetBytes?: number;
  hub?: {
    /** HF_ENDPOINT; default https://huggingface.co. */
    endpoint?: string;
    /** The shared Hub cache; default HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub. */
    cacheDir?: string;
  };
  predibase?: {
    /** PREDIBASE_GATEWAY_ENDPOINT; default https://api.app.predibase.com. */
    gatewayEndpoint?: string;
    /** PREDIBASE_MODEL_BUCKET. */
    modelBucket?: string;
  };
  /** AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / S3_ENDPOINT_URL, AWS_REGION; credentials from the SDK default chain. */
  s3?: S3Options;
  timeouts?: Partial<SourceTimeouts>;
  retry?: Partial<RetryPolicy>;
  progress?: Partial<ProgressOptions>;
  /** Reuse of a successful access check by identical checks; default 0 (never: every request asks upstream). */
  accessCheckTtlMs?: number;
  /** Reuse by fetch() of the sha/path an access check with the same (id, token) resolved; default 10 s. */
  resolutionReuseMs?: number;
  /** pino or anything with the same debug/info/warn/error(obj, msg). Tokens are never passed to it. */
  logger: SourceLogger;
}

export const DEFAULT_TIMEOUTS: SourceTimeouts = { requestMs: 10_000, stallMs: 30_000, accessMs: 30_000, totalMs: 30 * 60_000 };
export const DEFAULT_RETRY: RetryPolicy = { attempts: 4, baseDelayMs: 250, maxDelayMs: 8_000 };
export const DEFAULT_PROGRESS: ProgressOptions = { intervalMs: 5_000, minBytes: 32 * 1024 * 1024 };
export const DEFAULT_CACHE_BUDGET_BYTES = 20 * 1024 ** 3;

/** The Hub cache directory huggingface_hub would use for `env`. */
export function defaultHubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const home = env.HF_HOME ?? join(env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "huggingface");
  return env.HF_HUB_CACHE ?? env.HUGGINGFACE_HUB_CACHE ?? join(home, "hub");
}

/** Fills the env-derived parts of the config (endpoints, Hub cache, buckets, S3 endpoint/region, cache budget). */
export function adapterSourcesConfigFromEnv(
  base: Pick<AdapterSourcesConfig, "dataDir" | "logger"> & Partial<AdapterSourcesConfig>,
  env: NodeJS.ProcessEnv = process.env,
): AdapterSourcesConfig {
  const get = (name: string): string | undefined => (env[name] === "" ? undefined : env[name]);
  const budget = get("ADAPTER_DISK_CACHE_BYTES");
  return {
    ...base,
    cacheBudgetBytes: base.cacheBudgetBytes ?? (budget === undefined ? undefined : parseBytes(budget, "ADAPTER_DISK_CACHE_BYTES")),
    hub: { endpoint: get("HF_ENDPOINT"), cacheDir: defaultHubCacheDir(env), ...base.hub },
    predibase: { gatewayEndpoint: get("PREDIBASE_GATEWAY_ENDPOINT"), modelBucket: get("PREDIBASE_MODEL_BUCKET"), ...base.predibase },
    s3: {
      endpoint: get("AWS_ENDPOINT_URL_S3") ?? get("AWS_ENDPOINT_URL") ?? get("S3_ENDPOINT_URL"),
      region: get("AWS_REGION") ?? get("AWS_DEFAULT_REGION"),
      ...base.s3,
    },
  };
}

function parseBytes(v: string, name: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name}="${v}" is not a positive byte count (e.g. 21474836480 for 20 GiB)`);
  return n;
}

/** All four sources over one disk cache; what the registry holds. */
export class AdapterSources {
  constructor(
    private readonly sources: Readonly<Record<SourceName, AdapterSource>>,
    readonly cache: AdapterDiskCache,
  ) {}

  get(name: SourceName): AdapterSource {
    const s = this.sources[name];
    if (s === undefined) throw new ValidationError(`adapter_source "${String(name)}" is not one of ${SOURCE_NAMES.join(", ")}`, "adapter_source");
    return s;
  }

  /** SPEC §3 access check; run it for every request, concurrently with validation and tokenization. */
  checkAccess(source: SourceName, id: string, token: string | undefined, signal?: AbortSignal): Promise<void> {
    return this.get(source).checkAccess(id, token, signal);
  }

  fetch(source: SourceName, id: string, token: string | undefined, signal?: AbortSignal): Promise<FetchedAdapter> {
    return this.get(source).fetch(id, token, signal);
  }

  /**
   * A base model (SPEC §2): a Hub repository into the Hub cache, or every file under an s3:// prefix; the returned
   * dir holds config.json, the tokenizer and the safetensors weights. (A local model directory needs no source.)
   */
  fetchModel(source: "hub" | "s3", id: string, token: string | undefined): Promise<FetchedAdapter> {
    return source === "hub" ? (this.sources.hub as HubSource).fetchModel(id, token) : this.sources.s3.fetch(id, token);
  }

  /** Writes the cache index out; call before exit. */
  close(): Promise<void> {
    return this.cache.flush();
  }
}

export async function createAdapterSources(config: AdapterSourcesConfig): Promise<AdapterSources> {
  const log = config.logger;
  const ctx: SourceContext = {
    policy: { ...DEFAULT_RETRY, ...config.retry },
    timeouts: { ...DEFAULT_TIMEOUTS, ...config.timeouts },
    progress: { ...DEFAULT_PROGRESS, ...config.progress },
    log,
    accessTtlMs: config.accessCheckTtlMs ?? 0,
    reuseMs: config.resolutionReuseMs ?? 10_000,
  };
  if (!(ctx.policy.attempts >= 1)) throw new Error(`retry.attempts must be at least 1, got ${ctx.policy.attempts}`);
  const dataDir = resolve(config.dataDir);
  const cache = await AdapterDiskCache.open(config.cacheDir ?? join(dataDir, "adapter-cache"), config.cacheBudgetBytes ?? DEFAULT_CACHE_BUDGET_BYTES, log);
  const fetcher = new S3Fetcher(makeS3Client(config.s3 ?? {}, ctx.timeouts), cache, ctx);
  const hub = new HubSource(
    { endpoint: config.hub?.endpoint ?? "https://huggingface.co", cacheDir: resolve(config.hub?.cacheDir ?? defaultHubCacheDir()) },
    cache,
    ctx,
  );
  const pbase = new PredibaseSource(
    { gatewayEndpoint: config.predibase?.gatewayEndpoint ?? "https://api.app.predibase.com", modelBucket: config.predibase?.modelBucket },
    fetcher,
    ctx,
  );
  const local = new LocalSource(config.localRoots ?? [dataDir], log);
  return new AdapterSources({ hub, pbase, local, s3: new S3Source(fetcher) }, cache);
}

/** For benchmarks and tools: one fetch by source, timings included; releases its pin before returning. */
export async function fetchAdapter(sources: AdapterSources, source: SourceName, id: string, token?: string): Promise<FetchedAdapter> {
  const adapter = await sources.fetch(source, id, token);
  adapter.release();
  return adapter;
}
