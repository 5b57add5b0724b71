// Adapter management with vLLM's route names: POST /v1/load_lora_adapter registers (and optionally pins) an
// adapter under a name usable as `model`; POST /v1/unload_lora_adapter forgets it once no request uses it.
import { Router } from "express";

import { resolveSource } from "../../../engine/src/adapters/sources/index.js";
import { ValidationError } from "../../../engine/src/errors.js";
import { isBaseName, tokenFor, type ServerContext } from "../context.js";
import { validateBody } from "../validate.js";
import type { components } from "../wire-types.js";
import { handle } from "./common.js";

type S = components["schemas"];

export function adapterRoutes(ctx: ServerContext): Router {
  const r = Router();
  r.post("/v1/load_lora_adapter", handle(ctx, "openai", "load_lora_adapter", async (c) => {
    const body = validateBody<S["LoadLoraRequest"]>("LoadLoraRequest", c.req.body);
    if (isBaseName(ctx, body.lora_name)) throw new ValidationError(`lora_name "${body.lora_name}" names the base model: choose another name`, "lora_name");
    const source = resolveSource(body.lora_path, body.adapter_source ?? undefined, ctx.config.adapterSource);
    const info = await ctx.registry.register(body.lora_name, body.lora_path, source, tokenFor(ctx, c.req, body.api_token, source), body.pinned ?? false);
    c.res.json({ lora_name: body.lora_name, status: info.state, message: `adapter ${body.lora_path} (${source}) is ${info.state}${info.pinned ? " and pinned" : ""}` } satisfies S["AdapterOpResponse"]);
  }));
  r.post("/v1/unload_lora_adapter", handle(ctx, "openai", "unload_lora_adapter", async (c) => {
    const body = validateBody<S["UnloadLoraRequest"]>("UnloadLoraRequest", c.req.body);
    const info = ctx.registry.unregister(body.lora_name);
    c.res.json({ lora_name: body.lora_name, status: "unloaded", message: `name "${body.lora_name}" removed; adapter ${info.id} leaves memory once no request uses it` } satisfies S["AdapterOpResponse"]);
  }));
  return r;
}
