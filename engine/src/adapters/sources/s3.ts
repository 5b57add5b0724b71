// The `s3` source (`s3://bucket/prefix`) and the bucket download that pbase reuses: list, get every object, cache.
// Credentials come from the AWS SDK's default chain; it never sees a request's api_token.

import { GetObjectCommand, ListObjectsV2Command, S3Client, type S3ClientConfig } from "@aws-sdk/client-s3";
import { mkdir, rename, rm } from "node:fs/promises";
import { createHash } from "node:crypto";
import { dirname, join, sep } from "node:path";
import type { Readable } from "node:stream";
import { AdapterAccessError, LoraserveError, NotFoundError, ValidationError } from "../../errors.js";
import { type AdapterDiskCache, type CacheEntry, lockKeyOf } from "./disk-cache.js";
import { Deadline, TransientError, forEachLimit, isRetryableStatus, withRetries, writeStreamAtomically } from "./transfer.js";
import type { AdapterSource, FetchedAdapter, ProgressOptions, RetryPolicy, SourceContext, SourceLogger, SourceTimeouts } from "./types.js";

export interface S3Options {
  /** `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` / `S3_ENDPOINT_URL` (MinIO, R2, s3rver); undefined = AWS. */
  endpoint?: string;
  /** `AWS_REGION` / `AWS_DEFAULT_REGION`; us-east-1 when unset. */
  region?: string;
  /** Path-style addressing; on by default whenever `endpoint` is set. */
  forcePathStyle?: boolean;
  /** Explicit keys; undefined uses the SDK's default chain (env, shared files, SSO, IMDS, ...). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
}

export interface S3Location {
  bucket: string;
  /** Without leading or trailing slash; the adapter is every object under `prefix/`. */
  prefix: string;
}

const BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

export function formatS3(loc: S3Location): string {
  return `s3://${loc.bucket}/${loc.prefix}`;
}

/** Parses `s3://bucket/prefix` (ValidationError naming the value otherwise). */
export function parseS3Url(url: string): S3Location {
  const m = /^s3:\/\/([^/]+)\/(.*)$/.exec(url);
  if (m === null) throw new ValidationError(`adapter id "${url}" is not an s3 location: write s3://bucket/prefix/of/adapter`, "adapter_id");
  return checkLocation(m[1], m[2], url);
}

export function checkLocation(bucket: string, rawPrefix: string, shown: string): S3Location {
  if (!BUCKET_RE.test(bucket)) {
    throw new ValidationError(`adapter id "${shown}": "${bucket}" is not a valid S3 bucket name (3-63 of a-z 0-9 . -)`, "adapter_id");
  }
  const prefix = rawPrefix.replace(/^\/+/, "").replace(/\/+$/, "");
  if (prefix === "") {
    throw new ValidationError(`adapter id "${shown}": name the adapter's folder inside the bucket, e.g. s3://${bucket}/adapters/my-adapter`, "adapter_id");
  }
  if (prefix.split("/").some((seg) => seg === ".." || seg === ".")) {
    throw new ValidationError(`adapter id "${shown}": "." and ".." are not allowed in an S3 prefix`, "adapter_id");
  }
  return { bucket, prefix };
}

export function makeS3Client(opts: S3Options, timeouts: SourceTimeouts): S3Client {
  const config: S3ClientConfig = {
    region: opts.region ?? "us-east-1",
    // One retry policy for all sources: ours (withRetries); the SDK tries once.
    maxAttempts: 1,
    requestHandler: { connectionTimeout: timeouts.requestMs, requestTimeout: timeouts.stallMs },
    // Third-party endpoints (MinIO, R2, s3rver) do not all speak the newer flexible checksums.
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  };
  if (opts.endpoint !== undefined) {
    config.endpoint = opts.endpoint;
    config.forcePathStyle = opts.forcePathStyle ?? true;
  } else if (opts.forcePathStyle !== undefined) {
    config.forcePathStyle = opts.forcePathStyle;
  }
  if (opts.credentials !== undefined) config.credentials = opts.credentials;
  return new S3Client(config);
}

interface S3Object {
  key: string;
  rel: string;
  size: number;
}

const ACCESS_CODES = new Set(["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AllAccessDisabled", "AccountProblem"]);
const RETRY_CODES = new Set(["InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "TimeoutError"]);

/** Downloads S3 prefixes into the disk cache; shared by the s3 and pbase sources. */
export class S3Fetcher {
  private readonly policy: RetryPolicy;
  private readonly timeouts: SourceTimeouts;
  private readonly progress: ProgressOptions;
  private readonly log: SourceLogger;

  constructor(
    private readonly client: S3Client,
    private readonly cache: AdapterDiskCache,
    ctx: SourceContext,
  ) {
    ({ policy: this.policy, timeouts: this.timeouts, progress: this.progress, log: this.log } = ctx);
  }

  static cacheKey(loc: S3Location): string {
    return `s3:${loc.bucket}/${loc.prefix}`;
  }

  /**
   * The cached copy of `loc`, downloading it first when needed (one download however many callers).
   * `who` names the request's adapter in results, logs and errors; `started`/`resolveMs` carry the caller's timings.
   */
  async fetch(
    loc: S3Location,
    who: { source: "s3" | "pbase"; id: string },
    signal: AbortSignal | undefined,
    started: number,
    resolveMs: number,
  ): Promise<FetchedAdapter> {
    const label = `${who.source} adapter "${who.id}"`;
    const key = S3Fetcher.cacheKey(loc);
    const got = await this.cache.obtain(key, () => this.download(loc, label), signal, `${label}: download`);
    return {
      source: who.source,
      id: who.id,
      dir: got.entry.dir,
      cacheKey: key,
      bytes: got.entry.bytes,
      fromCache: got.fromCache,
      timings: { resolveMs, downloadMs: got.downloadMs, totalMs: Date.now() - started },
      release: got.release,
    };
  }

  private download(loc: S3Location, label: string): Promise<CacheEntry> {
    const key = S3Fetcher.cacheKey(loc);
    const dir = join(this.cache.root, "s3", loc.bucket, safeDirName(loc.prefix));
    return this.cache.withLock(lockKeyOf({ kind: "dir", dir }), async () => {
      const existing = this.cache.get(key);
      if (existing !== undefined) return existing;
      const deadline = new Deadline(this.timeouts.totalMs);
      const objects = await this.list(loc, label, deadline);
      const total = objects.reduce((s, o) => s + o.size, 0);
      await this.cache.enforceBudget(total);
      const tmp = await this.cache.makeTempDir();
      try {
        this.log.info({ adapter: label, location: formatS3(loc), files: objects.length, bytes: total }, "adapter download started");
        await forEachLimit(objects, 4, (o) => this.getObject(loc, o, join(tmp, o.rel), label, deadline));
        await rm(dir, { recursive: true, force: true });
        await mkdir(dirname(dir), { recursive: true });
        await rename(tmp, dir);
      } catch (err) {
        await rm(tmp, { recursive: true, force: true });
        throw err;
      }
      this.log.info({ adapter: label, location: formatS3(loc), bytes: total }, "adapter downloaded");
      return this.cache.commit({ kind: "dir", key, dir, files: objects.map((o) => o.rel), bytes: total });
    });
  }

  private async list(loc: S3Location, label: string, deadline: Deadline): Promise<S3Object[]> {
    const listPrefix = `${loc.prefix}/`;
    const out: S3Object[] = [];
    let token: string | undefined;
    do {
      const page = await withRetries(
        { policy: this.policy, deadline, log: this.log, attemptMs: this.timeouts.requestMs, what: `${label}: listing ${formatS3(loc)}/`, classify: (e) => this.classify(e, loc, label) },
        (signal) => this.client.send(new ListObjectsV2Command({ Bucket: loc.bucket, Prefix: listPrefix, ContinuationToken: token }), { abortSignal: signal }),
      );
      for (const o of page.Contents ?? []) {
        const k = o.Key ?? "";
        if (k.endsWith("/")) continue;
        out.push({ key: k, rel: safeRelative(k.slice(listPrefix.length), label), size: o.Size ?? 0 });
      }
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
    if (out.length === 0) {
      throw new NotFoundError(`${label}: no objects under ${formatS3(loc)}/ (check the bucket and prefix; the prefix names the adapter's folder)`, "adapter_id");
    }
    return out;
  }

  private getObject(loc: S3Location, o: S3Object, dest: string, label: string, deadline: Deadline): Promise<void> {
    const what = `${label}: s3://${loc.bucket}/${o.key}`;
    return withRetries(
      { policy: this.policy, deadline, log: this.log, attemptMs: undefined, what, classify: (e) => this.classify(e, loc, label) },
      async (signal) => {
        const res = await this.client.send(new GetObjectCommand({ Bucket: loc.bucket, Key: o.key }), { abortSignal: signal });
        const body = res.Body as Readable | undefined;
        if (body === undefined) throw new TransientError("empty GetObject body");
        await mkdir(dirname(dest), { recursive: true });
        await writeStreamAtomically(body, dest, {
          expectedBytes: res.ContentLength ?? o.size,
          stallMs: this.timeouts.stallMs,
          progress: this.progress,
          log: this.log,
          what,
        });
      },
    );
  }

  /** SDK errors → access / not-found errors, transient ones, or as they are. */
  classify(err: unknown, loc: S3Location, label: string): unknown {
    if (err instanceof LoraserveError || err instanceof TransientError) return err;
    const e = err as { name?: string; message?: string; $metadata?: { httpStatusCode?: number }; $retryable?: unknown };
    const name = e.name ?? "";
    const status = e.$metadata?.httpStatusCode;
    if (ACCESS_CODES.has(name) || status === 403) {
      return new AdapterAccessError(
        "forbidden",
        `${label}: S3 refused access to ${formatS3(loc)} (${name}): check the server's AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or role) and the bucket policy`,
      );
    }
    if (name === "CredentialsProviderError") {
      return new AdapterAccessError("forbidden", `${label}: no AWS credentials found for ${formatS3(loc)}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a role on the server`);
    }
    if (name === "NoSuchBucket") return new NotFoundError(`${label}: bucket "${loc.bucket}" does not exist at this S3 endpoint`, "adapter_id");
    if (name === "NoSuchKey") return new TransientError(`an object under ${formatS3(loc)} disappeared while downloading`);
    if (RETRY_CODES.has(name) || e.$retryable !== undefined || (status !== undefined && isRetryableStatus(status))) {
      return new TransientError(`S3 ${name || "error"}${status === undefined ? "" : ` (HTTP ${status})`}: ${e.message ?? ""}`, status, name === "TimeoutError");
    }
    return err;
  }
}

/** A file path relative to the adapter folder, refusing keys that would land outside it. */
function safeRelative(rel: string, label: string): string {
  const segs = rel.split("/");
  if (segs.some((s) => s === "" || s === "." || s === "..") || rel.includes("\0")) {
    throw new ValidationError(`${label}: object key suffix "${rel}" cannot be stored as a file (empty, "." or ".." segment)`, "adapter_id");
  }
  return segs.join(sep);
}

/** A readable, collision-free, length-bounded directory name for an S3 prefix. */
function safeDirName(prefix: string): string {
  const slug = prefix.replace(/[^A-Za-z0-9._-]+/g, "--").slice(0, 80);
  return `${slug}-${createHash("sha256").update(prefix).digest("hex").slice(0, 12)}`;
}

/** `s3://bucket/prefix` adapters. No access check: S3 credentials are the server's, not the request's. */
export class S3Source implements AdapterSource {
  readonly name = "s3" as const;

  constructor(private readonly fetcher: S3Fetcher) {}

  async checkAccess(id: string): Promise<void> {
    parseS3Url(id);
  }

  async fetch(id: string, _token: string | undefined, signal?: AbortSignal): Promise<FetchedAdapter> {
    const started = Date.now();
    const loc = parseS3Url(id);
    return this.fetcher.fetch(loc, { source: "s3", id }, signal, started, 0);
  }
}
