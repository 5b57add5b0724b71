// The `pbase` source: `<repo>[/<version>]` resolved through the Predibase API with the request's token, then
// fetched from the model bucket by S3Fetcher. Access check = that resolution, asked anew for every request.

import { AdapterAccessError, LoraserveError, NotFoundError, UpstreamError, ValidationError } from "../../errors.js";
import { type S3Fetcher, type S3Location, checkLocation } from "./s3.js";
import { SingleFlight, tokenKey } from "./single-flight.js";
import { Deadline, TransientError, isRetryableStatus, untilAborted, withRetries } from "./transfer.js";
import type { AdapterSource, FetchedAdapter, RetryPolicy, SourceContext, SourceLogger, SourceTimeouts } from "./types.js";

export interface PredibaseOptions {
  /** `PREDIBASE_GATEWAY_ENDPOINT`, default https://api.app.predibase.com. */
  gatewayEndpoint: string;
  /** `PREDIBASE_MODEL_BUCKET`; unset → the first segment of the adapter path names the bucket. */
  modelBucket?: string;
}

/** Statuses Predibase reports for an adapter version. */
const KNOWN_STATUSES = new Set(["pending", "queued", "training", "stopping", "stopped", "canceled", "completed", "errored"]);

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

export function parsePbaseId(id: string): { repo: string; version?: string } {
  const parts = id.split("/");
  const [repo, version] = parts;
  if (parts.length > 2 || !NAME_RE.test(repo) || (version !== undefined && !NAME_RE.test(version))) {
    throw new ValidationError(`pbase adapter id "${id}" is not <model_repo> or <model_repo>/<version> (letters, digits, . _ -)`, "adapter_id");
  }
  return version === undefined ? { repo } : { repo, version };
}

interface Resolution {
  loc: S3Location;
}

export class PredibaseSource implements AdapterSource {
  readonly name = "pbase" as const;
  private readonly resolutions = new SingleFlight<Resolution>();

  private readonly policy: RetryPolicy;
  private readonly timeouts: SourceTimeouts;
  private readonly log: SourceLogger;

  constructor(
    private readonly opts: PredibaseOptions,
    private readonly fetcher: S3Fetcher,
    private readonly ctx: SourceContext,
  ) {
    ({ policy: this.policy, timeouts: this.timeouts, log: this.log } = ctx);
  }

  async checkAccess(id: string, token: string | undefined, signal?: AbortSignal): Promise<void> {
    await this.resolve(id, token, signal, this.ctx.accessTtlMs);
  }

  async fetch(id: string, token: string | undefined, signal?: AbortSignal): Promise<FetchedAdapter> {
    const started = Date.now();
    const { loc } = await this.resolve(id, token, signal, this.ctx.reuseMs);
    return this.fetcher.fetch(loc, { source: "pbase", id }, signal, started, Date.now() - started);
  }

  private async resolve(id: string, token: string | undefined, signal: AbortSignal | undefined, reuseMs: number): Promise<Resolution> {
    const ref = parsePbaseId(id);
    if (token === undefined) {
      throw new AdapterAccessError(
        "unauthorized",
        `pbase adapter "${id}" needs a Predibase API token: pass it as api_token (or Authorization: Bearer when the server runs without --api-keys)`,
      );
    }
    // Shared by identical concurrent checks, so it runs on its own deadline; each caller may still walk away.
    const shared = this.resolutions.run(`${id}#${tokenKey(token)}`, () => this.ask(id, ref, token, new Deadline(this.timeouts.accessMs)), reuseMs);
    return untilAborted(shared, signal, `pbase adapter "${id}": access check`);
  }

  private async ask(id: string, ref: { repo: string; version?: string }, token: string, deadline: Deadline): Promise<Resolution> {
    const base = this.opts.gatewayEndpoint.replace(/\/+$/, "");
    const repo = encodeURIComponent(ref.repo);
    if (ref.version !== undefined) {
      const v2 = await this.getJson(id, `${base}/v2/repos/${repo}/version/${encodeURIComponent(ref.version)}`, token, deadline);
      if (v2 !== undefined) return { loc: this.fromV2(id, v2) };
    }
    const legacyUrl = `${base}/v1/models/version/name/${repo}${ref.version === undefined ? "" : `?version=${encodeURIComponent(ref.version)}`}`;
    const legacy = await this.getJson(id, legacyUrl, token, deadline);
    if (legacy === undefined) {
      throw new NotFoundError(`pbase adapter "${id}" not found: no such model repo${ref.version === undefined ? "" : " or version"} for this token's tenant`, "adapter_id");
    }
    return { loc: this.fromLegacy(id, legacy) };
  }

  /** The JSON body of a 200, undefined for a 404; 401/403 → access errors; 5xx/timeouts retried. */
  private getJson(id: string, url: string, token: string, deadline: Deadline): Promise<Record<string, unknown> | undefined> {
    const what = `pbase adapter "${id}": resolving through ${new URL(url).origin}`;
    return withRetries({ policy: this.policy, deadline, log: this.log, attemptMs: this.timeouts.requestMs, what }, async (signal) => {
      const res = await fetch(url, { headers: { Authorization: `Bearer ${token}`, Accept: "application/json" }, signal });
      if (res.status === 404) {
        await res.body?.cancel();
        return undefined;
      }
      if (res.status === 401) {
        await res.body?.cancel();
        throw new AdapterAccessError("unauthorized", `pbase adapter "${id}": Predibase refused the token (invalid, expired or revoked): pass a valid Predibase API token as api_token`);
      }
      if (res.status === 403) {
        await res.body?.cancel();
        throw new AdapterAccessError("forbidden", `pbase adapter "${id}": this Predibase token may not read the adapter; use a token of the tenant that owns it`);
      }
      if (isRetryableStatus(res.status)) {
        await res.body?.cancel();
        throw new TransientError(`Predibase answered HTTP ${res.status}`, res.status);
      }
      if (!res.ok) {
        await res.body?.cancel();
        throw new UpstreamError(`pbase adapter "${id}": Predibase answered HTTP ${res.status}`);
      }
      try {
        const body: unknown = await res.json();
        if (body === null || typeof body !== "object") throw new Error("not an object");
        return body as Record<string, unknown>;
      } catch (err) {
        if (err instanceof LoraserveError) throw err;
        if (signal.aborted) throw err;
        throw new UpstreamError(`pbase adapter "${id}": Predibase answered with a body that is not JSON (${(err as Error).message})`);
      }
    });
  }

  private fromV2(id: string, body: Record<string, unknown>): S3Location {
    const status = typeof body.status === "string" ? body.status : undefined;
    const path = typeof body.adapterPath === "string" && body.adapterPath !== "" ? body.adapterPath : undefined;
    this.checkStatus(id, status, path);
    if (path === undefined) throw new NotFoundError(`pbase adapter "${id}" has no weights yet (status "${status ?? "unknown"}"); try again once it has completed`, "adapter_id");
    return this.locate(id, path);
  }

  private fromLegacy(id: string, body: Record<string, unknown>): S3Location {
    const uuid = body.uuid;
    const run = body.bestRunID;
    if (typeof body.status === "string") this.checkStatus(id, body.status, undefined);
    if ((typeof uuid !== "string" && typeof uuid !== "number") || (typeof run !== "string" && typeof run !== "number") || uuid === "" || run === "") {
      throw new NotFoundError(`pbase adapter "${id}" has no best run with weights yet; try again once training has completed`, "adapter_id");
    }
    return this.locate(id, `${uuid}/${run}/artifacts/model/model_weights/`);
  }

  /** completed → fine; training → fine only with weights; unknown → warn and go on; anything else → refused. */
  private checkStatus(id: string, status: string | undefined, path: string | undefined): void {
    if (status === undefined || status === "completed") return;
    if (status === "training" && path !== undefined) {
      this.log.info({ adapter: id, status }, "pbase adapter still training; serving the weights saved so far");
      return;
    }
    if (!KNOWN_STATUSES.has(status)) {
      this.log.warn({ adapter: id, status }, "pbase adapter has a status this server does not know; trying its weights");
      return;
    }
    const hint = status === "errored" || status === "canceled" || status === "stopped" ? "it will not produce weights; pick another version" : "try again once it has completed";
    throw new NotFoundError(`pbase adapter "${id}" cannot be served: its status is "${status}" (${hint})`, "adapter_id");
  }

  private locate(id: string, path: string): S3Location {
    try {
      return this.locateUnchecked(id, path);
    } catch (err) {
      if (err instanceof ValidationError) throw new UpstreamError(`Predibase gave an unusable adapter path: ${err.message}`);
      throw err;
    }
  }

  private locateUnchecked(id: string, path: string): S3Location {
    const shown = `pbase adapter "${id}" at ${path}`;
    if (path.startsWith("s3://")) {
      const m = /^s3:\/\/([^/]+)\/?(.*)$/.exec(path);
      if (m !== null) return checkLocation(m[1], m[2], shown);
    }
    const clean = path.replace(/^\/+/, "");
    if (this.opts.modelBucket !== undefined) return checkLocation(this.opts.modelBucket, clean, shown);
    const slash = clean.indexOf("/");
    if (slash < 0) {
      throw new UpstreamError(`${shown}: the path names no bucket and PREDIBASE_MODEL_BUCKET is not set on the server`);
    }
    return checkLocation(clean.slice(0, slash), clean.slice(slash + 1), shown);
  }
}
