// What every route handler gets: the engine, adapter registry, configuration, metrics, logger, readiness, and
// the request helpers shared by the routes (which adapter, from which source, with which token).
import type { Request } from "express";
import type { Logger } from "pino";

import type { AdapterRegistry } from "../../engine/src/adapters/registry.js";
import { pickToken, resolveSource, type SourceName } from "../../engine/src/adapters/sources/index.js";
import type { AdapterRequest, Engine } from "../../engine/src/engine.js";
import { ValidationError } from "../../engine/src/errors.js";
import type { ServerConfig } from "./config.js";
import type { Metrics } from "./metrics.js";

export interface ServerContext {
  engine: Engine;
  config: ServerConfig;
  metrics: Metrics;
  logger: Logger;
  registry: AdapterRegistry;
  /** The base model's public id (what `model` names it by). */
  modelId: string;
  ready: boolean;
  /** LORAX_USE_GLOBAL_HF_TOKEN and the server's own Hub token (SPEC §3). */
  globalToken: { useGlobalHfToken: boolean; serverToken: string | undefined };
  /** --adapter-id is a Medusa adapter (speculation for everyone), not a default LoRA. */
  defaultIsMedusa: boolean;
}

/** One adapter by id for a request: source resolved (SPEC §5) and token picked (SPEC §3). */
export function adapterById(ctx: ServerContext, req: Request, id: string, sourceField: string | null | undefined, bodyToken: string | null | undefined): AdapterRequest {
  const named = ctx.registry.resolveName(id);
  const source = named?.source ?? resolveSource(id, sourceField ?? undefined, ctx.config.adapterSource);
  return { id, source, token: tokenFor(ctx, req, bodyToken, source) };
}

export function tokenFor(ctx: ServerContext, req: Request, bodyToken: string | null | undefined, source: SourceName): string | undefined {
  return pickToken({
    bodyToken: bodyToken ?? undefined,
    authorizationHeader: req.headers.authorization,
    apiKeysEnabled: ctx.config.apiKeys.length > 0,
    useGlobalHfToken: ctx.globalToken.useGlobalHfToken,
    serverToken: ctx.globalToken.serverToken,
    source,
  });
}

/** SPEC §5: `model` selects the adapter; "" or the base model's id is the base model (or --adapter-id). */
export function adapterFromModel(ctx: ServerContext, req: Request, model: string, sourceField: string | null | undefined, bodyToken: string | null | undefined): AdapterRequest | undefined {
  if (isBaseName(ctx, model)) return defaultAdapter(ctx, req, bodyToken);
  return adapterById(ctx, req, model, sourceField, bodyToken);
}

/** Whether `model` names the base model: "", --model-id or one of --served-model-name. */
export function isBaseName(ctx: ServerContext, model: string): boolean {
  return model === "" || model === ctx.modelId || ctx.config.servedModelNames.includes(model);
}

/** The base model's id in /v1/models and as adapters' parent: the first --served-model-name, else --model-id. */
export function baseModelName(ctx: ServerContext): string {
  return ctx.config.servedModelNames[0] ?? ctx.modelId;
}

/** The server's --adapter-id, for requests that name no adapter. */
export function defaultAdapter(ctx: ServerContext, req: Request, bodyToken: string | null | undefined): AdapterRequest | undefined {
  const id = ctx.config.adapterId;
  return id && !ctx.defaultIsMedusa ? adapterById(ctx, req, id, undefined, bodyToken) : undefined;
}

export function checkStops(ctx: ServerContext, stop: string[]): string[] {
  if (stop.length > ctx.config.maxStopSequences)
    throw new ValidationError(`${stop.length} stop sequences given, at most ${ctx.config.maxStopSequences} allowed (--max-stop-sequences)`, "stop");
  return stop;
}
