// Section "ttft": time to first token under continuous batching, ours vs llama.cpp (one context, a sequence per
// request), the same requests arriving on the same schedule, F32 weights. The fuller study (arrival rates, chunk
// sizes, preemption) belongs to the continuous-batching issue; this is the side-by-side percentile check.
import { Engine } from "../../engine/src/engine.js";
import { ttftOn } from "../lib/llama-cpp.js";
import { benchEngineOptions, engineTtft, percentile, prompts } from "../lib/measure.js";
import { fmtX, ratio, type BenchSection, type SummaryRow } from "../lib/section.js";

const PCTS = [50, 90, 99];

const section: BenchSection = {
  name: "ttft",
  describe: "time to first token, requests arriving on a fixed schedule, ours (continuous batching) vs llama.cpp (a sequence per request)",
  async run(ctx) {
    const n = ctx.quick ? 4 : 16, promptLen = ctx.quick ? 32 : 96, newTokens = ctx.quick ? 3 : 8;
    // Arrivals paced by our measured prefill speed: a new prompt every 1.5 prompt-prefill times of ours.
    const core = ctx.results.get("engine-core")?.json as { runs?: { dtype: string; prefillWallTokS: number }[] } | undefined;
    const prefill = core?.runs?.find((r) => r.dtype === "F32")?.prefillWallTokS;
    const gap = prefill && Number.isFinite(prefill) ? (1.5 * promptLen) / prefill : 1.5;
    const arrivals = Array.from({ length: n }, (_, i) => i * gap);
    const ps = prompts(n, promptLen, 23);
    const engine = await Engine.create(ctx.benchModel("F32"), benchEngineOptions({ kvBytes: 512 << 20, maxConcurrentRequests: 256 }));
    let ours;
    try {
      ours = await engineTtft(engine, ps, arrivals, newTokens);
    } finally {
      engine.backend.close();
    }
    const p = (xs: number[]) => PCTS.map((q) => percentile(xs, q));
    const oursP = p(ours.ttft);
    ctx.log(`ours: TTFT p50/p90/p99 ${oursP.map((x) => x.toFixed(2)).join(" / ")} s (arrivals every ${gap.toFixed(2)} s)`);
    const peer = await ctx.peer();
    let theirs: { ttft: number[]; wall: number } | undefined;
    if (peer) {
      const model = await peer.loadModel(ctx.benchGguf("F32"));
      try {
        theirs = await ttftOn(model, ps, arrivals, newTokens);
      } finally {
        await model.close();
      }
    }
    const theirP = theirs ? p(theirs.ttft) : undefined;
    if (theirP) ctx.log(`llama.cpp: TTFT p50/p90/p99 ${theirP.map((x) => x.toFixed(2)).join(" / ")} s`);
    const summary: SummaryRow[] = PCTS.map((q, i) => ({
      figure: `TTFT p${q}${theirP ? ", llama.cpp ÷ ours" : ""}`,
      value: theirP ? `${fmtX(ratio(theirP[i], oursP[i]))} (${oursP[i].toFixed(2)} s vs ${theirP[i].toFixed(2)} s)` : `${oursP[i].toFixed(2)} s`,
    }));
    return {
      json: { requests: n, promptLen, newTokens, arrivalGapS: gap, ours: { ttft: ours.ttft, wall: ours.wall, percentiles: oursP }, llamaCpp: theirs ? { ...theirs, percentiles: theirP } : null, peerUnavailable: ctx.peerUnavailable },
      summary,
      charts: [
        {
          kind: "bars", file: "ttft.png", title: "Time to first token under load",
          subtitle: `${n} requests of ${promptLen} prompt tokens, one every ${gap.toFixed(2)} s, ${newTokens} new tokens each, F32`,
          yLabel: "seconds", categories: PCTS.map((q) => `p${q}`),
          series: [{ name: "loraserve", values: oursP }, ...(theirP ? [{ name: "llama.cpp", values: theirP }] : [])],
          format: (v) => `${v.toFixed(2)} s`,
        },
      ],
    };
  },
};

export default section;
