// Per-request merging of LoRA adapters (linear, ties, dare_linear, dare_ties), its validation and its cache key.
// Pure computation on LoraWeights: no fetching, no caching (the registry keys its cache with mergeCacheKey), no I/O.
//
// Semantics follow PEFT's add_weighted_adapter, which LoRAX's merges also follow, applied to A and B separately:
// - Weights and scales: for adapter i with request weight w_i and LoRA scale s_i (alpha/r, or alpha/sqrt(r) with
//   rsLoRA), c_i = w_i·s_i is folded into the factors, sqrt(|c_i|) into A_i and sign(c_i)·sqrt(|c_i|) into B_i, so
//   B_i·A_i carries exactly c_i·ΔW_i (PEFT uses sqrt(w_i·s_i) on both, which is the same for c_i ≥ 0; the sign on
//   B extends it to negative weights). Adapters with different alpha therefore merge correctly; the merged module
//   has scale 1. LoRAX instead merges raw factors and keeps the first adapter's scale.
// - The weighted factor is the "task tensor"; it is multiplied in after pruning and after the sign election, which
//   both look at the raw factors, as PEFT does.
// - ties: per tensor keep the floor(density·n) entries of largest |x| (ties in magnitude broken by the lower flat
//   index), elect a sign per element (total: sign of the sum of the pruned values; frequency: sign of the sum of
//   their signs; zero counts as +), then average the weighted entries whose sign agrees: the divisor is the number
//   of agreeing adapters (at least 1), as in PEFT and LoRAX. mergekit divides by the sum of their weights instead.
// - dare_*: keep each entry with probability density and rescale the kept ones by 1/density, then sum (dare_linear)
//   or elect and average as ties does (dare_ties). density ≥ 1 leaves tensors untouched, as in PEFT.
// - The random draws come from xoshiro128** seeded by SHA-256 of the cache key, the adapter's position and the
//   tensor, so a request repeated with the same parameters yields bit-identical tensors.
// - Sums run in float64; the merged factors are stored as float32.
// - Modules: the union over the adapters; a module present in only some merges over those that have them.

import { createHash } from "node:crypto";
import { ValidationError } from "../errors.js";
import { LORA_TARGETS, type LoraModule, type LoraTarget, type LoraWeights } from "./types.js";

export const MERGE_STRATEGIES = ["linear", "ties", "dare_linear", "dare_ties"] as const;
export type MergeStrategy = (typeof MERGE_STRATEGIES)[number];
export const MAJORITY_SIGN_METHODS = ["total", "frequency"] as const;
export type MajoritySignMethod = (typeof MAJORITY_SIGN_METHODS)[number];

export interface MergeParams {
  /** One per id; default 1 each. */
  weights?: readonly number[];
  mergeStrategy: MergeStrategy;
  /** Fraction of each tensor kept, in (0, 1]; required by ties, dare_linear and dare_ties, ignored by linear. */
  density?: number;
  /** Sign election of ties and dare_ties; default "total"; ignored by the other strategies. */
  majoritySignMethod?: MajoritySignMethod;
}

export interface MergeOptions {
  /** The most adapters one request may merge. */
  maxIds: number;
  /** The adapter ids, in the order of `adapters`: named in messages and part of the random seed. */
  ids?: readonly string[];
}

/** Merge parameters with defaults filled and values checked. */
export interface ResolvedMerge {
  strategy: MergeStrategy;
  weights: number[];
  /** 1 for linear. */
  density: number;
  /** null unless the strategy elects signs. */
  majoritySignMethod: MajoritySignMethod | null;
}

const SPARSIFYING: readonly MergeStrategy[] = ["ties", "dare_linear", "dare_ties"];
const ELECTING: readonly MergeStrategy[] = ["ties", "dare_ties"];

/** Checks the request's merge parameters (all but the adapters' ranks) and fills defaults. */
export function resolveMergeParams(ids: readonly string[], params: MergeParams): ResolvedMerge {
  if (ids.length === 0) throw new ValidationError("merged_adapters.ids is empty; name at least one adapter to merge", "merged_adapters.ids");
  const strategy = params.mergeStrategy as string;
  if (!(MERGE_STRATEGIES as readonly string[]).includes(strategy)) {
    throw new ValidationError(
      `merged_adapters.merge_strategy ${JSON.stringify(strategy)} is not one of ${MERGE_STRATEGIES.join(", ")}`,
      "merged_adapters.merge_strategy",
    );
  }
  const weights = params.weights === undefined ? ids.map(() => 1) : [...params.weights];
  if (weights.length !== ids.length) {
    throw new ValidationError(
      `merged_adapters.weights has ${weights.length} values for ${ids.length} ids; give one weight per id (or none for 1 each)`,
      "merged_adapters.weights",
    );
  }
  weights.forEach((w, i) => {
    if (typeof w !== "number" || !Number.isFinite(w)) {
      throw new ValidationError(`merged_adapters.weights[${i}] is ${String(w)}; weights must be finite numbers`, "merged_adapters.weights");
    }
  });
  let density = 1;
  if (SPARSIFYING.includes(strategy as MergeStrategy)) {
    if (params.density === undefined) {
      throw new ValidationError(
        `merged_adapters.density is required for merge_strategy "${strategy}": the fraction of each tensor to keep, in (0, 1]`,
        "merged_adapters.density",
      );
    }
    if (typeof params.density !== "number" || !(params.density > 0 && params.density <= 1)) {
      throw new ValidationError(
        `merged_adapters.density ${String(params.density)} is outside (0, 1]; it is the fraction of each tensor to keep`,
        "merged_adapters.density",
      );
    }
    density = params.density;
  }
  let majoritySignMethod: MajoritySignMethod | null = null;
  if (ELECTING.includes(strategy as MergeStrategy)) {
    const m = (params.majoritySignMethod ?? "total") as string;
    if (!(MAJORITY_SIGN_METHODS as readonly string[]).includes(m)) {
      throw new ValidationError(
        `merged_adapters.majority_sign_method ${JSON.stringify(m)} is not one of ${MAJORITY_SIGN_METHODS.join(", ")}`,
        "merged_adapters.majority_sign_method",
      );
    }
    majoritySignMethod = m as MajoritySignMethod;
  }
  return { strategy: strategy as MergeStrategy, weights, density, majoritySignMethod };
}

/** resolveMergeParams plus the server's limit on the number of ids. */
export function validateMergeParams(ids: readonly string[], params: MergeParams, maxIds: number): ResolvedMerge {
  if (ids.length > maxIds) {
    throw new ValidationError(
      `merged_adapters.ids has ${ids.length} ids; at most ${maxIds} adapters may be merged in one request`,
      "merged_adapters.ids",
    );
  }
  return resolveMergeParams(ids, params);
}

/** The key a merged adapter is cached under: every parameter that changes the result, defaults filled in. */
export function mergeCacheKey(ids: readonly string[], params: MergeParams): string {
  const r = resolveMergeParams(ids, params);
  return `merge:${JSON.stringify([r.strategy, ids, r.weights, r.density, r.majoritySignMethod])}`;
}

/** xoshiro128** over a 4-word state (updated in place): the next 32-bit output on each call. */
export function xoshiro128ss(s: Uint32Array): () => number {
  return () => {
    const x = Math.imul(s[1], 5);
    const result = Math.imul((x << 7) | (x >>> 25), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = (s[3] << 11) | (s[3] >>> 21);
    return result;
  };
}

/** The first 16 bytes of SHA-256(`seed`) as a xoshiro128** state (never all zero). */
function seedState(seed: string): Uint32Array {
  const h = createHash("sha256").update(seed).digest();
  const state = new Uint32Array([h.readUInt32LE(0), h.readUInt32LE(4), h.readUInt32LE(8), h.readUInt32LE(12)]);
  if ((state[0] | state[1] | state[2] | state[3]) === 0) state[0] = 1;
  return state;
}

/** The seed of one tensor's DARE draws. */
export function dareSeed(cacheKey: string, adapterIndex: number, layer: number, target: LoraTarget, part: "a" | "b"): string {
  return `${cacheKey}|${adapterIndex}|${layer}|${target}|${part}`;
}

/** DARE's keep mask: 1 where a uniform draw u = next()/2^32 falls below density, i.e. next() < ceil(density·2^32). */
export function dareKeepMask(seed: string, n: number, density: number): Uint8Array {
  const next = xoshiro128ss(seedState(seed));
  const limit = Math.ceil(density * 4294967296);
  const mask = new Uint8Array(n);
  for (let i = 0; i < n; i++) mask[i] = next() < limit ? 1 : 0;
  return mask;
}

/** Keeps the floor(density·n) entries of largest magnitude (lower index first among equals); the rest become 0. */
export function magnitudePrune(x: Float32Array, density: number): Float32Array {
  if (density >= 1) return x;
  const n = x.length;
  const k = Math.floor(density * n);
  const out = new Float32Array(n);
  if (k === 0) return out;
  // |x| as the bits of a float32 with the sign cleared: ordered like the magnitudes themselves.
  const bits = new Uint32Array(x.buffer, x.byteOffset, n);
  const threshold = kthLargestMagnitudeBits(bits, k);
  let above = 0;
  for (let i = 0; i < n; i++) if ((bits[i] & 0x7fffffff) > threshold) above++;
  let atThreshold = k - above;
  for (let i = 0; i < n; i++) {
    const m = bits[i] & 0x7fffffff;
    if (m > threshold || (m === threshold && atThreshold-- > 0)) out[i] = x[i];
  }
  return out;
}

/** The k-th largest of the sign-cleared values of `bits` (1-based), by a two-pass radix select on 16-bit halves. */
function kthLargestMagnitudeBits(bits: Uint32Array, k: number): number {
  const hist = new Uint32Array(65536);
  for (let i = 0; i < bits.length; i++) hist[(bits[i] & 0x7fffffff) >>> 16]++;
  let rest = k;
  let high = 65535;
  while (hist[high] < rest) rest -= hist[high--];
  hist.fill(0);
  for (let i = 0; i < bits.length; i++) {
    const m = bits[i] & 0x7fffffff;
    if (m >>> 16 === high) hist[m & 0xffff]++;
  }
  let low = 65535;
  while (hist[low] < rest) rest -= hist[low--];
  return ((high << 16) | low) >>> 0;
}

function dareDrop(x: Float32Array, density: number, seed: string): Float32Array {
  if (density >= 1) return x;
  const mask = dareKeepMask(seed, x.length, density);
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) if (mask[i] === 1) out[i] = x[i] / density;
  return out;
}

const sign = (v: number): number => (v > 0 ? 1 : v < 0 ? -1 : 0);

/** Weighted sum of equally long tensors. */
function weightedSum(tensors: Float32Array[], weights: number[]): Float32Array {
  const out = new Float64Array(tensors[0].length);
  for (let i = 0; i < tensors.length; i++) {
    const t = tensors[i];
    const w = weights[i];
    for (let j = 0; j < t.length; j++) out[j] += w * t[j];
  }
  return Float32Array.from(out);
}

/** TIES's sign election (on the unweighted values) and disjoint mean of the weighted values that agree with it. */
function electAndMerge(tensors: Float32Array[], weights: number[], method: MajoritySignMethod): Float32Array {
  const n = tensors[0].length;
  const byTotal = method === "total";
  const out = new Float32Array(n);
  for (let j = 0; j < n; j++) {
    let vote = 0;
    for (let i = 0; i < tensors.length; i++) vote += byTotal ? tensors[i][j] : sign(tensors[i][j]);
    const majority = vote >= 0 ? 1 : -1;
    let sum = 0;
    let count = 0;
    for (let i = 0; i < tensors.length; i++) {
      if (sign(tensors[i][j]) === majority) {
        sum += weights[i] * tensors[i][j];
        count++;
      }
    }
    out[j] = sum / Math.max(count, 1);
  }
  return out;
}

function moduleLabel(m: { layer: number; target: LoraTarget }): string {
  return m.layer < 0 ? m.target : `layers.${m.layer}.${m.target}`;
}

/** Merges `adapters` (validated against the same base) into one adapter with the given strategy. */
export function mergeAdapters(adapters: LoraWeights[], params: MergeParams, opts: MergeOptions): LoraWeights {
  const ids = opts.ids ?? adapters.map((_, i) => `#${i}`);
  if (ids.length !== adapters.length) throw new Error(`mergeAdapters: ${ids.length} ids for ${adapters.length} adapters`);
  const r = validateMergeParams(ids, params, opts.maxIds);
  const key = mergeCacheKey(ids, params);

  const byModule = new Map<string, Array<{ index: number; module: LoraModule }>>();
  adapters.forEach((adapter, index) => {
    for (const module of adapter.modules) {
      const k = moduleLabel(module);
      const list = byModule.get(k) ?? [];
      list.push({ index, module });
      byModule.set(k, list);
    }
  });

  const modules: LoraModule[] = [];
  let partial = 0;
  for (const [label, holders] of byModule) {
    const first = holders[0].module;
    for (const { index, module } of holders) {
      if (module.rank !== first.rank) {
        throw new ValidationError(
          `merged_adapters: cannot merge adapters of different rank: "${ids[holders[0].index]}" has rank ${first.rank}, ` +
            `"${ids[index]}" has rank ${module.rank} (at ${label}); only adapters trained with the same r can be merged`,
          "merged_adapters.ids",
        );
      }
      if (module.dIn !== first.dIn || module.dOut !== first.dOut) {
        throw new Error(`mergeAdapters: ${label} is [${module.dOut}x${module.dIn}] in "${ids[index]}" but [${first.dOut}x${first.dIn}] in "${ids[holders[0].index]}"`);
      }
    }
    if (holders.length < adapters.length) partial++;
    const factor = (part: "a" | "b"): Float32Array => {
      const pruned = holders.map(({ index, module }) => {
        const x = module[part];
        if (r.strategy === "ties") return magnitudePrune(x, r.density);
        if (r.strategy === "dare_linear" || r.strategy === "dare_ties") return dareDrop(x, r.density, dareSeed(key, index, module.layer, module.target, part));
        return x;
      });
      const weights = holders.map(({ index, module }) => {
        const c = r.weights[index] * module.scale;
        const root = Math.sqrt(Math.abs(c));
        return part === "a" ? root : sign(c) * root;
      });
      return r.majoritySignMethod === null ? weightedSum(pruned, weights) : electAndMerge(pruned, weights, r.majoritySignMethod);
    };
    modules.push({ layer: first.layer, target: first.target, rank: first.rank, scale: 1, dIn: first.dIn, dOut: first.dOut, a: factor("a"), b: factor("b") });
  }

  modules.sort((x, y) => {
    const lx = x.layer < 0 ? Infinity : x.layer;
    const ly = y.layer < 0 ? Infinity : y.layer;
    return lx - ly || LORA_TARGETS.indexOf(x.target) - LORA_TARGETS.indexOf(y.target);
  });
  const warnings =
    partial > 0
      ? [`${partial} of ${modules.length} modules are present in only some of the merged adapters; each was merged over the adapters that have it`]
      : [];
  return {
    modules,
    maxRank: modules.reduce((m, x) => Math.max(m, x.rank), 0),
    warnings,
    sizeBytes: 4 * modules.reduce((n, x) => n + x.a.length + x.b.length, 0),
  };
}
