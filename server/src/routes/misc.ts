// The small routes: /health (200 only when ready), /info, /tokenize, /v1/models, /metrics, /openapi.json.
import { Router } from "express";

import { IncrementalDecoder } from "../../../engine/src/tokenizer.js";
import { baseModelName, type ServerContext } from "../context.js";
import { VERSION } from "../config.js";
import { openapiDoc, validateBody } from "../validate.js";
import type { components } from "../wire-types.js";
import { handle } from "./common.js";

type S = components["schemas"];

export function miscRoutes(ctx: ServerContext): Router {
  const r = Router();

  r.get("/health", (_req, res) => {
    res.status(ctx.ready ? 200 : 503).json({ status: ctx.ready ? "ok" : "loading" } satisfies S["Health"]);
  });

  r.get("/info", (_req, res) => {
    const e = ctx.engine, info = e.backend.info(), c = ctx.config;
    const out: S["Info"] = {
      model_id: ctx.modelId,
      model_sha: null,
      model_dtype: c.dtype ?? e.spec.torchDtype ?? "float32",
      model_device_type: info.backend.startsWith("cuda") ? "cuda" : "cpu",
      model_pipeline_tag: "text-generation",
      max_concurrent_requests: c.maxConcurrentRequests,
      max_best_of: c.maxBestOf,
      max_stop_sequences: c.maxStopSequences,
      max_input_length: e.maxInputLength,
      max_total_tokens: e.maxTotalTokens,
      waiting_served_ratio: c.waitingServedRatio,
      max_batch_total_tokens: e.scheduler.cfg.maxBatchTotalTokens,
      max_waiting_tokens: c.maxWaitingTokens,
      max_batch_prefill_tokens: e.scheduler.cfg.maxBatchPrefillTokens,
      max_active_adapters: c.maxActiveAdapters,
      adapter_source: c.adapterSource,
      speculative_tokens: c.speculativeTokens,
      kv_blocks: info.kvBlocks,
      kv_block_size: info.blockSize,
      backend: info.backend,
      version: VERSION,
      sha: null,
      docker_label: process.env.DOCKER_LABEL ?? null,
    };
    res.json(out);
  });

  r.post("/tokenize", handle(ctx, "native", "tokenize", async (c) => {
    const body = validateBody<S["TokenizeRequest"]>("TokenizeRequest", c.req.body);
    const tok = ctx.engine.tokenizer;
    const ids = tok.encode(body.inputs, body.add_special_tokens ?? true);
    // Character offsets into the decoded text, from the streaming decoder (special tokens take no characters).
    const dec = new IncrementalDecoder(tok);
    const out: S["TokenizeResponse"] = [];
    let prev = 0;
    for (const id of ids) {
      const len = prev + dec.push(id).length;
      out.push({ id, text: tok.decode([id], false), start: prev, stop: len });
      prev = len;
    }
    c.res.json(out);
  }));

  r.get("/v1/models", (_req, res) => {
    const created = Math.floor(Date.now() / 1000);
    const base = baseModelName(ctx);
    const data: S["Model"][] = [{ id: base, object: "model", created, owned_by: "loraserve", root: ctx.modelId, parent: null, status: "base" }];
    for (const a of ctx.registry.list())
      data.push({ id: a.name, object: "model", created, owned_by: "loraserve", root: a.id, parent: base, status: a.state, pinned: a.pinned, source: a.source });
    res.json({ object: "list", data } satisfies S["ModelList"]);
  });

  r.get("/metrics", async (_req, res) => {
    res.set("Content-Type", ctx.metrics.registry.contentType).send(await ctx.metrics.registry.metrics());
  });

  r.get("/openapi.json", (_req, res) => {
    res.json(openapiDoc);
  });

  return r;
}
