// The CUDA backend from JavaScript: CUDA compiled in whenever nvcc is here, `device: "cuda"` without a GPU fails
// naming the reason; on a GPU, every op and the sampler against the CPU, and tiny models on cpu vs cuda. The native
// check binary (scripts/gpu-check.sh) covers the same without Node, plus the benchmark.
import { execFileSync } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { describe, expect, it } from "vitest";

import type { LoraWeights } from "../../engine/src/adapters/types.js";
import { Backend, type RowSampling } from "../../engine/src/backend.js";
import { encodeTensor, type DType } from "../../engine/src/model/safetensors.js";
import { native } from "../../engine/src/native.js";
import { Tokenizer } from "../../engine/src/tokenizer.js";
import { maxDiff, rng, tinyModels } from "../helpers/tiny.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const k = native();
const cuda = k.cuda;
const nvccHere = execFileSync("sh", [path.join(ROOT, "native/src/cuda/find-cuda.sh")], { encoding: "utf8" }).trim() !== "";
const SKIP = cuda.usable ? "" : `GPU checks skipped: ${cuda.error || "no usable CUDA device"}`;
if (SKIP) console.log(SKIP);

const R = rng(11);
const randn = (n: number, s = 1) => Float32Array.from({ length: n }, () => (R(2) - 1) * s);
const OPTS = { kvBytes: 1 << 20, blockSize: 8, maxStepTokens: 64, maxOutRows: 64, loraSlots: 2, loraMaxRank: 8 };
const row = (): RowSampling => ({
  sample: true, doSample: false, temperature: 1, topK: 0, topP: 1, typicalP: 1, minP: 0,
  repetitionPenalty: 1, presencePenalty: 0, frequencyPenalty: 0, seed: 0n, step: 0, nTop: 0, target: -1,
});

describe("CUDA availability", () => {
  it("reports whether CUDA was compiled in and whether a GPU is usable", () => {
    expect(typeof cuda.compiled).toBe("boolean");
    expect(typeof cuda.usable).toBe("boolean");
    if (process.env.LORASERVE_CUDA !== "0") expect(cuda.compiled).toBe(nvccHere);
    if (cuda.usable) {
      expect(cuda.devices).toBeGreaterThan(0);
      expect(cuda.name).not.toBe("");
    } else {
      expect(cuda.error).not.toBe("");
    }
  });

  it.skipIf(cuda.usable)('device "cuda" without a usable GPU fails to load, naming the reason (no silent fallback)', async () => {
    const err = await Backend.load(tinyModels()["llama-f32"], { ...OPTS, device: "cuda" }).catch((e) => e);
    expect(err).toBeInstanceOf(Error);
    expect(err.code).toBe("EINVAL");
    expect(err.message).toMatch(/device "cuda" is not available: .+; use device "cpu"/);
    expect(err.message).toContain(cuda.error);
    expect(() => k.kernel("siluMul", "cuda", { gate: randn(4), up: randn(4) })).toThrow(/device "cuda" is not available/);
  });

  it('device "auto" (the default) runs on the CPU without a GPU, and reference always does', async () => {
    const dir = tinyModels()["llama-f32"];
    const be = await Backend.load(dir, OPTS);
    expect(be.info().backend).toBe(cuda.usable ? `cuda-${cuda.name}` : native().cpuBackend);
    be.close();
    const ref = await Backend.load(dir, { ...OPTS, reference: true });
    expect(ref.info().backend).toBe("cpu-reference");
    ref.close();
    await expect(Backend.load(dir, { ...OPTS, device: "cuda", reference: true })).rejects.toThrow(/reference kernels run on the CPU only/);
    await expect(Backend.load(dir, { ...OPTS, device: "tpu" as "cpu" })).rejects.toThrow(/device "tpu" is not one of cpu, cuda, auto/);
  });

  it("kernel() takes a device selector: booleans keep their meaning, strings name the backend", () => {
    const args = { gate: randn(37, 4), up: randn(37) };
    const ref = k.kernel("siluMul", "reference", args) as Float32Array;
    expect(Array.from(k.kernel("siluMul", true, args))).toEqual(Array.from(ref));
    expect(maxDiff(k.kernel("siluMul", "cpu", args), ref)).toBeLessThan(1e-5);
    expect(() => k.kernel("siluMul", "gpu" as "cuda", args)).toThrow(/kernel device must be/);
  });
});

describe.skipIf(!cuda.usable)("CUDA ops match the CPU reference", () => {
  const both = (name: string, args: Record<string, unknown>) => [k.kernel(name, "reference", args), k.kernel(name, "cuda", args)];

  const shapes: [number, number, number][] = [[1, 8, 16], [1, 300, 33], [3, 64, 48], [5, 4096, 512], [17, 256, 130], [64, 512, 384], [200, 136, 72]];
  for (const dtype of ["F32", "BF16", "F16"] as DType[]) {
    it.each(shapes)(`linear ${dtype} T=%i K=%i N=%i, with bias and accumulate`, (T, K, N) => {
      const w = new Uint8Array(encodeTensor(randn(N * K, 0.5), dtype));
      const code = { F32: 0, F16: 1, BF16: 2 }[dtype];
      // Tensor cores round x to the weight's 16-bit type: relative error ~2^-9 per product.
      const tol = (dtype === "F32" ? 1e-4 : 2e-2) * Math.sqrt(K);
      const args = { x: randn(T * K), T, K, N, w, dtype: code, bias: randn(N) };
      const [a, b] = both("linear", args);
      expect(maxDiff(a, b)).toBeLessThan(tol);
      const y = randn(T * N);
      const [c, d] = both("linear", { ...args, bias: undefined, y });
      expect(maxDiff(c, d)).toBeLessThan(tol);
    });
  }

  it.each([[1, 8], [3, 13], [9, 64], [17, 4096]])("rmsnorm T=%i H=%i", (T, H) => {
    const [a, b] = both("rmsnorm", { x: randn(T * H, 3), T, w: randn(H), eps: 1e-5 });
    expect(maxDiff(a, b)).toBeLessThan(1e-5);
  });

  it.each([[1, 2, 8], [3, 4, 24], [5, 6, 128]])("rope T=%i heads=%i head_dim=%i", (T, heads, hd) => {
    const ang = Float32Array.from({ length: T * (hd / 2) }, () => R(100));
    const [a, b] = both("rope", { x: randn(T * heads * hd), T, heads, headDim: hd, cos: ang.map(Math.cos), sin: ang.map(Math.sin) });
    expect(maxDiff(a, b)).toBeLessThan(1e-5);
  });

  it.each([1, 9, 4099])("silu·mul and the Medusa residual n=%i", (n) => {
    const [a, b] = both("siluMul", { gate: randn(n, 10), up: randn(n) });
    expect(maxDiff(a, b)).toBeLessThan(1e-5);
    const [c, d] = both("addSilu", { x: randn(n), t: randn(n, 10) });
    expect(maxDiff(c, d)).toBeLessThan(1e-5);
  });

  it.each(["F32", "BF16", "F16"] as DType[])("embedding %s is exact", (dtype) => {
    const V = 50, H = 24;
    const e = new Uint8Array(encodeTensor(randn(V * H), dtype));
    const [a, b] = both("embed", { tokens: Int32Array.from([3, 0, 49, 3]), vocab: V, H, e, dtype: { F32: 0, F16: 1, BF16: 2 }[dtype] });
    expect(Array.from(b)).toEqual(Array.from(a));
  });

  it.each([
    [1, 4, 4, 8, 0, false], [5, 4, 2, 16, 0, false], [7, 6, 2, 24, 3, false], [16, 32, 4, 128, 0, false],
    [9, 4, 4, 36, 5, false], [6, 8, 2, 64, 0, true], [3, 16, 1, 256, 0, false],
  ])("paged attention T=%i heads=%i kv=%i head_dim=%i window=%i tree=%s", (T, heads, kvHeads, hd, window, tree) => {
    const bs = 4, nBlocks = 40, maxBlocks = 30;
    const tables = new Int32Array(T * maxBlocks), kvLen = new Int32Array(T), kvBegin = new Int32Array(T);
    for (let t = 0; t < T; t++) {
      for (let b = 0; b < maxBlocks; b++) tables[t * maxBlocks + b] = Math.floor(R(nBlocks));
      kvLen[t] = 1 + Math.floor(R(maxBlocks * bs - 1));
      kvBegin[t] = window ? Math.max(0, kvLen[t] - window) : 0;
    }
    const treeBase = tree ? Int32Array.from(kvLen, (l) => Math.max(0, l - 5)) : undefined;
    const treeMask = tree ? BigUint64Array.from(kvLen, (_, i) => BigInt(0b10011 | (1 << (i % 5)))) : undefined;
    const args = {
      q: randn(T * heads * hd), k: randn(nBlocks * kvHeads * bs * hd), v: randn(nBlocks * kvHeads * bs * hd),
      T, heads, kvHeads, headDim: hd, blockSize: bs, scale: 1 / Math.sqrt(hd), maxBlocks, tables, kvLen, kvBegin, treeBase, treeMask,
    };
    const [a, b] = both("attention", args);
    expect(maxDiff(a, b)).toBeLessThan(1e-4);
  });

  it.each([
    ["segments (SGMV): mixed ranks, one segment longer than a tile", [1, 21, 4], 40],
    ["gather (BGMV): one token per adapter", [1, 1, 1, 1, 1, 1], 8],
  ] as [string, number[], number][])("LoRA %s", (_name, sizes, T) => {
    for (const [dIn, dOut] of [[37, 29], [256, 512]]) {
      let next = 0;
      const groups = sizes.map((n, i) => {
        const rank = [1, 8, 13, 16, 4, 2][i % 6];
        return { rank, scale: 0.5 + i, tokens: Int32Array.from({ length: n }, () => next++ % T), a: randn(rank * dIn), bt: randn(rank * dOut) };
      });
      const args = { x: randn(T * dIn), y: randn(T * dOut), dIn, dOut, groups };
      const [a, b] = both("lora", args);
      expect(maxDiff(a, b)).toBeLessThan(1e-3);
    }
  });
});

describe.skipIf(!cuda.usable)("CUDA sampling matches the CPU sampler", () => {
  const V = 32000;
  it.each([
    ["greedy with alternatives and a target", { nTop: 5, target: 123 }],
    ["greedy with penalties and a mask", { repetitionPenalty: 1.3, presencePenalty: 0.5, frequencyPenalty: 0.2, penIds: Int32Array.from([5, 77, 901]), penCounts: Int32Array.from([0, 2, 1]), mask: Uint32Array.from({ length: V / 32 }, (_, i) => (i * 2654435761) >>> 0) }],
    ["logprobs only", { sample: false, nTop: 20 }],
    ["greedy with a logit bias (host path)", { nTop: 3, biasIds: Int32Array.from([9, 31999]), bias: Float32Array.from([4, 100]) }],
    ["a temperature draw (host path)", { doSample: true, temperature: 0.7, topK: 50, topP: 0.9, seed: 42, step: 3 }],
  ] as [string, Record<string, unknown>][])("%s", (_name, opts) => {
    for (let i = 0; i < 10; i++) {
      const args = { logits: randn(V, 6), ...opts };
      const a = k.kernel("sample", "cpu", args), b = k.kernel("sample", "cuda", args);
      expect(b.token).toBe(a.token);
      expect(Array.from(b.topIds)).toEqual(Array.from(a.topIds));
      expect(Math.abs(a.logprob - b.logprob)).toBeLessThan(1e-4);
      expect(Math.abs(a.targetLogprob - b.targetLogprob)).toBeLessThan(1e-4);
    }
  });
});

describe.skipIf(!cuda.usable)("tiny models on cpu and cuda", () => {
  async function greedy(be: Backend, prompt: number[], steps: number, adapter = -1) {
    const out: number[] = [];
    let logits: Float32Array | undefined;
    let ids = prompt, pos = 0;
    for (let s = 0; s < steps; s++) {
      const r = await be.step({
        tokens: ids.map((t, i) => ({ token: t, position: pos + i, seq: 0, adapterSlot: adapter })),
        sequences: [{ blockTable: [0, 1, 2, 3, 4, 5, 6, 7] }],
        outRows: [ids.length - 1],
        rows: [row()],
        wantLogits: s === 0,
      });
      logits ??= r.logits;
      pos += ids.length;
      ids = [r.tokens[0]];
      out.push(r.tokens[0]);
    }
    return { out, logits: logits! };
  }

  it.each(["llama-f32", "mistral-f32-sharded-window", "llama-bf16-tied-linear", "llama3-f16-mqa-headdim"])("%s: greedy tokens and logits", async (name) => {
    const dir = tinyModels()[name];
    const prompt = Tokenizer.load(dir).encode("The quick brown fox jumps over the lazy dog").slice(0, 12);
    const cpu = await Backend.load(dir, { ...OPTS, device: "cpu" });
    const gpu = await Backend.load(dir, { ...OPTS, device: "cuda" });
    expect(gpu.info().backend).toBe(`cuda-${cuda.name}`);
    const a = await greedy(cpu, prompt, 24), b = await greedy(gpu, prompt, 24);
    const f32 = name.includes("f32");
    expect(maxDiff(a.logits, b.logits)).toBeLessThan(f32 ? 1e-3 : 5e-2);
    if (f32) expect(b.out).toEqual(a.out);
    else expect(b.out.slice(0, 4)).toEqual(a.out.slice(0, 4));
    cpu.close();
    gpu.close();
  });

  it("a LoRA adapter changes the output identically on both", async () => {
    const dir = tinyModels()["llama-f32"];
    const cpu = await Backend.load(dir, { ...OPTS, device: "cpu" }), gpu = await Backend.load(dir, { ...OPTS, device: "cuda" });
    const { hiddenSize: H, numLayers } = cpu.spec;
    const modules = [];
    for (let layer = 0; layer < numLayers; layer++)
      for (const target of ["q_proj", "v_proj", "down_proj"] as const) {
        const dIn = target === "down_proj" ? cpu.spec.intermediateSize : H, dOut = target === "v_proj" ? cpu.spec.numKvHeads * cpu.spec.headDim : H;
        modules.push({ layer, target, rank: 4, scale: 2, dIn, dOut, a: randn(4 * dIn, 0.3), b: randn(dOut * 4, 0.3) });
      }
    const w: LoraWeights = { modules, maxRank: 4, warnings: [], sizeBytes: 0 };
    await cpu.loraLoad(1, w);
    await gpu.loraLoad(1, w);
    const prompt = [1, 5, 9, 200, 31, 7];
    const a = await greedy(cpu, prompt, 16, 1), b = await greedy(gpu, prompt, 16, 1);
    expect(maxDiff(a.logits, b.logits)).toBeLessThan(1e-3);
    expect(b.out).toEqual(a.out);
    expect(a.out).not.toEqual((await greedy(cpu, prompt, 16)).out);
    cpu.close();
    gpu.close();
  });
});
