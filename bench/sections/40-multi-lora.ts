// Section "multi-lora": aggregate decode throughput of our engine when its streams use 1…128 distinct rank-16
// adapters (all seven projections) against the same streams on the base model, and against llama.cpp serving 8
// adapters the way its users do (one context per adapter set, all contexts decoding at once). F32 weights.
import fs from "node:fs";
import path from "node:path";

import { Engine } from "../../engine/src/engine.js";
import { readModelSpec } from "../../engine/src/model/config.js";
import { baseShape, installAdapters, loraGguf, randomLora } from "../lib/adapters.js";
import { decodeAcross } from "../lib/llama-cpp.js";
import { benchEngineOptions, engineDecode, prompts } from "../lib/measure.js";
import type { ChartSpec } from "../lib/chart.js";
import { fmtRate, fmtX, ratio, skipped, type BenchSection, type SummaryRow } from "../lib/section.js";

export const MULTI_LORA_TARGET = 3; // ours, 32 streams over 32 adapters ÷ llama.cpp, 32 streams over 8 adapters
const RANK = 16, STREAMS = 32, PEER_ADAPTERS = 8;

const section: BenchSection = {
  name: "multi-lora",
  describe: `32 streams over 1…128 distinct rank-${RANK} adapters vs the same streams on the base model (ours); llama.cpp serving ${PEER_ADAPTERS} adapters one context each`,
  async run(ctx) {
    const dir = ctx.benchModel("F32");
    const spec = readModelSpec(dir);
    const counts = ctx.quick ? [1, 32] : [1, 2, 4, 8, 16, 32, 64, 128];
    const newTokens = ctx.quick ? 4 : 8, promptLen = 4;
    const maxStreams = Math.max(STREAMS, ...counts);
    const engine = await Engine.create(
      dir,
      benchEngineOptions({ kvBytes: 1.5 * 2 ** 30, maxOutRows: Math.max(64, maxStreams), maxConcurrentRequests: 512, loraSlots: Math.max(...counts), loraMaxRank: RANK }),
    );
    const ours: { adapters: number; streams: number; wallTokS: number; baseWallTokS: number; ratio: number }[] = [];
    const naive: { adapters: number; wallTokS: number; oursOverNaive: number }[] = [];
    const base = new Map<number, number[]>();
    const make = (i: number) => randomLora(baseShape(spec), RANK, i + 1);
    let keys: string[];
    const peer = await ctx.peer();
    let llama: { adapters: number; streams: number; tokS: number; baseTokS?: number } | undefined;
    /** llama.cpp serving PEER_ADAPTERS of the same adapters, one context each; run right after our 32-adapter run. */
    const measurePeer = async () => {
      if (!peer) return;
      const loraDir = path.join(ctx.cacheDir, "lora");
      fs.mkdirSync(loraDir, { recursive: true });
      const files = Array.from({ length: PEER_ADAPTERS }, (_, i) => loraGguf(loraDir, spec, RANK, i + 1));
      const model = await peer.loadModel(ctx.benchGguf("F32"));
      try {
        const per = STREAMS / PEER_ADAPTERS;
        const all = prompts(STREAMS, promptLen, 11);
        const ctxs = [];
        for (const f of files) ctxs.push(await model.context(per, promptLen + newTokens + 16, { lora: { adapters: [{ filePath: f, scale: 1 }] } }));
        let tokS: number;
        try {
          tokS = await decodeAcross(ctxs, ctxs.map((_, i) => all.slice(i * per, (i + 1) * per)), newTokens);
        } finally {
          for (const c of ctxs) await c.dispose();
        }
        const baseTokS = ctx.quick ? undefined : await model.decode(all, newTokens);
        llama = { adapters: PEER_ADAPTERS, streams: STREAMS, tokS, baseTokS };
        ctx.log(`llama.cpp: ${STREAMS} streams over ${PEER_ADAPTERS} adapters (${PEER_ADAPTERS} contexts × ${per} sequences): ${fmtRate(tokS)}${baseTokS ? ` (base, one context: ${fmtRate(baseTokS)})` : ""}`);
      } finally {
        await model.close();
      }
    };
    try {
      try {
        keys = await installAdapters(engine, 0, make);
      } catch (e) {
        return skipped(`our engine cannot serve adapters yet: ${(e as Error).message}`);
      }
      const baseRate = async (streams: number) => {
        const r = (await engineDecode(engine, prompts(streams, promptLen, 11), newTokens)).wallTokS;
        base.set(streams, [...(base.get(streams) ?? []), r]);
        return r;
      };
      // Each adapter run is paired with a base-model run of the same streams right before it: the machine's load
      // drifts within a minute, so a ratio is only taken between neighbours.
      let loaded = 0;
      for (const n of counts) {
        const streams = Math.max(STREAMS, n);
        // Made one at a time and dropped once copied into its slot (128 adapters are 3.6 GB in F32).
        keys = await installAdapters(engine, n, make, loaded);
        loaded = n;
        const b = await baseRate(streams);
        const r = await engineDecode(engine, prompts(streams, promptLen, 11), newTokens, Array.from({ length: streams }, (_, i) => keys[i % n]));
        ours.push({ adapters: n, streams, wallTokS: r.wallTokS, baseWallTokS: b, ratio: ratio(r.wallTokS, b) });
        ctx.log(`ours: ${streams} streams over ${n} adapter(s): ${fmtRate(r.wallTokS)}, base model just before: ${fmtRate(b)} (${fmtX(ratio(r.wallTokS, b))})`);
        if (n > 1 && n <= STREAMS) {
          // The naive way: one adapter at a time, merged into the weights, its streams batched. Its decode runs at the
          // base model's speed for streams/n sequences (the merge and weight swap between adapters is not counted,
          // which flatters it).
          const nv = await baseRate(Math.max(1, Math.floor(streams / n)));
          naive.push({ adapters: n, wallTokS: nv, oursOverNaive: ratio(r.wallTokS, nv) });
          ctx.log(`naive (${n} adapters one at a time, ${Math.floor(streams / n)} streams each): ${fmtRate(nv)} → ours ${fmtX(ratio(r.wallTokS, nv))}`);
        }
        if (n === STREAMS) await measurePeer();
      }
    } finally {
      engine.backend.close();
    }

    const at32 = ours.find((o) => o.adapters === STREAMS);
    const headline = at32 && llama ? ratio(at32.wallTokS, llama.tokS) : NaN;
    const summary: SummaryRow[] = ours.map((o) => ({
      figure: `${o.streams} streams over ${o.adapters} adapter(s) ÷ base`,
      value: fmtX(o.ratio),
      ...(o.adapters === STREAMS ? { target: "≥ 0.85×", met: o.ratio >= 0.85 } : {}),
    }));
    for (const nv of naive) summary.push({ figure: `ours ÷ naive one-adapter-at-a-time, ${nv.adapters} adapters`, value: `${fmtX(nv.oursOverNaive)} (naive ${fmtRate(nv.wallTokS)})` });
    if (llama)
      summary.push({
        figure: `ours ${STREAMS} adapters ÷ llama.cpp ${PEER_ADAPTERS} adapters (${STREAMS} streams)`,
        value: `${fmtX(headline)} (${fmtRate(at32?.wallTokS ?? NaN)} vs ${fmtRate(llama.tokS)})`,
        target: `≥ ${MULTI_LORA_TARGET}×`,
        met: headline >= MULTI_LORA_TARGET,
      });
    return {
      json: { rank: RANK, targets: "q k v o gate up down", dtype: "F32", newTokens, promptLen, ours, naive, baseRuns: Object.fromEntries(base), llamaCpp: llama ?? null, peerUnavailable: ctx.peerUnavailable, headline },
      summary,
      charts: [multiLoraChart(ours, llama?.tokS, headline)],
    };
  },
};

/**
 * The ratio-vs-adapters chart. llama.cpp's own "8 contexts ÷ one 32-sequence context" is left out: node-llama-cpp
 * runs several contexts faster than one context with as many sequences, so that ratio says nothing about LoRA.
 */
export function multiLoraChart(ours: { adapters: number; ratio: number; wallTokS: number }[], llamaTokS: number | undefined, headline: number): ChartSpec {
  return {
    kind: "lines", file: "multi-lora.png", title: "Multi-LoRA throughput vs distinct adapters in the batch",
    subtitle: `aggregate decode tok/s with adapters ÷ the same streams on the base model just before; ≥${STREAMS} streams, rank ${RANK} on all 7 projections, F32` +
      (llamaTokS !== undefined ? `. At 32: ours ÷ llama.cpp serving ${PEER_ADAPTERS} adapters a context each = ${fmtX(headline)}` : ""),
    xLabel: "distinct adapters", yLabel: "throughput ÷ base model", xLog2: true,
    series: [{ name: "loraserve", points: ours.map((o) => [o.adapters, o.ratio] as [number, number]) }],
    refLines: [{ y: 1, label: "base model" }],
    format: (v) => v.toFixed(2),
  };
}

export default section;
