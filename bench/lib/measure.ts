// Measurements of our engine shared by the sections (decode throughput over pure decode steps, time to first
// token), the engine options they start from, and small statistics helpers. What to compare against belongs to
// the sections.
import type { Engine, EngineOptions, StepEvent } from "../../engine/src/engine.js";
import { DEFAULT_SAMPLING } from "../../engine/src/sampling.js";

/**
 * Engine options for a bench run: 16-token KV blocks, 512-token steps and prefill chunks, 64 logit rows and
 * requests, waiting requests joining at the next step (the LoRAX knobs off); a section passes what differs.
 */
export function benchEngineOptions(overrides: Partial<EngineOptions> & { kvBytes: number }): EngineOptions {
  return {
    blockSize: 16, maxStepTokens: 512, maxOutRows: 64, maxBatchPrefillTokens: 512, maxWaitingTokens: 20, waitingServedRatio: 0,
    maxConcurrentRequests: 64, ...overrides,
  };
}

export const median = (xs: number[]): number => {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** Nearest-rank percentile (p in [0, 100]). */
export const percentile = (xs: number[], p: number): number => {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
};

/** Distinct prompts of `len` tokens (ids in the ordinary vocab range, away from control and byte tokens). */
export function prompts(count: number, len: number, salt = 0): number[][] {
  return Array.from({ length: count }, (_, i) => Array.from({ length: len }, (_, j) => 300 + ((i * 7919 + j * 104729 + salt * 15485863) % 31000)));
}

/**
 * Aggregate decode tokens/s of one sequence per prompt (adapterKeys[i] for prompt i, null = base), greedy,
 * counted over the steps where all of them decode and nothing prefills: wall-clock between the first and last
 * such step (engine overhead included), and native step time alone.
 */
export async function engineDecode(
  engine: Engine,
  ps: number[][],
  newTokens: number,
  adapterKeys?: (string | null)[],
): Promise<{ wallTokS: number; tokS: number; steps: number }> {
  const n = ps.length;
  let tokens = 0, micros = 0, pure = 0, first = 0, last = 0;
  const onStep = (e: StepEvent) => {
    if (e.stats.prefillTokens === 0 && e.stats.decodeTokens === n) {
      tokens += e.tokens;
      micros += e.micros;
      last = performance.now();
      if (pure++ === 0) first = last;
    }
  };
  engine.on("step", onStep);
  try {
    const params = { ...DEFAULT_SAMPLING, maxNewTokens: newTokens, ignoreEos: true };
    await Promise.all(
      ps.map(async (prompt, i) => {
        for await (const _e of engine.generate({ prompt, params, adapterKey: adapterKeys?.[i] ?? null }));
      }),
    );
  } finally {
    engine.off("step", onStep);
  }
  return { wallTokS: pure > 1 ? (n * (pure - 1)) / ((last - first) / 1e3) : NaN, tokS: tokens / (micros / 1e6), steps: pure };
}

/** Greedy tokens and our top-2 log-probability gap at each step, all prompts batched together. */
export async function engineGreedy(engine: Engine, ps: number[][], newTokens: number): Promise<{ tokens: number[]; gaps: number[] }[]> {
  const params = { ...DEFAULT_SAMPLING, maxNewTokens: newTokens, ignoreEos: true, topLogprobs: 2 };
  return Promise.all(
    ps.map(async (prompt) => {
      const tokens: number[] = [], gaps: number[] = [];
      for await (const e of engine.generate({ prompt, params }))
        if (e.type === "token") {
          tokens.push(e.id);
          gaps.push(e.top && e.top.length > 1 ? e.top[0].logprob - e.top[1].logprob : Infinity);
        }
      return { tokens, gaps };
    }),
  );
}

/**
 * Time to first token of requests that arrive on a schedule (arrivals[i] seconds after the start), each its
 * own prompt and `newTokens` long; returns TTFT seconds per request and the whole run's wall time.
 */
export async function engineTtft(engine: Engine, ps: number[][], arrivals: number[], newTokens: number): Promise<{ ttft: number[]; wall: number }> {
  const t0 = performance.now();
  const params = { ...DEFAULT_SAMPLING, maxNewTokens: newTokens, ignoreEos: true };
  const ttft = await Promise.all(
    ps.map(async (prompt, i) => {
      await sleepUntil(t0 + arrivals[i] * 1e3);
      const start = performance.now();
      let first = NaN;
      for await (const e of engine.generate({ prompt, params })) if (e.type === "token" && Number.isNaN(first)) first = performance.now();
      return (first - start) / 1e3;
    }),
  );
  return { ttft, wall: (performance.now() - t0) / 1e3 };
}

export function sleepUntil(t: number): Promise<void> {
  const d = t - performance.now();
  return d > 0 ? new Promise((r) => setTimeout(r, d)) : Promise.resolve();
}
