// Every fast CPU kernel against its plain reference, over random shapes including sizes that are not
// multiples of the SIMD width, and every weight dtype.
import { describe, expect, it } from "vitest";

import { encodeTensor, type DType } from "../../engine/src/model/safetensors.js";
import { native, type KernelDevice } from "../../engine/src/native.js";
import { maxDiff, rng } from "../helpers/tiny.js";

const k = native();
const R = rng(7);
const randn = (n: number, s = 1) => Float32Array.from({ length: n }, () => (R(2) - 1) * s);
const both = (name: string, args: Record<string, unknown>) => [k.kernel(name, true, args), k.kernel(name, false, args)];

describe("fast kernels match the reference", () => {
  it("runs the AVX2 path on this machine", () => {
    expect(k.fastKernels).toBe(true);
  });

  const shapes: [number, number, number][] = [
    [1, 1, 1], [1, 7, 5], [1, 8, 16], [1, 300, 33], [2, 9, 17], [3, 31, 4], [4, 257, 19], [5, 64, 3],
    [7, 1023, 40], [17, 256, 48], [33, 520, 21], [64, 96, 70], [40, 5, 9], [37, 1030, 27],
  ];
  for (const dtype of ["F32", "BF16", "F16"] as DType[]) {
    it.each(shapes)(`linear ${dtype} T=%i K=%i N=%i, with bias and accumulate`, (T, K, N) => {
      const w = encodeTensor(randn(N * K, 0.5), dtype);
      const code = { F32: 0, F16: 1, BF16: 2 }[dtype];
      const args = { x: randn(T * K), T, K, N, w: new Uint8Array(w), dtype: code, bias: randn(N) };
      const [a, b] = both("linear", args);
      expect(maxDiff(a, b)).toBeLessThan(1e-4 * Math.sqrt(K));
      const y = randn(T * N);
      const [c, d] = both("linear", { ...args, bias: undefined, y });
      expect(maxDiff(c, d)).toBeLessThan(1e-4 * Math.sqrt(K));
      // accumulate really adds to y
      const [e] = both("linear", { ...args, bias: undefined });
      expect(maxDiff(c, Float32Array.from(e, (v: number, i) => v + y[i]))).toBeLessThan(1e-5 * Math.sqrt(K));
    });
  }

  it("linear is batch invariant: a row's result does not depend on T", () => {
    const K = 333, N = 45;
    const w = new Uint8Array(encodeTensor(randn(N * K), "BF16"));
    const x = randn(40 * K);
    const all = k.kernel("linear", false, { x, T: 40, K, N, w, dtype: 2 }) as Float32Array;
    for (const [t0, T] of [[0, 1], [5, 2], [7, 3], [11, 4], [20, 13]]) {
      const part = k.kernel("linear", false, { x: x.slice(t0 * K, (t0 + T) * K), T, K, N, w, dtype: 2 }) as Float32Array;
      expect(Array.from(part)).toEqual(Array.from(all.slice(t0 * N, (t0 + T) * N)));
    }
  });

  it("linear through the AVX-512 builds (VL; VL with BF16 dot products) equals the AVX2 build bit for bit, every dtype and path", (ctx) => {
    if (!k.cpuBackend.startsWith("cpu-avx512")) {
      console.log(`skipped: this CPU has no AVX-512F/VL (fast backend is ${k.cpuBackend}), so there is one build only`);
      ctx.skip();
    }
    // "cpu" is the widest build this CPU runs: with AVX-512 BF16, BF16 weights go through vdpbf16ps.
    const builds: KernelDevice[] = k.cpuBackend === "cpu-avx512bf16" ? ["cpu", "cpu-avx512"] : ["cpu"];
    // T 1 (GEMV), 2-3 (direct), 4-32 (the AVX-512 build reads weights directly in token groups, the AVX2 build
    // converts blocks), 33+ (both convert blocks); K across the 8- and 16-lane tails, below one lane (K = 5) and
    // past a padded 1024; N across the 8- and 4-row tiles.
    for (const [T, K, N] of [[1, 1024, 67], [1, 37, 9], [2, 300, 33], [3, 520, 21], [4, 64, 13], [5, 200, 19], [8, 1000, 24], [17, 777, 45], [32, 300, 41], [33, 96, 11], [64, 96, 70], [40, 5, 9], [37, 1030, 27], [7, 24, 10], [6, 80, 130]])
      for (const dtype of [0, 1, 2]) {
        const w = new Uint8Array(encodeTensor(randn(N * K, 0.5), (["F32", "F16", "BF16"] as DType[])[dtype]));
        const args = { x: randn(T * K), T, K, N, w, dtype, bias: randn(N) };
        const avx2 = k.kernel("linear", "cpu-avx2", args) as Float32Array;
        for (const b of builds)
          expect(Array.from(k.kernel("linear", b, args) as Float32Array), `${b} T=${T} K=${K} N=${N} dtype ${dtype}`).toEqual(Array.from(avx2));
      }
  });

  it("BF16 weights multiply activations rounded to bf16: ties to even, subnormals to zero, ±Inf kept, the same in every build", () => {
    // K = 44: two whole chunks of 16, then the scalar tail. Row 0 picks x[5] (in a chunk), row 1 x[40] (in the
    // tail), row 2 sums all of x.
    const K = 44, N = 3;
    const wf = new Float32Array(N * K);
    wf[5] = 1;
    wf[K + 40] = 1;
    wf.fill(1, 2 * K);
    const w = new Uint8Array(encodeTensor(wf, "BF16"));
    const devices: KernelDevice[] = [true, "cpu", "cpu-avx2", ...(k.cpuBackend.startsWith("cpu-avx512") ? ["cpu-avx512" as const] : [])];
    const cases: [number, number][] = [
      [1 + 2 ** -8, 1], // a tie: to even (down)
      [1 + 3 * 2 ** -8, 1 + 2 ** -6], // a tie: to even (up)
      [1 + 2 ** -8 + 2 ** -20, 1 + 2 ** -7], // above half: up
      [1e-39, 0], // an f32 subnormal: flushed
      [-3.4028235e38, -Infinity], // rounds past the largest bf16
      [Infinity, Infinity],
    ];
    for (const [v, want] of cases)
      for (const [pos, row] of [[5, 0], [40, 1]]) {
        const x = new Float32Array(K);
        x[pos] = v;
        for (const dev of devices) {
          const y = k.kernel("linear", dev, { x, T: 1, K, N, w, dtype: 2 }) as Float32Array;
          expect([y[row], y[2]], `x[${pos}] = ${v} on ${dev}`).toEqual([want, want]);
        }
      }
    const x = new Float32Array(K).fill(1);
    x[7] = NaN;
    for (const dev of devices) expect(Number.isNaN((k.kernel("linear", dev, { x, T: 1, K, N, w, dtype: 2 }) as Float32Array)[2])).toBe(true);
  });

  it.each([[1, 8], [3, 13], [9, 64], [17, 1000]])("rmsnorm T=%i H=%i", (T, H) => {
    const [a, b] = both("rmsnorm", { x: randn(T * H, 3), T, w: randn(H), eps: 1e-5 });
    expect(maxDiff(a, b)).toBeLessThan(1e-5);
  });

  it.each([[1, 2, 8], [3, 4, 24], [9, 1, 10], [5, 6, 128]])("rope T=%i heads=%i head_dim=%i", (T, heads, hd) => {
    const half = hd / 2;
    const ang = Float32Array.from({ length: T * half }, () => R(100));
    const args = { x: randn(T * heads * hd), T, heads, headDim: hd, cos: ang.map(Math.cos), sin: ang.map(Math.sin) };
    const [a, b] = both("rope", args);
    expect(maxDiff(a, b)).toBeLessThan(1e-5);
  });

  it.each([1, 7, 8, 9, 1000, 4099])("silu·mul n=%i", (n) => {
    const [a, b] = both("siluMul", { gate: randn(n, 10), up: randn(n) });
    expect(maxDiff(a, b)).toBeLessThan(1e-5);
  });

  it.each([1, 5, 8, 33, 32000])("softmax n=%i (with -inf entries)", (n) => {
    const x = randn(n, 20);
    if (n > 3) x[2] = -Infinity;
    const [a, b] = both("softmax", { x });
    expect(maxDiff(a, b)).toBeLessThan(1e-6);
    expect(b.reduce((s: number, v: number) => s + v, 0)).toBeCloseTo(1, 5);
  });

  it.each([1, 7, 8, 33, 32000])("logsumexp n=%i", (n) => {
    const x = randn(n, 30);
    const [a, b] = both("logsumexp", { x });
    expect(Math.abs(a - b)).toBeLessThan(1e-5 * Math.max(1, Math.abs(a)));
  });

  it.each([
    [1, 4, 4, 8, 0, false],
    [5, 4, 2, 16, 0, false],
    [7, 6, 2, 24, 3, false],
    [16, 8, 1, 64, 0, false],
    [9, 4, 4, 36, 5, false],
    [6, 8, 4, 64, 0, true],
    [4, 6, 2, 20, 0, true],
  ])("paged attention T=%i heads=%i kv=%i head_dim=%i window=%i tree=%s", (T, heads, kvHeads, hd, window, tree) => {
    const bs = 4, nBlocks = 40, maxBlocks = 12;
    const k1 = randn(nBlocks * kvHeads * bs * hd), v1 = randn(nBlocks * kvHeads * bs * hd);
    // Tokens from different sequences with scattered block tables and different context lengths.
    const tables = new Int32Array(T * maxBlocks);
    const kvLen = new Int32Array(T), kvBegin = new Int32Array(T);
    for (let t = 0; t < T; t++) {
      for (let b = 0; b < maxBlocks; b++) tables[t * maxBlocks + b] = Math.floor(R(nBlocks));
      kvLen[t] = 1 + Math.floor(R(maxBlocks * bs - 1));
      kvBegin[t] = window ? Math.max(0, kvLen[t] - window) : 0;
    }
    // Speculative rows: of the last five KV slots, each row sees a different subset (always its first and own).
    const treeBase = tree ? Int32Array.from(kvLen, (l) => Math.max(0, l - 5)) : undefined;
    const treeMask = tree ? BigUint64Array.from(kvLen, (_, i) => BigInt(0b10001 | (1 << (i % 5)))) : undefined;
    const args = { q: randn(T * heads * hd), k: k1, v: v1, T, heads, kvHeads, headDim: hd, blockSize: bs, scale: 1 / Math.sqrt(hd), maxBlocks, tables, kvLen, kvBegin, treeBase, treeMask };
    const [a, b] = both("attention", args);
    expect(maxDiff(a, b)).toBeLessThan(1e-5);
  });

  it.each([
    [4, 4, 64, 0], [8, 4, 64, 0], [6, 2, 20, 0], [3, 3, 16, 0], [12, 4, 64, 6],
  ])("paged attention over whole sequences (heads=%i kv=%i head_dim=%i window=%i): equal bit for bit to each token alone and across builds", (heads, kvHeads, hd, window) => {
    // Three sequences in one step, as the engine sends them: a prefill chunk of 9 tokens (keys 4..12 new), a
    // decode token, a prompt of 6 from scratch; tokens of a sequence share its block table (`seq`), so the fast
    // kernel takes consecutive tokens two at a time.
    const bs = 4, nBlocks = 30, maxBlocks = 8;
    const lens = [[...Array(9).keys()].map((i) => 5 + i), [27], [...Array(6).keys()].map((i) => 1 + i)];
    const tables = Int32Array.from({ length: 3 * maxBlocks }, () => Math.floor(R(nBlocks)));
    const seq = Int32Array.from(lens.flatMap((l, s) => l.map(() => s)));
    const kvLen = Int32Array.from(lens.flat());
    const kvBegin = kvLen.map((l) => (window ? Math.max(0, l - window) : 0));
    const T = kvLen.length;
    const base = { k: randn(nBlocks * kvHeads * bs * hd), v: randn(nBlocks * kvHeads * bs * hd), heads, kvHeads, headDim: hd, blockSize: bs, scale: 1 / Math.sqrt(hd), maxBlocks, tables };
    const q = randn(T * heads * hd);
    const all = k.kernel("attention", false, { ...base, q, T, kvLen, kvBegin, seq }) as Float32Array;
    const ref = k.kernel("attention", true, { ...base, q, T, kvLen, kvBegin, seq }) as Float32Array;
    expect(maxDiff(all, ref)).toBeLessThan(1e-5);
    // The AVX2 build (16 registers) equals the widest one bit for bit.
    expect(Array.from(k.kernel("attention", "cpu-avx2", { ...base, q, T, kvLen, kvBegin, seq }) as Float32Array)).toEqual(Array.from(all));
    const w = heads * hd;
    for (let t = 0; t < T; t++) {
      const one = k.kernel("attention", false, { ...base, q: q.slice(t * w, (t + 1) * w), T: 1, kvLen: kvLen.slice(t, t + 1), kvBegin: kvBegin.slice(t, t + 1), seq: seq.slice(t, t + 1) }) as Float32Array;
      expect(Array.from(one), `token ${t}`).toEqual(Array.from(all.slice(t * w, (t + 1) * w)));
    }
  });

  it.each([[false, 37, 29], [true, 37, 29], [true, 256, 300]])("LoRA (bf16 factors: %s, d_in %i, d_out %i): mixed ranks, scattered tokens, a segment longer than a chunk", (bf16, dIn, dOut) => {
    const T = 40;
    const groups = [
      { rank: 1, scale: 2, tokens: Int32Array.from([3]) },
      { rank: 8, scale: 0.5, tokens: Int32Array.from({ length: 21 }, (_, i) => i + 10) },
      { rank: 13, scale: 1.25, tokens: Int32Array.from([0, 2, 39, 5]) },
    ].map((g) => ({ ...g, a: randn(g.rank * dIn), bt: randn(g.rank * dOut) }));
    const args = { x: randn(T * dIn), y: randn(T * dOut), dIn, dOut, groups, bf16 };
    const [a, b] = both("lora", args);
    expect(maxDiff(a, b)).toBeLessThan(1e-4);
    expect(maxDiff(a, args.y)).toBeGreaterThan(1e-3); // it did something
  });

  describe("sampling", () => {
    const V = 5000;
    it("greedy, top-N logprobs and target logprob agree exactly in choice", () => {
      for (let i = 0; i < 20; i++) {
        const logits = randn(V, 5);
        const args = { logits, nTop: 5, target: 17 };
        const [a, b] = both("sample", args);
        expect(b.token).toBe(a.token);
        expect(Array.from(b.topIds)).toEqual(Array.from(a.topIds));
        expect(Math.abs(a.targetLogprob - b.targetLogprob)).toBeLessThan(1e-5);
        let best = 0;
        for (let j = 1; j < V; j++) if (logits[j] > logits[best]) best = j;
        expect(a.token).toBe(best);
      }
    });
    it("sampling with filters picks the same token from the same draw", () => {
      let same = 0;
      const N = 200;
      for (let i = 0; i < N; i++) {
        const args = {
          logits: randn(V, 4), doSample: true, temperature: 0.7 + R(0.6), topK: i % 3 ? 0 : 50, topP: i % 2 ? 0.9 : 1,
          typicalP: i % 5 ? 1 : 0.8, minP: i % 7 ? 0 : 0.05, seed: 1000 + i, step: i,
          repetitionPenalty: 1.3, presencePenalty: 0.2, frequencyPenalty: 0.1, penIds: Int32Array.from([1, 2, 3]), penCounts: Int32Array.from([0, 1, 5]),
        };
        const [a, b] = both("sample", args);
        if (a.token === b.token) same++;
      }
      expect(same).toBeGreaterThanOrEqual(N - 2); // float vs double softmax may flip a draw at a boundary
    });
    it("a mask restricts the choice", () => {
      const mask = new Uint32Array(Math.ceil(V / 32));
      mask[100 >> 5] |= 1 << (100 & 31);
      mask[4321 >> 5] |= 1 << (4321 & 31);
      for (const reference of [true, false]) {
        for (let i = 0; i < 10; i++) {
          const r = k.kernel("sample", reference, { logits: randn(V, 5), doSample: true, seed: i, mask });
          expect([100, 4321]).toContain(r.token);
        }
      }
    });
    it("a logit bias acts as if added to the logits after the penalties; logprobs stay the model's", () => {
      const ids = Int32Array.from([7, 300, 4999]), bias = Float32Array.from([3.5, -2, 1.25]);
      const pen = { repetitionPenalty: 1.3, presencePenalty: 0.4, frequencyPenalty: 0.2, penIds: Int32Array.from([7, 300, 12]), penCounts: Int32Array.from([2, 0, 1]) };
      for (const reference of [true, false]) {
        for (let i = 0; i < 40; i++) {
          const logits = randn(V, 2);
          const settings = { doSample: i % 4 !== 0, temperature: 0.8, topP: i % 3 ? 1 : 0.9, seed: 77 + i, step: i, nTop: 3, ...pen };
          // The penalised logits with the bias added by hand, penalties off: the same processed distribution.
          const penalised = Float32Array.from(logits);
          for (const [j, id] of pen.penIds.entries()) {
            let x = penalised[id];
            x = x > 0 ? x / pen.repetitionPenalty : x * pen.repetitionPenalty;
            if (pen.penCounts[j] > 0) x -= pen.presencePenalty + pen.frequencyPenalty * pen.penCounts[j];
            penalised[id] = x;
          }
          const biased = Float32Array.from(penalised);
          ids.forEach((id, j) => (biased[id] += bias[j]));
          const a = k.kernel("sample", reference, { ...settings, logits, biasIds: ids, bias });
          const b = k.kernel("sample", reference, { ...settings, repetitionPenalty: 1, presencePenalty: 0, frequencyPenalty: 0, penIds: undefined, penCounts: undefined, logits: biased });
          expect(a.token, `case ${i}`).toBe(b.token);
          // Reported logprobs are the raw model's: the chosen token's under the unbiased logits.
          const raw = k.kernel("sample", reference, { logits, sample: false, target: a.token });
          expect(Math.abs(a.logprob - raw.targetLogprob)).toBeLessThan(1e-5);
        }
      }
    });
    it("a bias of +100 forces a token, -100 bans the greedy one, a mask still wins", () => {
      const logits = randn(V, 3);
      let best = 0;
      for (let j = 1; j < V; j++) if (logits[j] > logits[best]) best = j;
      for (const reference of [true, false]) {
        expect(k.kernel("sample", reference, { logits, biasIds: Int32Array.from([1234]), bias: Float32Array.from([100]) }).token).toBe(1234);
        expect(k.kernel("sample", reference, { logits, biasIds: Int32Array.from([best]), bias: Float32Array.from([-100]) }).token).not.toBe(best);
        const mask = new Uint32Array(Math.ceil(V / 32));
        mask[best >> 5] |= 1 << (best & 31);
        expect(k.kernel("sample", reference, { logits, mask, biasIds: Int32Array.from([1234]), bias: Float32Array.from([100]) }).token).toBe(best);
      }
      expect(() => k.kernel("sample", false, { logits, biasIds: Int32Array.from([1, 2]), bias: Float32Array.from([1]) })).toThrow(/'bias' has 1 entries, expected 2/);
    });
  });
});
