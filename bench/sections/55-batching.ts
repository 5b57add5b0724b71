// Section "batching" (continuous-batching issue): aggregate decode tokens/s at 1, 4, 16 and 64 concurrent
// streams on the BF16 bench model, and the time to first token of a short request that arrives while 16 long
// ones decode, against its budget: two decode steps plus its own prefill (both measured in this run).
import { Engine, type StepEvent } from "../../engine/src/engine.js";
import { DEFAULT_SAMPLING } from "../../engine/src/sampling.js";
import { benchEngineOptions, engineDecode, median, percentile, prompts } from "../lib/measure.js";
import { fmtRate, fmtX, ratio, type BenchSection } from "../lib/section.js";

const section: BenchSection = {
  name: "batching",
  describe: "aggregate decode tok/s at 1/4/16/64 streams (BF16), and TTFT of a short request joining 16 decoding ones",
  async run(ctx) {
    const engine = await Engine.create(ctx.benchModel("BF16"), benchEngineOptions({ kvBytes: 1536 << 20, maxStepTokens: 640, maxOutRows: 128, maxConcurrentRequests: 256 }));
    try {
      const levels = ctx.quick ? [1, 4, 16] : [1, 4, 16, 64];
      const rates: { streams: number; wallTokS: number }[] = [];
      for (const c of levels) {
        const r = await engineDecode(engine, prompts(c, 16, c), ctx.quick ? 12 : 32);
        rates.push({ streams: c, wallTokS: r.wallTokS });
        ctx.log(`${c} streams: ${fmtRate(r.wallTokS)}`);
      }
      // The short request's own prefill, alone.
      const short = prompts(1, 16, 99)[0];
      const soloTtft: number[] = [];
      for (let i = 0; i < 3; i++) {
        const t0 = performance.now();
        for await (const e of engine.generate({ prompt: short, params: { ...DEFAULT_SAMPLING, maxNewTokens: 1 } })) if (e.type === "token") soloTtft.push((performance.now() - t0) / 1e3);
      }
      const ownPrefill = median(soloTtft);
      // 16 long requests decode; short ones arrive one at a time once they all decode.
      const stepTimes: number[] = [];
      let decoding = false;
      const onStep = (e: StepEvent) => {
        if (e.stats.prefillTokens === 0 && e.stats.decodeTokens >= 16) {
          decoding = true;
          stepTimes.push(e.micros / 1e6);
        }
      };
      engine.on("step", onStep);
      const ac = new AbortController();
      const long = prompts(16, 64, 7).map(async (p) => {
        try {
          for await (const _e of engine.generate({ prompt: p, params: { ...DEFAULT_SAMPLING, maxNewTokens: 4000, ignoreEos: true }, signal: ac.signal }));
        } catch {
          // cancelled at the end of the measurement
        }
      });
      while (!decoding) await new Promise((r) => setTimeout(r, 5));
      const ttft: number[] = [];
      for (let i = 0; i < (ctx.quick ? 5 : 20); i++) {
        const t0 = performance.now();
        for await (const e of engine.generate({ prompt: prompts(1, 16, 200 + i)[0], params: { ...DEFAULT_SAMPLING, maxNewTokens: 1 } }))
          if (e.type === "token") ttft.push((performance.now() - t0) / 1e3);
        await new Promise((r) => setTimeout(r, 20));
      }
      ac.abort();
      await Promise.all(long);
      engine.off("step", onStep);
      const step = median(stepTimes);
      const budget = 2 * step + ownPrefill;
      const p50 = percentile(ttft, 50), p99 = percentile(ttft, 99);
      const one = rates[0].wallTokS, r16 = rates.find((r) => r.streams === 16)!.wallTokS;
      return {
        json: { rates, ttft, ttftP50: p50, ttftP99: p99, decodeStepS: step, ownPrefillS: ownPrefill, budgetS: budget },
        summary: [
          { figure: "16 streams ÷ 1 stream (aggregate decode)", value: `${fmtX(ratio(r16, one))} (${fmtRate(r16)} vs ${fmtRate(one)})`, target: "≥ 5×", met: ratio(r16, one) >= 5 },
          { figure: "short request TTFT while 16 decode, p50 / p99", value: `${(p50 * 1e3).toFixed(0)} / ${(p99 * 1e3).toFixed(0)} ms (budget ${(budget * 1e3).toFixed(0)} ms = 2 steps of ${(step * 1e3).toFixed(0)} + own prefill ${(ownPrefill * 1e3).toFixed(0)})`, target: "p50 ≤ budget", met: p50 <= budget },
        ],
        charts: [
          {
            kind: "bars", file: "throughput-vs-streams.png", title: "Aggregate decode vs concurrent streams",
            subtitle: "BF16 bench model, greedy, wall clock", yLabel: "tokens/s",
            categories: rates.map((r) => String(r.streams)), series: [{ name: "loraserve", values: rates.map((r) => r.wallTokS) }],
            format: (v) => v.toFixed(0),
          },
        ],
      };
    } finally {
      engine.backend.close();
    }
  },
};

export default section;
