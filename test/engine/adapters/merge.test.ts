// Tests per-request adapter merging against an independent float64 implementation written here from the TIES and
// DARE papers (with PEFT's weighting), hand-computed cases, edge cases, determinism, module union and validation.

import { describe, expect, it } from "vitest";
import {
  type MergeParams,
  dareKeepMask,
  dareSeed,
  magnitudePrune,
  mergeAdapters,
  mergeCacheKey,
  validateMergeParams,
  xoshiro128ss,
} from "../../../engine/src/adapters/merge.js";
import type { LoraModule, LoraTarget, LoraWeights } from "../../../engine/src/adapters/types.js";
import { ValidationError } from "../../../engine/src/errors.js";
import { values } from "./formats/writers.js";

interface Mod {
  layer: number;
  target: LoraTarget;
  scale?: number;
  a: number[];
  b: number[];
  rank?: number;
  dIn?: number;
  dOut?: number;
}

/** An adapter from plain arrays; rank 1 and dims from the lengths unless given. */
function adapter(mods: Mod[]): LoraWeights {
  const modules: LoraModule[] = mods.map((m) => {
    const rank = m.rank ?? 1;
    return {
      layer: m.layer,
      target: m.target,
      rank,
      scale: m.scale ?? 1,
      dIn: m.dIn ?? m.a.length / rank,
      dOut: m.dOut ?? m.b.length / rank,
      a: new Float32Array(m.a),
      b: new Float32Array(m.b),
    };
  });
  return { modules, maxRank: Math.max(...modules.map((m) => m.rank)), warnings: [], sizeBytes: 0 };
}

function rand(n: number, seed: number, scale = 1): number[] {
  return Array.from(values(n, seed * 7919), (v) => Math.fround(v * scale));
}

const OPTS = { maxIds: 8 };

// ---- independent float64 reference -------------------------------------------------------------------------------

const sgn = (v: number) => (v > 0 ? 1 : v < 0 ? -1 : 0);

/** TIES "trim": keep the top floor(density·n) by |x|, ties by lower index (sorting, not selecting). */
function refTrim(x: number[], density: number): number[] {
  if (density >= 1) return [...x];
  const k = Math.floor(density * x.length);
  const order = x.map((_, i) => i).sort((i, j) => Math.abs(x[j]) - Math.abs(x[i]) || i - j);
  const keep = new Set(order.slice(0, k));
  return x.map((v, i) => (keep.has(i) ? v : 0));
}

/** DARE: drop with probability 1 - density, rescale the survivors by 1/density. */
function refDare(x: number[], density: number, mask: Uint8Array): number[] {
  if (density >= 1) return [...x];
  return x.map((v, i) => (mask[i] ? v / density : 0));
}

/** TIES "elect" + "disjoint merge", with each task's weight multiplied into its values before the mean. */
function refElectMerge(tasks: number[][], weights: number[], method: "total" | "frequency"): number[] {
  return tasks[0].map((_, j) => {
    const vote = tasks.reduce((s, t) => s + (method === "total" ? t[j] : sgn(t[j])), 0);
    const gamma = vote >= 0 ? 1 : -1;
    const agree = tasks.map((t, i) => ({ v: t[j], w: weights[i] })).filter((e) => sgn(e.v) === gamma);
    return agree.reduce((s, e) => s + e.w * e.v, 0) / Math.max(agree.length, 1);
  });
}

function refMerge(adapters: LoraWeights[], ids: string[], p: MergeParams): Map<string, { a: number[]; b: number[] }> {
  const weights = p.weights ?? ids.map(() => 1);
  const key = mergeCacheKey(ids, p);
  const labels = new Set<string>();
  for (const ad of adapters) for (const m of ad.modules) labels.add(`${m.layer}:${m.target}`);
  const out = new Map<string, { a: number[]; b: number[] }>();
  for (const label of labels) {
    const holders = adapters.flatMap((ad, idx) => ad.modules.filter((m) => `${m.layer}:${m.target}` === label).map((m) => ({ m, idx })));
    const merged = { a: [] as number[], b: [] as number[] };
    for (const part of ["a", "b"] as const) {
      const tasks = holders.map(({ m, idx }) => {
        const x = Array.from(m[part]);
        if (p.mergeStrategy === "ties") return refTrim(x, p.density as number);
        if (p.mergeStrategy === "dare_linear" || p.mergeStrategy === "dare_ties") {
          return refDare(x, p.density as number, dareKeepMask(dareSeed(key, idx, m.layer, m.target, part), x.length, p.density as number));
        }
        return x;
      });
      const w = holders.map(({ m, idx }) => {
        const c = weights[idx] * m.scale;
        return (part === "b" ? sgn(c) : 1) * Math.sqrt(Math.abs(c));
      });
      merged[part] =
        p.mergeStrategy === "ties" || p.mergeStrategy === "dare_ties"
          ? refElectMerge(tasks, w, p.majoritySignMethod ?? "total")
          : tasks[0].map((_, j) => tasks.reduce((s, t, i) => s + w[i] * t[j], 0));
    }
    out.set(label, merged);
  }
  return out;
}

function expectMatchesReference(adapters: LoraWeights[], ids: string[], p: MergeParams): LoraWeights {
  const merged = mergeAdapters(adapters, p, { ...OPTS, ids });
  const ref = refMerge(adapters, ids, p);
  expect(merged.modules).toHaveLength(ref.size);
  for (const m of merged.modules) {
    const r = ref.get(`${m.layer}:${m.target}`);
    expect(r).toBeDefined();
    expect(m.scale).toBe(1);
    for (const part of ["a", "b"] as const) {
      const got = Array.from(m[part]);
      const want = r?.[part] ?? [];
      expect(got).toHaveLength(want.length);
      got.forEach((g, j) => expect(Math.abs(g - want[j])).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(want[j]))));
    }
  }
  return merged;
}

/** scale·B·A of a rank-r module, [dOut, dIn]. */
function delta(m: LoraModule): number[] {
  const out: number[] = [];
  for (let o = 0; o < m.dOut; o++) {
    for (let i = 0; i < m.dIn; i++) {
      let s = 0;
      for (let r = 0; r < m.rank; r++) s += m.b[o * m.rank + r] * m.a[r * m.dIn + i];
      out.push(m.scale * s);
    }
  }
  return out;
}

// ---- tests -------------------------------------------------------------------------------------------------------

const three = [
  adapter([
    { layer: 0, target: "q_proj", rank: 4, scale: 2, a: rand(4 * 24, 1), b: rand(16 * 4, 2) },
    { layer: 1, target: "down_proj", rank: 4, scale: 2, a: rand(4 * 32, 3), b: rand(24 * 4, 4) },
  ]),
  adapter([
    { layer: 0, target: "q_proj", rank: 4, scale: 0.5, a: rand(4 * 24, 5, 3), b: rand(16 * 4, 6) },
    { layer: -1, target: "lm_head", rank: 4, scale: 0.5, a: rand(4 * 24, 7), b: rand(40 * 4, 8) },
  ]),
  adapter([
    { layer: 0, target: "q_proj", rank: 4, scale: 4, a: rand(4 * 24, 9), b: rand(16 * 4, 10, 0.1) },
    { layer: 1, target: "down_proj", rank: 4, scale: 4, a: rand(4 * 32, 11), b: rand(24 * 4, 12) },
  ]),
];
const ids = ["sql", "chat", "math"];

describe("mergeAdapters against the float64 reference", () => {
  it.each<MergeParams>([
    { mergeStrategy: "linear" },
    { mergeStrategy: "linear", weights: [0.5, 2, -1] },
    { mergeStrategy: "ties", density: 0.3, weights: [1, 0.7, 0.4] },
    { mergeStrategy: "ties", density: 0.55, majoritySignMethod: "frequency" },
    { mergeStrategy: "ties", density: 1 },
    { mergeStrategy: "dare_linear", density: 0.4, weights: [0.3, 0.3, 0.4] },
    { mergeStrategy: "dare_linear", density: 0.9 },
    { mergeStrategy: "dare_ties", density: 0.5, weights: [2, 1, 1] },
    { mergeStrategy: "dare_ties", density: 0.35, majoritySignMethod: "frequency" },
  ])("%j", (p) => {
    expectMatchesReference(three, ids, p);
  });
});

describe("hand-computed cases", () => {
  it("linear: weights times sqrt(weight·scale) into A and sign·sqrt into B", () => {
    const x = adapter([{ layer: 0, target: "q_proj", a: [1, 2], b: [3, 4] }]);
    const y = adapter([{ layer: 0, target: "q_proj", a: [-1, 0.5], b: [2, -2] }]);
    const plain = mergeAdapters([x, y], { mergeStrategy: "linear" }, OPTS).modules[0];
    expect(Array.from(plain.a)).toEqual([0, 2.5]);
    expect(Array.from(plain.b)).toEqual([5, 2]);
    const weighted = mergeAdapters([x, y], { mergeStrategy: "linear", weights: [4, 1] }, OPTS).modules[0];
    expect(Array.from(weighted.a)).toEqual([1, 4.5]);
    expect(Array.from(weighted.b)).toEqual([8, 6]);
  });

  it("a single adapter merged with weight w keeps w·ΔW exactly, for any scale and sign of w", () => {
    const m = adapter([{ layer: 2, target: "v_proj", rank: 2, scale: 2, a: rand(2 * 6, 20), b: rand(4 * 2, 21) }]);
    for (const w of [1, 3, 0.25, -1.5]) {
      const merged = mergeAdapters([m], { mergeStrategy: "linear", weights: [w] }, OPTS).modules[0];
      const want = delta(m.modules[0]).map((v) => w * v);
      delta(merged).forEach((v, i) => expect(v).toBeCloseTo(want[i], 5));
    }
  });

  it("ties: trims to the top half, elects by total, averages the agreeing entries", () => {
    const a1 = [0.9, -0.1, 0.5, -0.6];
    const a2 = [-0.8, 0.2, 0.4, 0.1];
    const a3 = [0.3, -0.7, -0.2, 0.05];
    const ads = [a1, a2, a3].map((a) => adapter([{ layer: 0, target: "k_proj", a, b: [1, 1, 1, 1], dIn: 4, dOut: 4 }]));
    const merged = mergeAdapters(ads, { mergeStrategy: "ties", density: 0.5 }, OPTS).modules[0];
    // trimmed: [0.9,0,0,-0.6] [-0.8,0,0.4,0] [0.3,-0.7,0,0]; votes +0.4, -0.7, +0.4, -0.6
    expect(Array.from(merged.a).map((v) => Math.round(v * 1e6) / 1e6)).toEqual([0.6, -0.7, 0.4, -0.6]);
  });

  it("ties: total and frequency elect different signs when one large value faces two small ones", () => {
    const ads = [[0.9], [-0.2], [-0.3]].map((a) => adapter([{ layer: 0, target: "o_proj", a, b: [1] }]));
    const total = mergeAdapters(ads, { mergeStrategy: "ties", density: 1, majoritySignMethod: "total" }, OPTS).modules[0];
    const freq = mergeAdapters(ads, { mergeStrategy: "ties", density: 1, majoritySignMethod: "frequency" }, OPTS).modules[0];
    expect(total.a[0]).toBeCloseTo(0.9, 6);
    expect(freq.a[0]).toBeCloseTo(-0.25, 6);
  });

  it("ties: equal magnitudes keep the lower index; a tied vote elects +", () => {
    expect(Array.from(magnitudePrune(new Float32Array([0.5, -0.5, 0.5, 0.1]), 0.5))).toEqual([0.5, -0.5, 0, 0]);
    expect(Array.from(magnitudePrune(new Float32Array([0.1, 0.5, 0.5, 0.5]), 0.5))).toEqual([0, 0.5, 0.5, 0]);
    expect(Array.from(magnitudePrune(new Float32Array([3, 1, 2]), 0.3))).toEqual([0, 0, 0]);
    const third = Math.fround(0.3);
    expect(Array.from(magnitudePrune(new Float32Array([third, -third, third, 0.1]), 0.5))).toEqual([third, -third, 0, 0]);
    const next = (v: number, ulps: number) => new Float32Array(new Uint32Array([new Uint32Array(new Float32Array([v]).buffer)[0] + ulps]).buffer)[0];
    const close = [next(third, 0), next(third, 1), next(third, 2), next(third, 3)];
    expect(Array.from(magnitudePrune(new Float32Array(close), 0.5))).toEqual([0, 0, close[2], close[3]]);
    const ads = [[0.5], [-0.5]].map((a) => adapter([{ layer: 0, target: "up_proj", a, b: [1] }]));
    expect(mergeAdapters(ads, { mergeStrategy: "ties", density: 1 }, OPTS).modules[0].a[0]).toBeCloseTo(0.5, 6);
  });

  it("dare_linear with one adapter: every entry is dropped or rescaled by 1/density, at about the density rate", () => {
    const x = rand(4096, 30);
    const one = adapter([{ layer: 0, target: "gate_proj", a: x, b: [1] }]);
    const merged = mergeAdapters([one], { mergeStrategy: "dare_linear", density: 0.25 }, OPTS).modules[0];
    let kept = 0;
    merged.a.forEach((v, i) => {
      if (v === 0) return;
      kept++;
      expect(v).toBeCloseTo(x[i] / 0.25, 5);
    });
    expect(kept / x.length).toBeGreaterThan(0.22);
    expect(kept / x.length).toBeLessThan(0.28);
  });
});

describe("edge cases", () => {
  it("density 1: dare_linear equals linear and dare_ties equals ties, bit for bit", () => {
    const lin = mergeAdapters(three, { mergeStrategy: "linear", weights: [1, 2, 3] }, OPTS);
    const dl = mergeAdapters(three, { mergeStrategy: "dare_linear", density: 1, weights: [1, 2, 3] }, OPTS);
    const ties = mergeAdapters(three, { mergeStrategy: "ties", density: 1 }, OPTS);
    const dt = mergeAdapters(three, { mergeStrategy: "dare_ties", density: 1 }, OPTS);
    lin.modules.forEach((m, i) => expect(dl.modules[i].a).toEqual(m.a));
    ties.modules.forEach((m, i) => expect(dt.modules[i].b).toEqual(m.b));
  });

  it("a single adapter: ties at density 1 equals linear", () => {
    const solo = [three[0]];
    const ties = mergeAdapters(solo, { mergeStrategy: "ties", density: 1, weights: [2] }, OPTS);
    const lin = mergeAdapters(solo, { mergeStrategy: "linear", weights: [2] }, OPTS);
    ties.modules.forEach((m, i) => {
      m.a.forEach((v, j) => expect(v).toBeCloseTo(lin.modules[i].a[j], 6));
      m.b.forEach((v, j) => expect(v).toBeCloseTo(lin.modules[i].b[j], 6));
    });
  });

  it("zero weights give zero tensors; a zero-weight adapter contributes nothing to linear", () => {
    for (const mergeStrategy of ["linear", "ties", "dare_linear", "dare_ties"] as const) {
      const zero = mergeAdapters(three, { mergeStrategy, density: 0.5, weights: [0, 0, 0] }, OPTS);
      for (const m of zero.modules) expect(m.b.every((v) => v === 0)).toBe(true);
    }
    const withZero = mergeAdapters(three, { mergeStrategy: "linear", weights: [1, 0, 1] }, { ...OPTS, ids });
    const without = mergeAdapters([three[0], three[2]], { mergeStrategy: "linear" }, OPTS);
    expect(withZero.modules.find((m) => m.target === "q_proj")?.a).toEqual(without.modules.find((m) => m.target === "q_proj")?.a);
  });

  it("modules: the union, each merged over the adapters that have it, with a warning", () => {
    const merged = mergeAdapters(three, { mergeStrategy: "linear", weights: [1, 4, 1] }, { ...OPTS, ids });
    expect(merged.modules.map((m) => `${m.layer}:${m.target}`)).toEqual(["0:q_proj", "1:down_proj", "-1:lm_head"]);
    const head = merged.modules[2];
    const src = three[1].modules[1];
    head.a.forEach((v, i) => expect(v).toBeCloseTo(Math.sqrt(4 * 0.5) * src.a[i], 6));
    expect(merged.warnings).toEqual([
      "2 of 3 modules are present in only some of the merged adapters; each was merged over the adapters that have it",
    ]);
    expect(merged.maxRank).toBe(4);
    expect(merged.sizeBytes).toBe(4 * merged.modules.reduce((n, m) => n + m.a.length + m.b.length, 0));
  });
});

describe("determinism", () => {
  it("the same request twice yields identical tensors; other parameters draw differently", () => {
    const p: MergeParams = { mergeStrategy: "dare_ties", density: 0.5, weights: [1, 1, 1] };
    const x = mergeAdapters(three, p, { ...OPTS, ids });
    const y = mergeAdapters(three, p, { ...OPTS, ids });
    x.modules.forEach((m, i) => {
      expect(Buffer.from(m.a.buffer).equals(Buffer.from(y.modules[i].a.buffer))).toBe(true);
      expect(Buffer.from(m.b.buffer).equals(Buffer.from(y.modules[i].b.buffer))).toBe(true);
    });
    const other = mergeAdapters(three, { ...p, density: 0.6 }, { ...OPTS, ids });
    expect(other.modules[0].a).not.toEqual(x.modules[0].a);
    const renamed = mergeAdapters(three, p, { ...OPTS, ids: ["a", "b", "c"] });
    expect(renamed.modules[0].a).not.toEqual(x.modules[0].a);
  });

  it("xoshiro128** matches the reference outputs; masks keep the density's share, stable and independent per stream", () => {
    const next = xoshiro128ss(new Uint32Array([1, 2, 3, 4]));
    expect([next(), next(), next(), next(), next()]).toEqual([11520, 0, 5927040, 70819200, 2031721883]);
    for (const density of [0.1, 0.5, 0.9]) {
      const rate = dareKeepMask(`rate-${density}`, 200_000, density).reduce((n, v) => n + v, 0) / 200_000;
      expect(Math.abs(rate - density)).toBeLessThan(0.005);
    }
    expect(dareKeepMask("any", 1000, 1).every((v) => v === 1)).toBe(true);
    const m1 = dareKeepMask("k|0|0|q_proj|a", 1000, 0.5);
    expect(dareKeepMask("k|0|0|q_proj|a", 1000, 0.5)).toEqual(m1);
    const m2 = dareKeepMask("k|1|0|q_proj|a", 1000, 0.5);
    const same = m1.reduce((n, v, i) => n + (v === m2[i] ? 1 : 0), 0);
    expect(same).toBeGreaterThan(400);
    expect(same).toBeLessThan(600);
  });
});

describe("mergeCacheKey", () => {
  it("fills defaults and drops parameters the strategy ignores", () => {
    expect(mergeCacheKey(["a", "b"], { mergeStrategy: "linear" })).toBe(mergeCacheKey(["a", "b"], { mergeStrategy: "linear", weights: [1, 1], density: 0.3 }));
    expect(mergeCacheKey(["a"], { mergeStrategy: "ties", density: 0.5 })).toBe(
      mergeCacheKey(["a"], { mergeStrategy: "ties", density: 0.5, majoritySignMethod: "total" }),
    );
    expect(mergeCacheKey(["a"], { mergeStrategy: "dare_linear", density: 0.5, majoritySignMethod: "frequency" })).toBe(
      mergeCacheKey(["a"], { mergeStrategy: "dare_linear", density: 0.5 }),
    );
    expect(mergeCacheKey(["a", "b"], { mergeStrategy: "linear" })).toBe('merge:["linear",["a","b"],[1,1],1,null]');
  });

  it("differs whenever the result may differ", () => {
    const keys = new Set(
      [
        mergeCacheKey(["a", "b"], { mergeStrategy: "linear" }),
        mergeCacheKey(["b", "a"], { mergeStrategy: "linear" }),
        mergeCacheKey(["a", "b"], { mergeStrategy: "linear", weights: [1, 2] }),
        mergeCacheKey(["a", "b"], { mergeStrategy: "ties", density: 0.5 }),
        mergeCacheKey(["a", "b"], { mergeStrategy: "ties", density: 0.6 }),
        mergeCacheKey(["a", "b"], { mergeStrategy: "ties", density: 0.5, majoritySignMethod: "frequency" }),
        mergeCacheKey(["a", "b"], { mergeStrategy: "dare_ties", density: 0.5 }),
      ],
    );
    expect(keys.size).toBe(7);
  });
});

describe("validation: 400s that name the bad value", () => {
  const bad = (f: () => unknown, message: RegExp, param: string) => {
    let caught: unknown;
    try {
      f();
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ValidationError);
    expect((caught as ValidationError).message).toMatch(message);
    expect((caught as ValidationError).param).toBe(param);
  };

  it("ids: none, or more than the server allows", () => {
    bad(() => mergeAdapters([], { mergeStrategy: "linear" }, OPTS), /merged_adapters\.ids is empty/, "merged_adapters.ids");
    bad(
      () => validateMergeParams(["a", "b", "c"], { mergeStrategy: "linear" }, 2),
      /merged_adapters\.ids has 3 ids; at most 2 adapters may be merged in one request/,
      "merged_adapters.ids",
    );
    bad(() => mergeAdapters(three, { mergeStrategy: "linear" }, { maxIds: 2 }), /has 3 ids; at most 2/, "merged_adapters.ids");
  });

  it("weights: one per id, finite", () => {
    bad(
      () => mergeAdapters(three, { mergeStrategy: "linear", weights: [1, 2] }, OPTS),
      /merged_adapters\.weights has 2 values for 3 ids/,
      "merged_adapters.weights",
    );
    bad(
      () => mergeAdapters(three, { mergeStrategy: "linear", weights: [1, Number.NaN, 1] }, OPTS),
      /merged_adapters\.weights\[1\] is NaN; weights must be finite numbers/,
      "merged_adapters.weights",
    );
  });

  it("strategy, density and majority_sign_method", () => {
    bad(
      () => validateMergeParams(["a"], { mergeStrategy: "svd" as never }, 4),
      /merged_adapters\.merge_strategy "svd" is not one of linear, ties, dare_linear, dare_ties/,
      "merged_adapters.merge_strategy",
    );
    for (const mergeStrategy of ["ties", "dare_linear", "dare_ties"] as const) {
      bad(
        () => validateMergeParams(["a"], { mergeStrategy }, 4),
        new RegExp(`merged_adapters\\.density is required for merge_strategy "${mergeStrategy}"`),
        "merged_adapters.density",
      );
    }
    for (const density of [0, -0.1, 1.5, Number.NaN]) {
      bad(
        () => validateMergeParams(["a"], { mergeStrategy: "ties", density }, 4),
        new RegExp(`merged_adapters\\.density ${density} is outside \\(0, 1\\]`),
        "merged_adapters.density",
      );
    }
    bad(
      () => validateMergeParams(["a"], { mergeStrategy: "dare_ties", density: 0.5, majoritySignMethod: "median" as never }, 4),
      /merged_adapters\.majority_sign_method "median" is not one of total, frequency/,
      "merged_adapters.majority_sign_method",
    );
    expect(validateMergeParams(["a"], { mergeStrategy: "linear", density: 0 }, 4).density).toBe(1);
  });

  it("ranks: adapters of different rank are refused, naming both", () => {
    const r8 = adapter([{ layer: 0, target: "q_proj", rank: 8, a: rand(8 * 4, 1), b: rand(4 * 8, 2) }]);
    const r16 = adapter([{ layer: 0, target: "q_proj", rank: 16, a: rand(16 * 4, 3), b: rand(4 * 16, 4) }]);
    bad(
      () => mergeAdapters([r8, r16], { mergeStrategy: "linear" }, { maxIds: 4, ids: ["sql", "chat"] }),
      /cannot merge adapters of different rank: "sql" has rank 8, "chat" has rank 16 \(at layers\.0\.q_proj\)/,
      "merged_adapters.ids",
    );
  });
});
