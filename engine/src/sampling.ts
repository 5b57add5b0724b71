// Sampling parameters of one generation in the engine's terms, their validation, and the per-sequence
// penalty state (token counts) that native sampling reads. No HTTP names here.
import { ValidationError } from "./errors.js";

export interface SamplingParams {
  maxNewTokens: number;
  doSample: boolean; // false: greedy
  temperature: number;
  topK: number; // 0 = off
  topP: number; // 1 = off
  typicalP: number; // 1 = off
  minP: number; // 0 = off
  repetitionPenalty: number; // 1 = off; over prompt and output (HF semantics)
  presencePenalty: number; // over output (OpenAI semantics)
  frequencyPenalty: number;
  seed?: bigint;
  stop: string[];
  ignoreEos: boolean;
  /** Top alternatives per generated token (0 = none). The chosen token's logprob is always reported. */
  topLogprobs: number;
  /** Report log-probabilities of the prompt tokens (decoder_input_details / echo). */
  promptLogprobs: boolean;
  /** Added to these tokens' logits before the choice (after the penalties); reported logprobs stay raw. */
  logitBias?: LogitBias;
}

/** OpenAI's logit_bias in engine terms: distinct token ids and what to add to each one's logit. */
export interface LogitBias {
  ids: Int32Array;
  values: Float32Array;
}

/** Largest |bias| accepted: ±100 already bans or forces a token (OpenAI's range). */
export const MAX_LOGIT_BIAS = 100;

export const DEFAULT_SAMPLING: SamplingParams = {
  maxNewTokens: 20,
  doSample: false,
  temperature: 1,
  topK: 0,
  topP: 1,
  typicalP: 1,
  minP: 0,
  repetitionPenalty: 1,
  presencePenalty: 0,
  frequencyPenalty: 0,
  stop: [],
  ignoreEos: false,
  topLogprobs: 0,
  promptLogprobs: false,
};

export const MAX_TOP_LOGPROBS = 20;

export function validateSampling(p: SamplingParams, vocabSize: number): void {
  const bad = (field: string, v: unknown, hint: string) => new ValidationError(`${field} must be ${hint}, got ${JSON.stringify(v)}`, field);
  if (!Number.isInteger(p.maxNewTokens) || p.maxNewTokens < 1) throw bad("max_new_tokens", p.maxNewTokens, "an integer ≥ 1");
  if (!(p.temperature >= 0) || !Number.isFinite(p.temperature)) throw bad("temperature", p.temperature, "a number ≥ 0");
  if (!Number.isInteger(p.topK) || p.topK < 0) throw bad("top_k", p.topK, "an integer ≥ 0");
  if (!(p.topP > 0 && p.topP <= 1)) throw bad("top_p", p.topP, "in (0, 1]");
  if (!(p.typicalP > 0 && p.typicalP <= 1)) throw bad("typical_p", p.typicalP, "in (0, 1]");
  if (!(p.minP >= 0 && p.minP <= 1)) throw bad("min_p", p.minP, "in [0, 1]");
  if (!(p.repetitionPenalty > 0) || !Number.isFinite(p.repetitionPenalty)) throw bad("repetition_penalty", p.repetitionPenalty, "a number > 0");
  if (!(Math.abs(p.presencePenalty) <= 2)) throw bad("presence_penalty", p.presencePenalty, "in [-2, 2]");
  if (!(Math.abs(p.frequencyPenalty) <= 2)) throw bad("frequency_penalty", p.frequencyPenalty, "in [-2, 2]");
  if (!Number.isInteger(p.topLogprobs) || p.topLogprobs < 0 || p.topLogprobs > MAX_TOP_LOGPROBS)
    throw bad("top_logprobs", p.topLogprobs, `an integer in [0, ${MAX_TOP_LOGPROBS}]`);
  if (p.stop.some((s) => typeof s !== "string" || s.length === 0)) throw bad("stop", p.stop, "a list of non-empty strings");
  if (p.logitBias) {
    const { ids, values } = p.logitBias;
    if (ids.length !== values.length) throw new ValidationError(`logit_bias has ${ids.length} token ids but ${values.length} values`, "logit_bias");
    const seen = new Set<number>();
    ids.forEach((id, i) => {
      if (!(id >= 0 && id < vocabSize)) throw new ValidationError(`logit_bias names token ${id}, outside this model's vocabulary [0, ${vocabSize})`, "logit_bias");
      if (seen.has(id)) throw new ValidationError(`logit_bias names token ${id} twice`, "logit_bias");
      seen.add(id);
      if (!(Math.abs(values[i]) <= MAX_LOGIT_BIAS)) throw new ValidationError(`logit_bias for token ${id} must be in [-${MAX_LOGIT_BIAS}, ${MAX_LOGIT_BIAS}], got ${values[i]}`, "logit_bias");
    });
  }
}

/** Tokens seen by a sequence, for repetition/presence/frequency penalties: id → times in the output. */
export class PenaltyState {
  private readonly counts = new Map<number, number>();
  private cache?: { ids: Int32Array; counts: Int32Array };

  constructor(prompt: readonly number[], usesPrompt: boolean) {
    if (usesPrompt) for (const t of prompt) this.counts.set(t, 0);
  }

  add(token: number): void {
    this.counts.set(token, (this.counts.get(token) ?? 0) + 1);
    this.cache = undefined;
  }

  arrays(): { ids: Int32Array; counts: Int32Array } {
    if (!this.cache) {
      const ids = new Int32Array(this.counts.size), counts = new Int32Array(this.counts.size);
      let i = 0;
      for (const [k, v] of this.counts) (ids[i] = k), (counts[i++] = v);
      this.cache = { ids, counts };
    }
    return this.cache;
  }
}

export function usesPenalties(p: SamplingParams): boolean {
  return p.repetitionPenalty !== 1 || p.presencePenalty !== 0 || p.frequencyPenalty !== 0;
}
