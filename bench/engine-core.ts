// Engine-core benchmark (issue: engine core): prefill tokens/s for a 512-token prompt and aggregate decode
// tokens/s at 1, 8 and 32 concurrent sequences on the bench model in F32 and BF16, beside the memory bandwidth
// and FMA throughput measured in the same run (the decode roofline). Run: `tsx bench/engine-core.ts [--quick]`;
// `npm run bench` calls benchCore with llama.cpp as the companion measured after each of our figures.
import { Engine, type StepEvent } from "../engine/src/engine.js";
import { benchEngineOptions, engineDecode, median } from "./lib/measure.js";
import { native } from "../engine/src/native.js";
import { DEFAULT_SAMPLING } from "../engine/src/sampling.js";
import type { DType } from "../engine/src/model/safetensors.js";
import { writeBenchModel } from "../scripts/bench-model.js";

export interface CoreResult {
  dtype: DType;
  weightBytes: number;
  rssAfterLoad: number;
  kvBytes: number;
  threads: number;
  prefillTokS: number; // over native step time
  prefillWallTokS: number; // over wall-clock time of the request
  /** tokS: tokens over native step time; wallTokS: over wall-clock time between steps (engine overhead included). */
  decode: { concurrency: number; tokS: number; wallTokS: number }[];
  rooflineTokS: number;
  /** Bytes/s behind rooflineTokS: the median over batch-1 runs of the bandwidth probed just before and after each. */
  rooflineBandwidth: number;
  /** Batch-1 decode (wall-clock) ÷ the roofline of the moment: the median over runs of each run's ratio. */
  rooflineFraction: number;
  /** The companion's figures for the same workloads, measured right after ours (see CoreOptions.companion). */
  companion?: { prefillTokS: number; decode: { concurrency: number; tokS: number }[] };
}

/** Another engine run on the same workloads, each right after ours, so both see the same machine load. */
export interface CoreCompanion {
  /** Tokens/s for one prompt's prefill (wall-clock). */
  prefill(prompt: number[]): Promise<number>;
  /** Aggregate decode tokens/s (wall-clock) with one sequence per prompt, newTokens each, prefill excluded. */
  decode(prompts: number[][], newTokens: number): Promise<number>;
}

export interface CoreOptions {
  concurrency?: number[]; // default [1, 8, 32]
  prefillReps?: number; // default 2 quick, 3 full
  newTokens?: number; // decode tokens per sequence; default 16 quick, 48 full
  decodePromptLen?: number; // tokens per decode prompt; default 16
  companion?: CoreCompanion;
}

/** The prefill prompt (512 tokens) and the decode prompts (16 tokens each by default) every engine is given. */
export const prefillPrompt = (): number[] => Array.from({ length: 512 }, (_, i) => 300 + ((i * 7919) % 30000));
export const decodePrompts = (concurrency: number, len = 16): number[][] =>
  Array.from({ length: concurrency }, (_, i) => Array.from({ length: len }, (_, j) => 100 + 37 * i + j));

async function decodeRate(engine: Engine, concurrency: number, newTokens: number, promptLen: number): Promise<{ tokS: number; wallTokS: number }> {
  const r = await engineDecode(engine, decodePrompts(concurrency, promptLen), newTokens);
  return { tokS: r.tokS, wallTokS: r.wallTokS };
}

export async function benchCore(dtype: DType, quick: boolean, opts: CoreOptions = {}): Promise<CoreResult> {
  const dir = writeBenchModel(dtype);
  const rss0 = process.memoryUsage().rss;
  // Prefix cache off: the prefill figure runs one prompt several times and must compute it every time (the
  // "prefix-cache" section measures what the cache saves).
  const engine = await Engine.create(dir, benchEngineOptions({ kvBytes: 1.5 * 2 ** 30, maxConcurrentRequests: 256, prefixCaching: false }));
  const info = engine.backend.info();
  const rssAfterLoad = process.memoryUsage().rss - rss0;
  const prompt = prefillPrompt();
  const prefills: number[] = [], prefillWalls: number[] = [], peerPrefills: number[] = [];
  for (let r = 0; r < (opts.prefillReps ?? (quick ? 2 : 3)); r++) {
    let micros = 0;
    const on = (e: StepEvent) => (micros += e.micros);
    engine.on("step", on);
    const t0 = performance.now();
    for await (const _e of engine.generate({ prompt, params: { ...DEFAULT_SAMPLING, maxNewTokens: 1 } }));
    prefillWalls.push(512 / ((performance.now() - t0) / 1e3));
    engine.off("step", on);
    prefills.push(512 / (micros / 1e6));
    if (opts.companion) peerPrefills.push(await opts.companion.prefill(prompt));
  }
  const decode = [], peerDecode = [];
  const newTokens = opts.newTokens ?? (quick ? 16 : 48);
  // Bytes of weights read per decoded token: every matrix once (the embedding row is negligible).
  const perToken = info.weightBytes - engine.spec.vocabSize * engine.spec.hiddenSize * (dtype === "F32" ? 4 : 2);
  // The machine's read bandwidth drifts (35-47 GB/s between runs here, ±30% within a minute: shared hardware):
  // each batch-1 run is set against the bandwidth probed just before and just after it, not against the best
  // probe of the whole run, and the fraction of the roofline is the median of those per-run ratios.
  const roof: { bandwidth: number; fraction: number }[] = [];
  for (const c of opts.concurrency ?? [1, 8, 32]) {
    // Batch 1 is short and the most exposed to that drift: three alternations of ours and the companion's,
    // medians of each.
    const ours: { tokS: number; wallTokS: number }[] = [], theirs: number[] = [];
    for (let rep = 0; rep < (c === 1 ? 3 : 1); rep++) {
      const before = c === 1 ? native().probe("bandwidth") : 0;
      const o = await decodeRate(engine, c, newTokens, opts.decodePromptLen ?? 16);
      ours.push(o);
      if (c === 1) {
        const bandwidth = (before + native().probe("bandwidth")) / 2;
        roof.push({ bandwidth, fraction: o.wallTokS / (bandwidth / perToken) });
      }
      if (opts.companion) theirs.push(await opts.companion.decode(decodePrompts(c, opts.decodePromptLen ?? 16), newTokens));
    }
    decode.push({ concurrency: c, tokS: median(ours.map((o) => o.tokS)), wallTokS: median(ours.map((o) => o.wallTokS)) });
    if (opts.companion) peerDecode.push({ concurrency: c, tokS: median(theirs) });
  }
  engine.backend.close();
  const roofBandwidth = median(roof.map((r) => r.bandwidth));
  return {
    dtype, weightBytes: info.weightBytes, rssAfterLoad, kvBytes: info.kvBytes, threads: info.threads, prefillTokS: median(prefills),
    prefillWallTokS: median(prefillWalls), decode,
    rooflineTokS: roofBandwidth / perToken,
    rooflineBandwidth: roofBandwidth,
    rooflineFraction: median(roof.map((r) => r.fraction)),
    companion: opts.companion ? { prefillTokS: median(peerPrefills), decode: peerDecode } : undefined,
  };
}

if (process.argv[1]?.endsWith("engine-core.ts")) {
  const quick = process.argv.includes("--quick");
  const fma = native().probe("fma");
  console.log(`FMA ${(fma / 1e9).toFixed(0)} GFLOP/s`);
  for (const dt of ["F32", "BF16"] as DType[]) {
    const r = await benchCore(dt, quick);
    console.log(
      `${dt}: weights ${(r.weightBytes / 1e6).toFixed(0)} MB, RSS after load +${(r.rssAfterLoad / 1e6).toFixed(0)} MB (KV ${(r.kvBytes / 1e6).toFixed(0)} MB), ` +
        `prefill ${r.prefillTokS.toFixed(1)} tok/s, decode ${r.decode.map((d) => `${d.concurrency}:${d.tokS.toFixed(1)}`).join(" ")} tok/s, ` +
        `roofline ${r.rooflineTokS.toFixed(1)} tok/s at ${(r.rooflineBandwidth / 1e9).toFixed(1)} GB/s (batch-1 at ${r.rooflineFraction.toFixed(2)})`,
    );
  }
}
