// The `hub` source: `org/name[@revision]` from the Hugging Face Hub (or HF_ENDPOINT) into the standard Hub cache
// layout, shared with the Python tools. Access check: the revision endpoint with the request's token, every call.
//
// Access-check caching: none. Identical checks in flight at the same moment share one call; a finished check is
// never reused by another check (`accessTtlMs`, default 0), so a revoked token fails the very next request.
// fetch() reuses the commit sha an access check with the same (id, token) resolved in the last `reuseMs`.
//
// @huggingface/hub is used for metadata: `modelInfo` (GET /api/models/{id}/revision/{rev}) and `listFiles`
// (GET /api/models/{id}/tree/{sha}). Files are downloaded here (GET /{id}/resolve/{sha}/{path}) rather than with its
// `downloadFileToCacheDir`, which shares one `<blob>.incomplete` between concurrent writers, writes refs in place,
// makes one paths-info call per file, has no retries, stall timeout, size/hash check or progress, and logs to console.

import { HubApiError, type ListFileEntry, listFiles, modelInfo } from "@huggingface/hub";
import { lstat, mkdir, readFile, readlink, rename, stat, symlink, writeFile } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { dirname, join, relative, resolve } from "node:path";
import { Readable } from "node:stream";
import type { ReadableStream as WebReadableStream } from "node:stream/web";
import { AdapterAccessError, AdapterIncompatibleError, LoraserveError, NotFoundError, UpstreamError, ValidationError } from "../../errors.js";
import { type AdapterDiskCache, type CacheEntry, lockKeyOf } from "./disk-cache.js";
import { SingleFlight, tokenKey } from "./single-flight.js";
import { type ContentHash, Deadline, TransientError, forEachLimit, isRetryableStatus, untilAborted, withRetries, writeStreamAtomically } from "./transfer.js";
import type { AdapterSource, FetchedAdapter, RetryPolicy, SourceContext, SourceLogger, SourceTimeouts } from "./types.js";

export interface HubOptions {
  /** `HF_ENDPOINT`, default https://huggingface.co. */
  endpoint: string;
  /** The Hub cache: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else ~/.cache/huggingface/hub. */
  cacheDir: string;
}

export interface HubRef {
  repo: string;
  revision: string;
}

const SEGMENT_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,95}$/;
const REVISION_RE = /^[A-Za-z0-9_][A-Za-z0-9._/-]{0,254}$/;
const SHA_RE = /^[0-9a-f]{40}$/;
const ETAG_RE = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;

/** Files an adapter may need besides its weights; fetched when the repo has them. */
/** Besides config.json and the tokenizer files, what a base model needs (its weights are every .safetensors). */
const MODEL_FILES = ["generation_config.json", "model.safetensors.index.json"];

const TOKENIZER_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "tokenizer.model",
  "added_tokens.json",
  "vocab.json",
  "merges.txt",
  "chat_template.jinja",
  "chat_template.json",
];

/** `org/name[@revision]` → repo and revision (default "main"); ValidationError naming the id otherwise. */
export function parseHubId(id: string): HubRef {
  const at = id.indexOf("@");
  const repo = at < 0 ? id : id.slice(0, at);
  const revision = at < 0 ? "main" : id.slice(at + 1);
  const segs = repo.split("/");
  if (segs.length > 2 || !segs.every((s) => SEGMENT_RE.test(s) && !s.includes("--") && !s.includes("..") && !s.endsWith("."))) {
    throw new ValidationError(`hub adapter id "${id}" is not a Hub repo id: write org/name or org/name@revision`, "adapter_id");
  }
  if (!REVISION_RE.test(revision) || revision.split("/").some((s) => s === "" || s === "." || s === "..")) {
    throw new ValidationError(`hub adapter id "${id}": "${revision}" is not a branch, tag or commit`, "adapter_id");
  }
  return { repo, revision };
}

/** `models--org--name`, as huggingface_hub names repo folders. */
export function hubRepoFolder(repo: string): string {
  return `models--${repo.split("/").join("--")}`;
}

function encodePath(path: string): string {
  return path.split("/").map(encodeURIComponent).join("/");
}

interface Resolved {
  sha: string;
}

export class HubSource implements AdapterSource {
  readonly name = "hub" as const;
  private readonly resolutions = new SingleFlight<Resolved>();
  private readonly endpoint: string;

  private readonly cacheDir: string;
  private readonly policy: RetryPolicy;
  private readonly timeouts: SourceTimeouts;
  private readonly log: SourceLogger;

  constructor(
    opts: HubOptions,
    private readonly cache: AdapterDiskCache,
    private readonly ctx: SourceContext,
  ) {
    this.endpoint = opts.endpoint.replace(/\/+$/, "");
    this.cacheDir = opts.cacheDir;
    ({ policy: this.policy, timeouts: this.timeouts, log: this.log } = ctx);
  }

  async checkAccess(id: string, token: string | undefined, signal?: AbortSignal): Promise<void> {
    await this.resolve(parseHubId(id), id, token, signal, this.ctx.accessTtlMs);
  }

  async fetch(id: string, token: string | undefined, signal?: AbortSignal): Promise<FetchedAdapter> {
    return this.fetchKind(id, token, "adapter", signal);
  }

  /** A base model repository (config, tokenizer, safetensors weights) into the Hub cache. */
  fetchModel(id: string, token: string | undefined, signal?: AbortSignal): Promise<FetchedAdapter> {
    return this.fetchKind(id, token, "model", signal);
  }

  private async fetchKind(id: string, token: string | undefined, kind: "adapter" | "model", signal?: AbortSignal): Promise<FetchedAdapter> {
    const started = Date.now();
    const ref = parseHubId(id);
    const { sha } = await this.resolve(ref, id, token, signal, this.ctx.reuseMs);
    const resolveMs = Date.now() - started;
    const key = `hub:${ref.repo}@${sha}${kind === "model" ? ":model" : ""}`;
    const repoDir = join(this.cacheDir, hubRepoFolder(ref.repo));
    const got = await this.cache.obtain(key, () => this.download(ref, id, sha, token, repoDir, key, kind), signal, `hub ${kind} "${id}": download`, true);
    if (ref.revision !== sha) await this.writeRef(repoDir, ref.revision, sha);
    return {
      source: "hub",
      id,
      dir: got.entry.dir,
      cacheKey: key,
      bytes: got.entry.bytes,
      fromCache: got.fromCache,
      timings: { resolveMs, downloadMs: got.downloadMs, totalMs: Date.now() - started },
      release: got.release,
    };
  }

  private resolve(ref: HubRef, id: string, token: string | undefined, signal: AbortSignal | undefined, reuseMs: number): Promise<Resolved> {
    const shared = this.resolutions.run(`${ref.repo}@${ref.revision}#${tokenKey(token)}`, () => this.askHub(ref, id, token), reuseMs);
    return untilAborted(shared, signal, `hub repo "${id}": access check`);
  }

  private async askHub(ref: HubRef, id: string, token: string | undefined): Promise<Resolved> {
    const deadline = new Deadline(this.timeouts.accessMs);
    const what = `hub repo "${id}": access check`;
    try {
      const info = await modelInfo({
        name: ref.repo,
        revision: ref.revision,
        hubUrl: this.endpoint,
        additionalFields: ["sha"],
        fetch: this.libFetch(deadline, what, token),
      });
      const sha = info.sha;
      if (typeof sha !== "string" || !SHA_RE.test(sha)) throw new UpstreamError(`${what}: the Hub answered without a commit sha for revision "${ref.revision}"`);
      if (info.gated !== false && info.gated !== undefined) await this.probeGated(ref, id, sha, token, deadline);
      return { sha };
    } catch (err) {
      throw this.mapError(err, ref, id, token);
    }
  }

  /** Gated repos show their metadata to anyone; only a file request tells whether this token was granted access. */
  private async probeGated(ref: HubRef, id: string, sha: string, token: string | undefined, deadline: Deadline): Promise<void> {
    const url = `${this.endpoint}/${ref.repo}/resolve/${sha}/adapter_config.json`;
    await withRetries({ policy: this.policy, deadline, log: this.log, attemptMs: this.timeouts.requestMs, what: `hub repo "${id}": gated access check` }, async (signal) => {
      const res = await fetch(url, { method: "HEAD", headers: this.headers(token), redirect: "manual", signal });
      await res.body?.cancel();
      if (res.ok || (res.status >= 300 && res.status < 400) || res.status === 404) return;
      this.throwForStatus(res.status, res.headers.get("x-error-code"), ref, id, token);
    });
  }

  private headers(token: string | undefined): Record<string, string> {
    const h: Record<string, string> = { "User-Agent": "loraserve", "Accept-Encoding": "identity" };
    if (token !== undefined) h.Authorization = `Bearer ${token}`;
    return h;
  }

  /**
   * A fetch for @huggingface/hub's metadata calls: per-attempt timeout, retries on 5xx and resets, body buffered.
   * The token goes in here rather than as the library's `accessToken`, which refuses tokens not starting with
   * "hf_" (those of Hub mirrors behind HF_ENDPOINT, e.g. Artifactory).
   */
  private libFetch(deadline: Deadline, what: string, token: string | undefined): typeof fetch {
    return ((input: string | URL | Request, init?: RequestInit) =>
      withRetries({ policy: this.policy, deadline, log: this.log, attemptMs: this.timeouts.requestMs, what }, async (signal) => {
        const headers = new Headers(init?.headers);
        if (token !== undefined) headers.set("Authorization", `Bearer ${token}`);
        const res = await fetch(input, { ...init, headers, signal });
        if (isRetryableStatus(res.status)) {
          await res.body?.cancel();
          throw new TransientError(`the Hub answered HTTP ${res.status}`, res.status);
        }
        const body = await res.arrayBuffer();
        return new Response(res.status === 204 || res.status === 304 ? null : body, { status: res.status, statusText: res.statusText, headers: res.headers });
      })) as typeof fetch;
  }

  private throwForStatus(status: number, errorCode: string | null, ref: HubRef, id: string, token: string | undefined): never {
    if (status === 401 || status === 403 || status === 404) throw this.mapError(new HubApiError("", status, undefined, errorCode ?? ""), ref, id, token);
    if (isRetryableStatus(status)) throw new TransientError(`the Hub answered HTTP ${status}`, status);
    throw new UpstreamError(`hub repo "${id}": the Hub answered HTTP ${status}`);
  }

  /** Hub answers → the engine's errors; messages name the adapter and what to do, never the token. */
  private mapError(err: unknown, ref: HubRef, id: string, token: string | undefined): unknown {
    if (err instanceof LoraserveError || err instanceof TransientError) return err;
    if (err instanceof HubApiError) {
      const page = `${this.endpoint}/${ref.repo}`;
      switch (err.statusCode) {
        case 401:
          return new AdapterAccessError(
            "unauthorized",
            token === undefined
              ? `hub repo "${id}" is private, gated or does not exist: pass a Hugging Face token that can read it as api_token (or Authorization: Bearer)`
              : `hub repo "${id}": the Hub refused the token (invalid, expired or revoked) or the repo does not exist; pass a valid token with read access`,
          );
        case 403:
          return new AdapterAccessError(
            "forbidden",
            `hub repo "${id}": the token may not read this repo (gated: accept its conditions at ${page} with the token's account; fine-grained tokens need read access to it)`,
          );
        case 404:
          return new NotFoundError(
            /revision|rev id/i.test(err.message)
              ? `hub repo "${id}": revision "${ref.revision}" not found in ${ref.repo} (check the branch, tag or commit after "@")`
              : `hub repo "${id}" not found on ${this.endpoint} (check the repo id)`,
            "adapter_id",
          );
        default:
          return new UpstreamError(`hub repo "${id}": the Hub answered HTTP ${err.statusCode}`);
      }
    }
    return err;
  }

  private download(ref: HubRef, id: string, sha: string, token: string | undefined, repoDir: string, key: string, kind: "adapter" | "model"): Promise<CacheEntry> {
    return this.cache.withLock(lockKeyOf({ kind: "hub", dir: "", repoDir }), async () => {
      const existing = this.cache.get(key);
      if (existing !== undefined) return existing;
      const deadline = new Deadline(this.timeouts.totalMs);
      const snapshot = join(repoDir, "snapshots", sha);
      try {
        const listing = await this.listRoot(ref, id, sha, token, deadline);
        const want = (path: string): ListFileEntry | undefined => listing.get(path);
        const small = ["adapter_config.json", "config.json", ...TOKENIZER_FILES, ...(kind === "model" ? MODEL_FILES : [])].flatMap((p) => want(p) ?? []);
        const weights: ListFileEntry[] = [];
        if (kind === "model") {
          if (want("config.json") === undefined) throw new NotFoundError(`hub model "${id}" (${ref.repo}@${ref.revision}) has no config.json: not a Hugging Face model repository`);
          weights.push(...[...listing.values()].filter((f) => f.path.endsWith(".safetensors")));
          if (weights.length === 0)
            throw new AdapterIncompatibleError(`hub model "${id}" has no .safetensors weights (PyTorch .bin base weights are not supported: use a safetensors revision)`);
        } else if (want("adapter_config.json") !== undefined) {
          const w = want("adapter_model.safetensors") ?? want("adapter_model.bin");
          if (w === undefined) {
            throw new AdapterIncompatibleError(`hub adapter "${id}" has adapter_config.json but neither adapter_model.safetensors nor adapter_model.bin`);
          }
          weights.push(w);
        }
        await forEachLimit(small, 4, (f) => this.ensureFile(ref, id, sha, f, token, repoDir, deadline));
        if (kind === "adapter") {
          if (want("config.json") !== undefined && (await isMedusaConfig(join(snapshot, "config.json")))) {
            const heads = [...listing.values()].filter((f) => f.path.endsWith(".safetensors") && !weights.includes(f));
            if (heads.length === 0) throw new AdapterIncompatibleError(`hub adapter "${id}" is Medusa heads (config.json) without a .safetensors weight file`);
            weights.push(...heads);
          } else if (weights.length === 0) {
            throw new AdapterIncompatibleError(
              `hub adapter "${id}" (${ref.repo}@${ref.revision}) is neither a PEFT LoRA (no adapter_config.json) nor Medusa heads (no config.json with medusa_num_heads)`,
            );
          }
        }
        const weightBytes = weights.reduce((s, f) => s + (f.lfs?.size ?? f.size), 0);
        await this.cache.enforceBudget(weightBytes);
        this.log.info({ adapter: id, sha, files: weights.map((f) => f.path), bytes: weightBytes }, "adapter download started");
        await forEachLimit(weights, 4, (f) => this.ensureFile(ref, id, sha, f, token, repoDir, deadline));
        const files = [...small, ...weights];
        const bytes = files.reduce((s, f) => s + (f.lfs?.size ?? f.size), 0);
        this.log.info({ adapter: id, sha, bytes }, "adapter downloaded");
        return this.cache.commit({ kind: "hub", key, dir: snapshot, repoDir, sha, files: files.map((f) => f.path), bytes });
      } catch (err) {
        throw this.mapError(err, ref, id, token);
      }
    });
  }

  /** Files at the repo root at commit `sha`, by path. */
  private async listRoot(ref: HubRef, id: string, sha: string, token: string | undefined, deadline: Deadline): Promise<Map<string, ListFileEntry>> {
    const out = new Map<string, ListFileEntry>();
    const entries = listFiles({
      repo: { type: "model", name: ref.repo },
      revision: sha,
      hubUrl: this.endpoint,
      fetch: this.libFetch(deadline, `hub repo "${id}": listing files`, token),
    });
    for await (const e of entries) if (e.type === "file") out.set(e.path, e);
    return out;
  }

  /** Puts one file into blobs/ (unless an intact blob is there) and links it from snapshots/<sha>/. */
  private async ensureFile(ref: HubRef, id: string, sha: string, f: ListFileEntry, token: string | undefined, repoDir: string, deadline: Deadline): Promise<void> {
    const etag = f.lfs?.oid ?? f.oid;
    const size = f.lfs?.size ?? f.size;
    if (etag === undefined || !ETAG_RE.test(etag)) throw new UpstreamError(`hub repo "${id}": the Hub listed ${f.path} without a usable object id`);
    const blob = join(repoDir, "blobs", etag);
    const pointer = join(repoDir, "snapshots", sha, ...f.path.split("/"));
    const have = await stat(blob).catch(() => undefined);
    if (have?.size !== size) {
      await mkdir(dirname(blob), { recursive: true });
      const hash: ContentHash = f.lfs !== undefined ? { algo: "sha256", hex: f.lfs.oid } : { algo: "git-sha1", hex: etag };
      await this.downloadBlob(ref, id, sha, f.path, size, hash, blob, token, deadline);
    }
    await linkAtomically(blob, pointer);
  }

  private downloadBlob(ref: HubRef, id: string, sha: string, path: string, size: number, hash: ContentHash, blob: string, token: string | undefined, deadline: Deadline): Promise<void> {
    const url = `${this.endpoint}/${ref.repo}/resolve/${sha}/${encodePath(path)}`;
    const what = `hub repo "${id}": ${path}`;
    return withRetries({ policy: this.policy, deadline, log: this.log, what }, async (attemptSignal) => {
      const cut = new AbortController();
      const signal = AbortSignal.any([attemptSignal, cut.signal]);
      const headersTimer = setTimeout(() => cut.abort(new TransientError(`no answer within ${this.timeouts.requestMs} ms`, undefined, true)), this.timeouts.requestMs);
      let res: Response;
      try {
        // Redirects to another origin (the Hub's CDN) drop Authorization, as they should.
        res = await fetch(url, { headers: this.headers(token), redirect: "follow", signal });
      } catch (err) {
        if (cut.signal.aborted) throw cut.signal.reason;
        throw err;
      } finally {
        clearTimeout(headersTimer);
      }
      if (!res.ok) {
        await res.body?.cancel();
        this.throwForStatus(res.status, res.headers.get("x-error-code"), ref, id, token);
      }
      if (res.body === null) throw new TransientError("empty body");
      const body = Readable.fromWeb(res.body as WebReadableStream<Uint8Array>);
      await writeStreamAtomically(body, blob, {
        expectedBytes: size,
        hash,
        stallMs: this.timeouts.stallMs,
        progress: this.ctx.progress,
        log: this.log,
        what,
        onStall: () => cut.abort(),
      });
    });
  }

  /** refs/<revision> holds the commit sha, as huggingface_hub writes it; replaced atomically. */
  private async writeRef(repoDir: string, revision: string, sha: string): Promise<void> {
    const ref = join(repoDir, "refs", ...revision.split("/"));
    if ((await readFile(ref, "utf8").catch(() => "")) === sha) return;
    await mkdir(dirname(ref), { recursive: true });
    const tmp = `${ref}.loraserve-${randomBytes(4).toString("hex")}.tmp`;
    await writeFile(tmp, sha);
    await rename(tmp, ref);
  }
}

/** snapshots/<sha>/<path> → ../../blobs/<etag> (relative, as huggingface_hub links), swapped in atomically. */
async function linkAtomically(blob: string, pointer: string): Promise<void> {
  const target = relative(dirname(pointer), blob);
  const cur = await lstat(pointer).catch(() => undefined);
  if (cur?.isSymbolicLink() === true && resolve(dirname(pointer), await readlink(pointer)) === resolve(blob)) return;
  await mkdir(dirname(pointer), { recursive: true });
  const tmp = `${pointer}.loraserve-${randomBytes(4).toString("hex")}.tmp`;
  await symlink(target, tmp);
  await rename(tmp, pointer);
}

async function isMedusaConfig(path: string): Promise<boolean> {
  try {
    const cfg = JSON.parse(await readFile(path, "utf8")) as Record<string, unknown>;
    return cfg.medusa_num_heads !== undefined;
  } catch {
    return false;
  }
}
