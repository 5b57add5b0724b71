// What every route handler gets: the engine, configuration, metrics, logger, readiness, and request helpers
// shared by the routes (the caller's adapter token, per-request bookkeeping). No route logic here.
import type { Request } from "express";
import type { Logger } from "pino";

import type { AdapterRequest, Engine } from "../../engine/src/engine.js";
import { ValidationError } from "../../engine/src/errors.js";
import type { ServerConfig } from "./config.js";
import type { Metrics } from "./metrics.js";

/** Adapters registered by name through /v1/load_lora_adapter. */
export interface NamedAdapter {
  name: string;
  path: string;
  source: string;
  pinned: boolean;
}

export interface ServerContext {
  engine: Engine;
  config: ServerConfig;
  metrics: Metrics;
  logger: Logger;
  /** The base model's public id (what `model` names it by). */
  modelId: string;
  ready: boolean;
  named: Map<string, NamedAdapter>;
}

/** The adapter token of a request: the body's api_token wins; the Authorization header counts only when the
 * server itself is not protected by --api-keys (then the header authenticates the caller instead). */
export function adapterToken(ctx: ServerContext, req: Request, bodyToken: string | null | undefined): string | undefined {
  if (bodyToken) return bodyToken;
  if (ctx.config.apiKeys.length > 0) return undefined;
  const h = req.headers.authorization;
  const m = h ? /^Bearer\s+(.+)$/i.exec(h) : null;
  return m ? m[1].trim() : undefined;
}

/** SPEC §5: `model` selects the adapter; "" or the base model's id is the base model. */
export function adapterFromModel(
  ctx: ServerContext,
  model: string,
  source: string | null | undefined,
  token: string | undefined,
): AdapterRequest | undefined {
  if (model === "" || model === ctx.modelId) return defaultAdapter(ctx, token);
  const named = ctx.named.get(model);
  if (named) return { id: named.path, source: source ?? named.source, token };
  return { id: model, source: source ?? inferSource(model, ctx.config.adapterSource), token };
}

/** The server's --adapter-id, for requests that name no adapter. */
export function defaultAdapter(ctx: ServerContext, token: string | undefined): AdapterRequest | undefined {
  const id = ctx.config.adapterId;
  return id ? { id, source: inferSource(id, ctx.config.adapterSource), token } : undefined;
}

export function inferSource(id: string, fallback: string): string {
  if (id.startsWith("s3://")) return "s3";
  if (id.startsWith("/")) return "local";
  return fallback;
}

export function checkStops(ctx: ServerContext, stop: string[]): string[] {
  if (stop.length > ctx.config.maxStopSequences)
    throw new ValidationError(`${stop.length} stop sequences given, at most ${ctx.config.maxStopSequences} allowed (--max-stop-sequences)`, "stop");
  return stop;
}
