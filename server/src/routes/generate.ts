// The LoRAX/TGI native routes: POST /generate (JSON, with details, prefill logprobs and best_of) and
// POST /generate_stream (SSE of StreamResponse, the last one carrying generated_text and details).
import { Router } from "express";

import type { FinishInfo } from "../../../engine/src/engine.js";
import type { ServerContext } from "../context.js";
import { SseWriter } from "../sse.js";
import { nativeParams, nativeResponseFormat } from "../translate.js";
import { validateBody } from "../validate.js";
import type { components } from "../wire-types.js";
import { collectAll, handle, type SeqResult } from "./common.js";

type S = components["schemas"];

const FINISH: Record<FinishInfo["reason"], S["FinishReason"]> = { length: "length", eos: "eos_token", stop: "stop_sequence" };

const wireToken = (t: { id: number; text: string; logprob: number; special: boolean }): S["Token"] => ({ id: t.id, text: t.text, logprob: t.logprob, special: t.special });

export function generateRoutes(ctx: ServerContext): Router {
  const r = Router();

  r.post("/generate", handle(ctx, "native", "generate", async (c) => {
    const body = validateBody<S["GenerateRequest"]>("GenerateRequest", c.req.body);
    const { params, adapter, meta, truncate } = nativeParams(ctx, c.req, body, false);
    const responseFormat = nativeResponseFormat(body.parameters?.response_format);
    const sub = await ctx.engine.submit({ input: { text: body.inputs }, adapter, params, n: meta.bestOf, truncate, responseFormat, signal: c.signal });
    c.accepted(sub);
    const { prompt, seqs } = await collectAll(sub, c.finished);
    // best_of: the sequence with the highest cumulative log-probability wins.
    const order = seqs.map((_, i) => i).sort((a, b) => seqs[b].finish.cumulativeLogprob - seqs[a].finish.cumulativeLogprob);
    const best = seqs[order[0]];
    const prefix = meta.returnFullText ? body.inputs : "";
    const seqDetails = (s: SeqResult) => ({
      finish_reason: FINISH[s.finish.reason],
      generated_tokens: s.finish.generatedTokens,
      seed: meta.sampling ? Number(s.finish.seed) : null,
      prefill: meta.decoderInputDetails ? (prompt ?? []) : [],
      tokens: s.tokens.map(wireToken),
      ...(meta.topN > 0 ? { top_tokens: s.tokens.map((t) => (t.top ?? []).map((x) => ({ id: x.id, text: x.text, logprob: x.logprob, special: ctx.engine.tokenizer.isSpecial(x.id) }))) } : {}),
    });
    const out: S["GenerateResponse"] = { generated_text: prefix + best.finish.text };
    if (meta.details) {
      out.details = {
        ...seqDetails(best),
        prompt_tokens: best.finish.promptTokens,
        ...(seqs.length > 1 ? { best_of_sequences: order.slice(1).map((i) => ({ generated_text: prefix + seqs[i].finish.text, ...seqDetails(seqs[i]) })) } : {}),
      };
    }
    c.res.json(out);
  }));

  r.post("/generate_stream", handle(ctx, "native", "generate_stream", async (c) => {
    const body = validateBody<S["GenerateRequest"]>("GenerateRequest", c.req.body);
    const { params, adapter, meta, truncate } = nativeParams(ctx, c.req, body, true);
    const responseFormat = nativeResponseFormat(body.parameters?.response_format);
    const sub = await ctx.engine.submit({ input: { text: body.inputs }, adapter, params, truncate, responseFormat, signal: c.signal });
    c.accepted(sub);
    const sse = new SseWriter(c.res);
    try {
      for await (const e of sub.events) {
        if (e.type !== "token") continue;
        const f = e.finish;
        if (f) c.finished(f);
        const ev: S["StreamResponse"] = {
          index: e.index,
          token: wireToken(e),
          generated_text: f ? (meta.returnFullText ? body.inputs : "") + f.text : null,
          details: f ? { finish_reason: FINISH[f.reason], generated_tokens: f.generatedTokens, prompt_tokens: f.promptTokens, seed: meta.sampling ? Number(f.seed) : null } : null,
        };
        if (meta.topN > 0) ev.top_tokens = (e.top ?? []).map((x) => ({ id: x.id, text: x.text, logprob: x.logprob, special: ctx.engine.tokenizer.isSpecial(x.id) }));
        sse.send(ev);
      }
      sse.end();
    } catch (err) {
      if (c.signal.aborted) return;
      sse.fail(err, "native");
    }
  }));

  return r;
}
