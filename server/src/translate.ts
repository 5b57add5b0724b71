// Wire → engine: turns validated native and OpenAI request bodies into SamplingParams and adapter requests,
// with each API's defaults and semantics (TGI: warpers imply sampling; OpenAI: temperature 0 is greedy).
import type { Request } from "express";

import type { AdapterRequest, SubmitRequest } from "../../engine/src/engine.js";
import { ValidationError } from "../../engine/src/errors.js";
import { DEFAULT_SAMPLING, type LogitBias, type SamplingParams } from "../../engine/src/sampling.js";
import { adapterById, adapterFromModel, checkStops, defaultAdapter, tokenFor, type ServerContext } from "./context.js";
import { resolveSource } from "../../engine/src/adapters/sources/index.js";
import type { components } from "./wire-types.js";

type S = components["schemas"];

const seedOf = (s: number | null | undefined) => (s === null || s === undefined ? undefined : BigInt.asUintN(64, BigInt(s)));

export function mergedOf(m: S["MergedAdapters"] | null | undefined): Extract<AdapterRequest, { merged: unknown }>["merged"] | undefined {
  if (!m) return undefined;
  return { ids: m.ids, weights: m.weights, mergeStrategy: m.merge_strategy, density: m.density, majoritySignMethod: m.majority_sign_method };
}

function mergedRequest(ctx: ServerContext, req: Request, merged: Extract<AdapterRequest, { merged: unknown }>["merged"], sourceField: string | null | undefined, bodyToken: string | null | undefined): AdapterRequest {
  const source = resolveSource(merged.ids[0], sourceField ?? undefined, ctx.config.adapterSource);
  return { merged, source, token: tokenFor(ctx, req, bodyToken, source) };
}

export interface NativeMeta {
  details: boolean;
  decoderInputDetails: boolean;
  returnFullText: boolean;
  bestOf: number;
  topN: number;
  sampling: boolean;
}

export function nativeParams(ctx: ServerContext, req: Request, body: S["GenerateRequest"], stream: boolean): { params: SamplingParams; adapter?: AdapterRequest; meta: NativeMeta; truncate?: number } {
  const p = body.parameters ?? {};
  if (p.watermark) throw new ValidationError("watermark is not supported by this server", "parameters.watermark");
  const temperature = p.temperature ?? 1;
  const topK = p.top_k ?? 0;
  const topP = p.top_p ?? 1;
  const typicalP = p.typical_p ?? 1;
  // TGI: any warper implies sampling; temperature 0 means greedy here.
  const sampling = temperature > 0 && ((p.do_sample ?? false) || temperature !== 1 || topK > 0 || topP < 1 || typicalP < 1);
  const bestOf = p.best_of ?? 1;
  if (bestOf > ctx.config.maxBestOf) throw new ValidationError(`best_of ${bestOf} is above --max-best-of ${ctx.config.maxBestOf}`, "parameters.best_of");
  if (bestOf > 1 && !sampling) throw new ValidationError("best_of > 1 needs sampling: set do_sample or a temperature/top_k/top_p", "parameters.best_of");
  if (bestOf > 1 && stream) throw new ValidationError("best_of > 1 cannot be streamed", "parameters.best_of");
  const merged = mergedOf(p.merged_adapters);
  const adapter: AdapterRequest | undefined = merged
    ? mergedRequest(ctx, req, merged, p.adapter_source, p.api_token)
    : p.adapter_id
      ? adapterById(ctx, req, p.adapter_id, p.adapter_source, p.api_token)
      : defaultAdapter(ctx, req, p.api_token);
  const params: SamplingParams = {
    ...DEFAULT_SAMPLING,
    maxNewTokens: p.max_new_tokens ?? 20,
    doSample: sampling,
    temperature: temperature > 0 ? temperature : 1,
    topK,
    topP,
    typicalP,
    repetitionPenalty: p.repetition_penalty ?? 1,
    presencePenalty: p.presence_penalty ?? 0,
    frequencyPenalty: p.frequency_penalty ?? 0,
    seed: seedOf(p.seed),
    stop: checkStops(ctx, p.stop ?? []),
    ignoreEos: p.ignore_eos_token ?? false,
    topLogprobs: p.top_n_tokens ?? 0,
    promptLogprobs: p.decoder_input_details ?? false,
  };
  return {
    params,
    adapter,
    truncate: p.truncate ?? undefined,
    meta: { details: p.details ?? false, decoderInputDetails: p.decoder_input_details ?? false, returnFullText: p.return_full_text ?? false, bestOf, topN: params.topLogprobs, sampling },
  };
}

type OpenAIBody = S["CompletionRequest"] | S["ChatCompletionRequest"];

export function openaiParams(ctx: ServerContext, req: Request, body: OpenAIBody, maxTokens: number | undefined, topLogprobs: number): { params: SamplingParams; adapter?: AdapterRequest } {
  const temperature = body.temperature ?? 1;
  const merged = mergedOf(body.merged_adapters);
  const adapter: AdapterRequest | undefined = merged
    ? mergedRequest(ctx, req, merged, body.adapter_source, body.api_token)
    : adapterFromModel(ctx, req, body.model, body.adapter_source, body.api_token);
  const stop = body.stop === null || body.stop === undefined ? [] : typeof body.stop === "string" ? [body.stop] : body.stop;
  return {
    adapter,
    params: {
      ...DEFAULT_SAMPLING,
      maxNewTokens: maxTokens ?? 16,
      doSample: temperature > 0,
      temperature: temperature > 0 ? temperature : 1,
      topK: body.top_k ?? 0,
      topP: body.top_p ?? 1,
      minP: body.min_p ?? 0,
      repetitionPenalty: body.repetition_penalty ?? 1,
      presencePenalty: body.presence_penalty ?? 0,
      frequencyPenalty: body.frequency_penalty ?? 0,
      seed: seedOf(body.seed),
      stop: checkStops(ctx, stop),
      ignoreEos: body.ignore_eos ?? false,
      topLogprobs,
      logitBias: logitBiasOf(body.logit_bias),
    },
  };
}

/** OpenAI's logit_bias ({"token id": bias}, checked against the schema) as the engine's arrays; {} = none. */
function logitBiasOf(bias: OpenAIBody["logit_bias"]): LogitBias | undefined {
  const ids = Object.keys(bias ?? {});
  if (ids.length === 0) return undefined;
  return { ids: Int32Array.from(ids, Number), values: Float32Array.from(ids, (id) => bias![id]) };
}

export type EngineResponseFormat = NonNullable<SubmitRequest["responseFormat"]>;

/** OpenAI response_format → the engine's: text means none; json_schema carries the schema. */
export function openaiResponseFormat(rf: S["ChatResponseFormat"] | null | undefined): EngineResponseFormat | undefined {
  if (!rf || rf.type === "text") return undefined;
  if (rf.type === "json_object") return { format: { type: "json_object" }, path: "response_format", param: "response_format" };
  return {
    format: { type: "json_schema", schema: rf.json_schema.schema ?? {}, strict: rf.json_schema.strict ?? undefined },
    path: "response_format.json_schema.schema",
    param: "response_format",
  };
}

/** Native parameters.response_format: {type: "json_object", schema?}; a schema makes it a JSON-schema grammar. */
export function nativeResponseFormat(rf: S["NativeResponseFormat"] | null | undefined): EngineResponseFormat | undefined {
  if (!rf || rf.type === "text") return undefined;
  if (rf.schema) return { format: { type: "json_schema", schema: rf.schema }, path: "parameters.response_format.schema", param: "parameters.response_format" };
  return { format: { type: "json_object" }, path: "parameters.response_format", param: "parameters.response_format" };
}
