// The one interface every adapter source implements, and the shapes it hands to the registry.
// No I/O here; the sources, the disk cache and the retry policy live in their own files.

export const SOURCE_NAMES = ["hub", "pbase", "local", "s3"] as const;
export type SourceName = (typeof SOURCE_NAMES)[number];

/** What a fetch cost, in milliseconds; the benchmark splits cold loads with it. */
export interface FetchTimings {
  /** Access check / revision or path resolution / listing: metadata round trips. */
  resolveMs: number;
  /** Moving bytes into the cache (0 on a cache hit and for local adapters). */
  downloadMs: number;
  totalMs: number;
}

export interface FetchedAdapter {
  source: SourceName;
  id: string;
  /** Local directory holding adapter_config.json, weights, tokenizer files (Hub: the snapshot directory). */
  dir: string;
  /** Stable key of the cached copy, e.g. `hub:org/name@<sha>`, `s3:bucket/prefix`, `local:/real/path`. */
  cacheKey: string;
  /** Bytes of the adapter's files on disk. */
  bytes: number;
  /** True when no byte was downloaded for this call (already cached, or joined nothing). Local: false. */
  fromCache: boolean;
  timings: FetchTimings;
  /**
   * The cached copy is pinned against disk-cache eviction until this is called (idempotent).
   * Call it once the files have been read (or when the adapter is dropped, to keep it pinned meanwhile).
   */
  release(): void;
}

export interface AdapterSource {
  readonly name: SourceName;
  /**
   * Fails with AdapterAccessError (401/403), NotFoundError, UpstreamError when `token` cannot read `id` now.
   * Hub and pbase ask upstream on every call; local checks the path; s3 has nothing to check.
   */
  checkAccess(id: string, token: string | undefined, signal?: AbortSignal): Promise<void>;
  /** Brings the adapter's files onto local disk (or finds them there) and pins them. */
  fetch(id: string, token: string | undefined, signal?: AbortSignal): Promise<FetchedAdapter>;
}

/** The subset of pino's Logger the sources use; a pino logger fits as is. */
export interface SourceLogger {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface RetryPolicy {
  /** Tries in all, the first included. */
  attempts: number;
  /** Backoff before retry n is uniform in [0, min(maxDelayMs, baseDelayMs · 2^n)] (full jitter). */
  baseDelayMs: number;
  maxDelayMs: number;
}

export interface SourceTimeouts {
  /** One metadata request (Hub API, Predibase API, S3 list), headers and body. */
  requestMs: number;
  /** A download that receives no byte for this long is cut and retried. */
  stallMs: number;
  /** Everything one access check (revision / version resolution) may take, retries included; past it → 504. */
  accessMs: number;
  /** Everything one download may take, retries included; past it → 504. */
  totalMs: number;
}

/** What every downloading source shares: policy, limits, logger, and how long resolutions may be reused. */
export interface SourceContext {
  policy: RetryPolicy;
  timeouts: SourceTimeouts;
  progress: ProgressOptions;
  log: SourceLogger;
  /** How long a successful access check may answer identical (id, token) checks; 0 = never (only in-flight sharing). */
  accessTtlMs: number;
  /** How long fetch() may reuse what an access check with the same (id, token) resolved (commit sha, bucket path). */
  reuseMs: number;
}

/** Reports progress of big downloads at most every `intervalMs`, for files of at least `minBytes`. */
export interface ProgressOptions {
  intervalMs: number;
  minBytes: number;
}
