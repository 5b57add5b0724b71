// Section "prefix-cache": time to first token of requests that share a long system prompt, with the prefix cache
// (the default) and without it, on the bench model in BF16. Requests run one at a time, alternating between the
// two engines so that both see the same machine; each has the shared prompt and a question of its own.
import { Engine } from "../../engine/src/engine.js";
import { DEFAULT_SAMPLING } from "../../engine/src/sampling.js";
import { benchEngineOptions, median, prompts } from "../lib/measure.js";
import { fmtX, ratio, type BenchSection } from "../lib/section.js";

/** Seconds from submission to the first token, and the prefill tokens the engine computed for it. */
async function firstToken(engine: Engine, prompt: number[]): Promise<{ s: number; prefill: number }> {
  let prefill = 0;
  const count = (e: { stats: { prefillTokens: number } }) => (prefill += e.stats.prefillTokens);
  engine.on("step", count);
  const t0 = performance.now();
  let s = NaN;
  for await (const e of engine.generate({ prompt, params: { ...DEFAULT_SAMPLING, maxNewTokens: 1, ignoreEos: true } }))
    if (e.type === "token" && Number.isNaN(s)) s = (performance.now() - t0) / 1e3;
  engine.off("step", count);
  return { s, prefill };
}

const section: BenchSection = {
  name: "prefix-cache",
  describe: "time to first token of requests sharing a long system prompt, prefix cache on (the default) vs off",
  async run(ctx) {
    const shared = ctx.quick ? 128 : 512, question = 24, n = ctx.quick ? 3 : 6;
    const system = prompts(1, shared, 41)[0];
    const asks = prompts(n, question, 43).map((q) => [...system, ...q]);
    const opts = benchEngineOptions({ kvBytes: 512 << 20 });
    const on = await Engine.create(ctx.benchModel("BF16"), opts);
    const off = await Engine.create(ctx.benchModel("BF16"), { ...opts, prefixCaching: false });
    try {
      const rows: { on: { s: number; prefill: number }; off: { s: number; prefill: number } }[] = [];
      for (const p of asks) rows.push({ on: await firstToken(on, p), off: await firstToken(off, p) });
      // The first request fills the cache; the others find the system prompt there.
      const later = rows.slice(1);
      const onS = median(later.map((r) => r.on.s)), offS = median(later.map((r) => r.off.s));
      const onPrefill = median(later.map((r) => r.on.prefill)), offPrefill = median(later.map((r) => r.off.prefill));
      ctx.log(`first request: ${rows[0].on.s.toFixed(3)} s with the cache (filling it), ${rows[0].off.s.toFixed(3)} s without`);
      ctx.log(`later requests, median TTFT: ${onS.toFixed(3)} s with the cache (${onPrefill} prompt tokens computed) vs ${offS.toFixed(3)} s without (${offPrefill})`);
      return {
        json: { sharedTokens: shared, questionTokens: question, requests: n, rows },
        summary: [
          {
            figure: `TTFT with a shared ${shared}-token system prompt, cache off ÷ on (BF16)`,
            value: `${fmtX(ratio(offS, onS))} (${(onS * 1e3).toFixed(0)} ms vs ${(offS * 1e3).toFixed(0)} ms; ${onPrefill} vs ${offPrefill} prompt tokens computed)`,
          },
        ],
        charts: [
          {
            kind: "bars", file: "prefix-cache-ttft.png", title: "Time to first token with a shared system prompt",
            subtitle: `${shared} shared + ${question} own prompt tokens, bench model BF16, requests one at a time`,
            yLabel: "seconds", categories: ["first request", "later requests (median)"],
            series: [
              { name: "prefix cache on", values: [rows[0].on.s, onS] },
              { name: "prefix cache off", values: [rows[0].off.s, offS] },
            ],
            format: (v) => `${v.toFixed(2)} s`,
          },
        ],
      };
    } finally {
      on.backend.close();
      off.backend.close();
    }
  },
};

export default section;
