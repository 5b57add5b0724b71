// Engine-core benchmark (issue: engine core): prefill tokens/s for a 512-token prompt and aggregate decode
// tokens/s at 1, 8 and 32 concurrent sequences on the bench model in F32 and BF16, beside the memory bandwidth
// and FMA throughput measured in the same run (the decode roofline). Run: `tsx bench/engine-core.ts [--quick]`.
import { Engine, type StepEvent } from "../engine/src/engine.js";
import { native } from "../engine/src/native.js";
import { DEFAULT_SAMPLING } from "../engine/src/sampling.js";
import type { DType } from "../engine/src/model/safetensors.js";
import { writeBenchModel } from "../scripts/bench-model.js";

export interface CoreResult {
  dtype: DType;
  weightBytes: number;
  rssAfterLoad: number;
  kvBytes: number;
  prefillTokS: number;
  decode: { concurrency: number; tokS: number }[];
  rooflineTokS: number;
}

const median = (xs: number[]) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function decodeRate(engine: Engine, concurrency: number, newTokens: number): Promise<number> {
  // Measure only steps where every running sequence decodes (no prefill in the step).
  let tokens = 0, micros = 0;
  const onStep = (e: StepEvent) => {
    if (e.stats.prefillTokens === 0 && e.stats.decodeTokens === concurrency) {
      tokens += e.tokens;
      micros += e.micros;
    }
  };
  engine.on("step", onStep);
  const params = { ...DEFAULT_SAMPLING, maxNewTokens: newTokens, ignoreEos: true };
  await Promise.all(
    Array.from({ length: concurrency }, async (_, i) => {
      for await (const _e of engine.generate({ prompt: Array.from({ length: 16 }, (_, j) => 100 + 37 * i + j), params }));
    }),
  );
  engine.off("step", onStep);
  return tokens / (micros / 1e6);
}

export async function benchCore(dtype: DType, quick: boolean, bandwidth: number): Promise<CoreResult> {
  const dir = writeBenchModel(dtype);
  const rss0 = process.memoryUsage().rss;
  const engine = await Engine.create(dir, {
    kvBytes: 1.5 * 2 ** 30, blockSize: 16, maxStepTokens: 512, maxOutRows: 64, maxBatchPrefillTokens: 512,
    maxWaitingTokens: 20, waitingServedRatio: 0, maxConcurrentRequests: 256,
  });
  const info = engine.backend.info();
  const rssAfterLoad = process.memoryUsage().rss - rss0;
  const prompt = Array.from({ length: 512 }, (_, i) => 300 + ((i * 7919) % 30000));
  const prefills: number[] = [];
  for (let r = 0; r < (quick ? 2 : 3); r++) {
    let micros = 0;
    const on = (e: StepEvent) => (micros += e.micros);
    engine.on("step", on);
    for await (const _e of engine.generate({ prompt, params: { ...DEFAULT_SAMPLING, maxNewTokens: 1 } }));
    engine.off("step", on);
    prefills.push(512 / (micros / 1e6));
  }
  const decode = [];
  for (const c of [1, 8, 32]) decode.push({ concurrency: c, tokS: await decodeRate(engine, c, quick ? 16 : 48) });
  engine.backend.close();
  // Bytes of weights read per decoded token: every matrix once (the embedding row is negligible).
  const perToken = info.weightBytes - engine.spec.vocabSize * engine.spec.hiddenSize * (dtype === "F32" ? 4 : 2);
  return { dtype, weightBytes: info.weightBytes, rssAfterLoad, kvBytes: info.kvBytes, prefillTokS: median(prefills), decode, rooflineTokS: bandwidth / perToken };
}

if (process.argv[1]?.endsWith("engine-core.ts")) {
  const quick = process.argv.includes("--quick");
  const bw = native().probe("bandwidth");
  const fma = native().probe("fma");
  console.log(`memory read bandwidth ${(bw / 1e9).toFixed(1)} GB/s, FMA ${(fma / 1e9).toFixed(0)} GFLOP/s`);
  for (const dt of ["F32", "BF16"] as DType[]) {
    const r = await benchCore(dt, quick, bw);
    console.log(
      `${dt}: weights ${(r.weightBytes / 1e6).toFixed(0)} MB, RSS after load +${(r.rssAfterLoad / 1e6).toFixed(0)} MB (KV ${(r.kvBytes / 1e6).toFixed(0)} MB), ` +
        `prefill ${r.prefillTokS.toFixed(1)} tok/s, decode ${r.decode.map((d) => `${d.concurrency}:${d.tokS.toFixed(1)}`).join(" ")} tok/s, ` +
        `roofline ${r.rooflineTokS.toFixed(1)} tok/s (batch-1 at ${(r.decode[0].tokS / r.rooflineTokS).toFixed(2)})`,
    );
  }
}
