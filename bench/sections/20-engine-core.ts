// Section "engine-core": our engine against llama.cpp on the same weights (our GGUF conversion of the bench model),
// same prompts, each of our figures followed at once by llama.cpp's (prefill 512, decode at 1/8/32 sequences), and
// batch-1 decode against the memory roofline. The measurements themselves live in bench/engine-core.ts.
import type { DType } from "../../engine/src/model/safetensors.js";
import { benchCore, type CoreCompanion, type CoreResult } from "../engine-core.js";
import type { ChartSpec } from "../lib/chart.js";
import { fmtRate, fmtX, ratio, type BenchSection, type SummaryRow } from "../lib/section.js";

export const CORE_TARGETS = { prefill: 2, decode1: 1.2, decode32: 2, roofline: 0.8, scale32: 6, rss: 1.15 };

const section: BenchSection = {
  name: "engine-core",
  describe: "prefill 512 tok and decode at 1/8/32 sequences, ours vs llama.cpp interleaved on the same weights; batch-1 decode vs the memory roofline",
  async run(ctx) {
    // Quick: F32 only, no 8-sequence point, few tokens (llama.cpp decodes 32 sequences slowly on 2 threads).
    const dtypes: DType[] = ctx.quick ? ["F32"] : ["F32", "BF16"];
    const concurrency = ctx.quick ? [1, 32] : [1, 8, 32];
    const peer = await ctx.peer();
    const runs: (CoreResult & { ratios?: Record<string, number> })[] = [];
    for (const dtype of dtypes) {
      const model = peer ? await peer.loadModel(ctx.benchGguf(dtype)) : undefined;
      const companion: CoreCompanion | undefined = model && { prefill: (p) => model.prefill(p), decode: (ps, n) => model.decode(ps, n) };
      ctx.log(`${dtype}: measuring${model ? " with llama.cpp after each figure" : " (no peer: ours only)"}`);
      try {
        const r = await benchCore(dtype, ctx.quick, { companion, concurrency, prefillReps: ctx.quick ? 1 : 2, newTokens: ctx.quick ? 5 : 16, decodePromptLen: ctx.quick ? 4 : 16 });
        const ratios: Record<string, number> = {};
        if (r.companion) {
          ratios.prefill = ratio(r.prefillWallTokS, r.companion.prefillTokS);
          for (const d of r.decode) ratios[`decode${d.concurrency}`] = ratio(d.wallTokS, r.companion.decode.find((x) => x.concurrency === d.concurrency)!.tokS);
        }
        ratios.roofline = r.rooflineFraction;
        runs.push({ ...r, ratios });
        ctx.log(
          `${dtype}: prefill ${fmtRate(r.prefillWallTokS)} vs ${fmtRate(r.companion?.prefillTokS ?? NaN)}; decode ` +
            r.decode.map((d, i) => `×${d.concurrency} ${fmtRate(d.wallTokS)} vs ${fmtRate(r.companion?.decode[i].tokS ?? NaN)}`).join(", ") +
            `; roofline ${fmtRate(r.rooflineTokS)}`,
        );
      } finally {
        await model?.close();
      }
    }

    const summary: SummaryRow[] = [];
    for (const r of runs) {
      const q = r.ratios!;
      if (r.companion) {
        summary.push(
          { figure: `${r.dtype} prefill 512 vs llama.cpp`, value: fmtX(q.prefill), target: `≥ ${CORE_TARGETS.prefill}×`, met: q.prefill >= CORE_TARGETS.prefill },
          { figure: `${r.dtype} decode batch 1 vs llama.cpp`, value: fmtX(q.decode1), target: `≥ ${CORE_TARGETS.decode1}×`, met: q.decode1 >= CORE_TARGETS.decode1 },
          ...(q.decode8 !== undefined ? [{ figure: `${r.dtype} decode 8 seqs vs llama.cpp`, value: fmtX(q.decode8) }] : []),
          { figure: `${r.dtype} decode 32 seqs vs llama.cpp`, value: fmtX(q.decode32), target: `≥ ${CORE_TARGETS.decode32}×`, met: q.decode32 >= CORE_TARGETS.decode32 },
        );
      }
      summary.push({ figure: `${r.dtype} decode batch 1 / roofline`, value: `${q.roofline.toFixed(2)} (${fmtRate(r.decode[0].wallTokS)} of ${fmtRate(r.rooflineTokS)} at ${(r.rooflineBandwidth / 1e9).toFixed(1)} GB/s)`, target: `≥ ${CORE_TARGETS.roofline}`, met: q.roofline >= CORE_TARGETS.roofline });
      const d32 = r.decode.find((d) => d.concurrency === 32);
      if (d32) {
        const scale = ratio(d32.wallTokS, r.decode[0].wallTokS);
        summary.push({ figure: `${r.dtype} decode 32 seqs ÷ our batch 1`, value: `${fmtX(scale)} (${fmtRate(d32.wallTokS)} vs ${fmtRate(r.decode[0].wallTokS)})`, target: `≥ ${CORE_TARGETS.scale32}×`, met: scale >= CORE_TARGETS.scale32 });
      }
      // The KV pool's pages count only once touched, so the bound holds the whole pool (the worst case).
      const bound = CORE_TARGETS.rss * r.weightBytes + r.kvBytes;
      summary.push({
        figure: `${r.dtype} resident set after load`,
        value: `${(r.rssAfterLoad / 1e6).toFixed(0)} MB (weights ${(r.weightBytes / 1e6).toFixed(0)} MB, KV pool ${(r.kvBytes / 1e6).toFixed(0)} MB)`,
        target: `≤ ${CORE_TARGETS.rss} × weights + KV`, met: r.rssAfterLoad <= bound,
      });
    }

    const cats = ["prefill 512", ...concurrency.map((c) => (c === 1 ? "decode, batch 1" : `decode, ${c} seqs`))];
    const keys = ["prefill", ...concurrency.map((c) => `decode${c}`)];
    const charts: ChartSpec[] = [];
    if (runs.some((r) => r.companion))
      charts.push({
        kind: "bars", file: "engine-vs-llamacpp.png", title: "loraserve vs llama.cpp (same weights, same prompts, same run)",
        subtitle: `ratio of tokens/s, ours ÷ llama.cpp; ${ctx.hardware.threads} threads; red: targets`, yLabel: "speed ratio (×)",
        categories: cats, series: runs.filter((r) => r.companion).map((r) => ({ name: r.dtype, values: keys.map((k) => r.ratios![k] ?? null) })),
        targets: keys.map((k) => (k === "prefill" ? CORE_TARGETS.prefill : k === "decode1" ? CORE_TARGETS.decode1 : k === "decode32" ? CORE_TARGETS.decode32 : null)),
        refLines: [{ y: 1, label: "parity" }], format: (v) => `${v.toFixed(2)}×`,
      });
    charts.push({
      kind: "bars", file: "engine-vs-roofline.png", title: "Batch-1 decode against the memory roofline",
      subtitle: `roofline = read bandwidth probed just before and after each batch-1 run, median (${runs.map((r) => `${r.dtype} ${(r.rooflineBandwidth / 1e9).toFixed(1)}`).join(", ")} GB/s) ÷ weight bytes per token`, yLabel: "tokens/s",
      categories: runs.map((r) => r.dtype),
      series: [
        { name: "loraserve", values: runs.map((r) => r.decode[0].wallTokS) },
        ...(runs.some((r) => r.companion) ? [{ name: "llama.cpp", values: runs.map((r) => r.companion?.decode[0].tokS ?? null) }] : []),
        { name: "roofline", values: runs.map((r) => r.rooflineTokS) },
        { name: "0.8 × roofline", values: runs.map((r) => CORE_TARGETS.roofline * r.rooflineTokS) },
      ],
    });
    charts.push({
      kind: "lines", file: "throughput-vs-concurrency.png", title: "Aggregate decode throughput vs concurrent sequences",
      subtitle: `greedy, ${ctx.quick ? 4 : 16}-token prompts, one request per sequence; wall-clock over decode-only steps`, xLabel: "concurrent sequences", yLabel: "tokens/s (all sequences)", xLog2: true,
      series: runs.flatMap((r) => [
        { name: `loraserve ${r.dtype}`, points: r.decode.map((d) => [d.concurrency, d.wallTokS] as [number, number]) },
        ...(r.companion ? [{ name: `llama.cpp ${r.dtype}`, points: r.companion.decode.map((d) => [d.concurrency, d.tokS] as [number, number]) }] : []),
      ]),
    });
    return { json: { runs, peerUnavailable: ctx.peerUnavailable, targets: CORE_TARGETS }, summary, charts };
  },
};

export default section;
