// Shared test helpers: the tiny fixture models, an engine over one of them with small, test-sized limits, a
// seeded random source and the max difference of two float arrays.
import { Engine, type EngineOptions, type GenerationEvent } from "../../engine/src/engine.js";
import { DEFAULT_SAMPLING, type SamplingParams } from "../../engine/src/sampling.js";
import { ensureTinyModels } from "../../scripts/tiny-models.js";

export const tinyModels = (): Record<string, string> => ensureTinyModels();

export const TEST_ENGINE_OPTIONS: EngineOptions = {
  kvBytes: 32 << 20,
  blockSize: 16,
  maxStepTokens: 512,
  maxOutRows: 64,
  maxBatchPrefillTokens: 256,
  maxWaitingTokens: 20,
  waitingServedRatio: 0,
  maxConcurrentRequests: 512,
};

export async function tinyEngine(name: string, opts: Partial<EngineOptions> = {}): Promise<Engine> {
  return Engine.create(tinyModels()[name], { ...TEST_ENGINE_OPTIONS, ...opts });
}

export function greedy(maxNewTokens: number, extra: Partial<SamplingParams> = {}): SamplingParams {
  return { ...DEFAULT_SAMPLING, maxNewTokens, ignoreEos: true, ...extra };
}

/** Runs a request to the end; returns the generated token ids per sequence index and the events. */
export async function collect(it: AsyncIterable<GenerationEvent>): Promise<{ ids: number[][]; events: GenerationEvent[] }> {
  const ids: number[][] = [];
  const events: GenerationEvent[] = [];
  for await (const e of it) {
    events.push(e);
    if (e.type === "token") (ids[e.index] ??= []).push(e.id);
  }
  return { ids, events };
}

/** Deterministic pseudo-random integers for test inputs. */
export function rng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n: number) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) / 4294967296) * n;
  };
}

/** The largest |a[i] − b[i]|; throws (failing the test) when the lengths differ. */
export function maxDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new Error(`maxDiff: lengths differ (${a.length} vs ${b.length})`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
