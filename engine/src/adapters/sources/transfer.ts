// Retries with backoff, deadlines, and streaming a download into a temp file with size/hash checks and progress.
// Knows no source: callers classify upstream answers and map final failures to their own messages.

import { createHash, randomBytes, type Hash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { rename, rm } from "node:fs/promises";
import { Transform, type Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { CancelledError, LoraserveError, UpstreamError } from "../../errors.js";
import type { ProgressOptions, RetryPolicy, SourceLogger } from "./types.js";

/** An upstream failure worth another try: 5xx, 429, a reset or cut connection, a truncated or corrupt body. */
export class TransientError extends Error {
  constructor(
    message: string,
    /** The upstream HTTP status, when the failure was an answer. */
    readonly status?: number,
    /** True when the attempt ran out of time. */
    readonly timeout = false,
  ) {
    super(message);
    this.name = "TransientError";
  }
}

const TRANSIENT_CODES = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EAI_AGAIN",
  "ENETUNREACH",
  "EHOSTUNREACH",
  "UND_ERR_SOCKET",
  "UND_ERR_CLOSED",
  "UND_ERR_CONNECT_TIMEOUT",
  "UND_ERR_HEADERS_TIMEOUT",
  "UND_ERR_BODY_TIMEOUT",
]);

export function isRetryableStatus(status: number): boolean {
  return status >= 500 || status === 429 || status === 408;
}

/** The transient network error code of `err` or of its `cause` chain (undici wraps socket errors in "fetch failed"). */
export function networkCode(err: unknown): string | undefined {
  return codeIn(err, (code) => TRANSIENT_CODES.has(code));
}

/** Network failures no retry mends: a host name that does not resolve, a TLS peer or certificate refused. */
const FATAL_CODE = /^(ENOTFOUND|EPROTO|ERR_TLS_|ERR_SSL_|CERT_|UNABLE_TO_|DEPTH_ZERO_|SELF_SIGNED_)/;

/** What to check when a fatal network code stops a transfer. */
function fatalHint(code: string): string {
  return code === "ENOTFOUND"
    ? "the host name does not resolve from this server: check the source's endpoint setting and the server's network and DNS"
    : "the TLS connection was refused: check the endpoint's certificate (NODE_EXTRA_CA_CERTS for a private CA)";
}

/** The first `code` along an error's cause chain that passes `test`. */
function codeIn(err: unknown, test: (code: string) => boolean): string | undefined {
  let e: unknown = err;
  for (let depth = 0; depth < 4 && e !== null && typeof e === "object"; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && test(code)) return code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const code = codeIn(err, (c) => TRANSIENT_CODES.has(c) || FATAL_CODE.test(c));
    const cause = (err as { cause?: unknown }).cause;
    const causeMsg = cause instanceof Error && cause.message !== err.message ? ` (${cause.message})` : "";
    return code !== undefined && !err.message.includes(code) ? `${err.message}${causeMsg} [${code}]` : `${err.message}${causeMsg}`;
  }
  return String(err);
}

/** The signals of one logical operation: the caller's (client went away) and the overall deadline. */
export class Deadline {
  readonly signal: AbortSignal;
  private readonly deadline: AbortSignal;

  constructor(
    readonly totalMs: number,
    private readonly caller?: AbortSignal,
  ) {
    this.deadline = AbortSignal.timeout(totalMs);
    this.signal = caller === undefined ? this.deadline : AbortSignal.any([caller, this.deadline]);
  }

  /** The error to throw once `signal` fired: the caller's cancellation, or a 504 for the deadline. */
  abortError(what: string): LoraserveError {
    if (this.caller?.aborted === true) return new CancelledError(`${what}: cancelled by the caller`);
    return new UpstreamError(`${what}: timed out after ${this.totalMs} ms (retries included); try again later`, true);
  }
}

export interface RetryContext {
  policy: RetryPolicy;
  deadline: Deadline;
  log: SourceLogger;
  /** Per-attempt time limit; undefined leaves only the deadline (downloads use a stall timer instead). */
  attemptMs?: number;
  /** Names the operation in logs and errors, e.g. `hub adapter "org/name": listing files`. Never a token. */
  what: string;
  /** Turns non-transient failures into the source's errors (4xx → access/not-found); transient ones pass through. */
  classify?: (err: unknown) => unknown;
}

/**
 * Runs `attempt` until it succeeds, fails for good, or the deadline passes.
 * Transient failures (TransientError, network codes, attempt timeouts) are retried with full-jitter backoff;
 * network failures no retry mends (a host name that does not resolve, TLS refused) → UpstreamError at once;
 * anything else is rethrown at once. Exhausted retries → UpstreamError (502, or 504 when the last try timed out).
 */
export async function withRetries<T>(ctx: RetryContext, attempt: (signal: AbortSignal, n: number) => Promise<T>): Promise<T> {
  const { policy, deadline, log, what } = ctx;
  let last: unknown;
  for (let n = 0; n < policy.attempts; n++) {
    if (deadline.signal.aborted) throw deadline.abortError(what);
    const attemptTimer = ctx.attemptMs === undefined ? undefined : AbortSignal.timeout(ctx.attemptMs);
    const signal = attemptTimer === undefined ? deadline.signal : AbortSignal.any([deadline.signal, attemptTimer]);
    try {
      return await attempt(signal, n);
    } catch (raw) {
      if (deadline.signal.aborted) throw deadline.abortError(what);
      const err = ctx.classify === undefined ? raw : ctx.classify(raw);
      if (attemptTimer?.aborted === true) {
        last = new TransientError(`no answer within ${ctx.attemptMs} ms`, undefined, true);
      } else if (err instanceof TransientError) {
        last = err;
      } else if (networkCode(err) !== undefined) {
        last = new TransientError(describe(err));
      } else {
        const fatal = codeIn(err, (c) => FATAL_CODE.test(c));
        if (fatal !== undefined) throw new UpstreamError(`${what}: ${describe(err)}; ${fatalHint(fatal)}`);
        throw err;
      }
    }
    if (n + 1 < policy.attempts) {
      const delayMs = Math.round(Math.random() * Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** n));
      log.warn({ what, attempt: n + 1, of: policy.attempts, delayMs, reason: (last as Error).message }, "adapter source: transient failure, retrying");
      try {
        await sleep(delayMs, undefined, { signal: deadline.signal });
      } catch {
        throw deadline.abortError(what);
      }
    }
  }
  const t = last as TransientError;
  const timeout = t.timeout || t.status === 504;
  throw new UpstreamError(`${what}: failed after ${policy.attempts} tries, last: ${t.message}; the source may be down, try again later`, timeout);
}

export type ContentHash = { algo: "sha256"; hex: string } | { algo: "git-sha1"; hex: string };

export interface WriteOptions {
  /** Bytes the source promised (listing, Content-Length); a different count is a truncated (transient) download. */
  expectedBytes?: number;
  /** Checked after the last byte; a mismatch is transient (a corrupt transfer). */
  hash?: ContentHash;
  stallMs: number;
  progress: ProgressOptions;
  log: SourceLogger;
  /** Names the file in progress logs. */
  what: string;
  /** Called when the stream stalls, so the caller can abort its connection too. */
  onStall?: () => void;
}

function startHash(h: ContentHash, size: number | undefined): Hash {
  if (h.algo === "sha256") return createHash("sha256");
  if (size === undefined) throw new Error("git blob hash needs the size up front");
  return createHash("sha1").update(`blob ${size}\0`);
}

/**
 * Streams `body` into `dest` through a temp file next to it, then renames: `dest` either is complete
 * and verified or does not exist. Returns the byte count.
 */
export async function writeStreamAtomically(body: Readable, dest: string, opts: WriteOptions): Promise<number> {
  const tmp = `${dest}.loraserve-${randomBytes(6).toString("hex")}.incomplete`;
  const hash = opts.hash === undefined ? undefined : startHash(opts.hash, opts.expectedBytes);
  const report = opts.expectedBytes === undefined || opts.expectedBytes >= opts.progress.minBytes;
  const started = Date.now();
  let bytes = 0;
  let lastReport = started;
  let stall: NodeJS.Timeout | undefined;
  const meter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      bytes += chunk.length;
      hash?.update(chunk);
      stall?.refresh();
      const now = Date.now();
      if (report && now - lastReport >= opts.progress.intervalMs) {
        lastReport = now;
        const mbPerS = bytes / 1e6 / Math.max((now - started) / 1000, 1e-3);
        opts.log.info(
          { what: opts.what, bytes, totalBytes: opts.expectedBytes, percent: opts.expectedBytes ? Math.floor((100 * bytes) / opts.expectedBytes) : undefined, mbPerS: Number(mbPerS.toFixed(1)) },
          "adapter download progress",
        );
      }
      done(null, chunk);
    },
  });
  try {
    stall = setTimeout(() => {
      opts.onStall?.();
      body.destroy(new TransientError(`no data for ${opts.stallMs} ms`, undefined, true));
    }, opts.stallMs);
    // `flush`: fsync before close, so a renamed blob is never an empty file after a crash.
    await pipeline(body, meter, createWriteStream(tmp, { flags: "wx", flush: true }));
    clearTimeout(stall);
    if (opts.expectedBytes !== undefined && bytes !== opts.expectedBytes) {
      throw new TransientError(`truncated download: got ${bytes} of ${opts.expectedBytes} bytes`);
    }
    if (hash !== undefined && opts.hash !== undefined) {
      const got = hash.digest("hex");
      if (got !== opts.hash.hex) throw new TransientError(`corrupt download: ${opts.hash.algo} ${got}, expected ${opts.hash.hex}`);
    }
    await rename(tmp, dest);
    if (report && opts.expectedBytes !== undefined && opts.expectedBytes >= opts.progress.minBytes) {
      opts.log.info({ what: opts.what, bytes, ms: Date.now() - started }, "adapter download done");
    }
    return bytes;
  } catch (err) {
    clearTimeout(stall);
    await rm(tmp, { force: true });
    if (err instanceof TransientError) throw err;
    throw networkCode(err) !== undefined || isStreamCut(err) ? new TransientError(`download cut: ${describe(err)}`) : err;
  }
}

/** Body stream errors that mean the connection went away mid-file. */
function isStreamCut(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  return /terminated|aborted|premature close|socket hang up|other side closed/i.test(err.message) || err.name === "AbortError";
}

/** Runs `fn` over `items` with at most `limit` in flight; rejects with the first failure after the rest settle. */
export async function forEachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { err: unknown } | undefined;
  const worker = async (): Promise<void> => {
    while (failure === undefined && next < items.length) {
      const item = items[next++];
      try {
        await fn(item);
      } catch (err) {
        failure ??= { err };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure !== undefined) throw failure.err;
}

/** Waits for `p`, but gives up (leaving `p` running for others) when `signal` fires. */
export function untilAborted<T>(p: Promise<T>, signal: AbortSignal | undefined, what: string): Promise<T> {
  if (signal === undefined) return p;
  if (signal.aborted) return Promise.reject(new CancelledError(`${what}: cancelled by the caller`));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(new CancelledError(`${what}: cancelled by the caller`));
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}
