// Section "medusa" (speculative decoding issue): on the trained demo model with its trained Medusa heads, decode
// tokens/s and tokens per verification step with speculation on ÷ off, at batch 1 and 8, greedy outputs
// checked equal — with the full 8-node tree every step (what the heads can do) and with the tree size adapted
// to measured cost (the default); and prompt-lookup decoding on copy-heavy prompts (answers that quote the prompt).
import fs from "node:fs";
import path from "node:path";

import { readMedusa } from "../../engine/src/adapters/formats/medusa.js";
import { Engine } from "../../engine/src/engine.js";
import { DEFAULT_SAMPLING } from "../../engine/src/sampling.js";
import { DEMO_MODEL_DIR } from "../../server/src/config.js";
import { benchEngineOptions, median } from "../lib/measure.js";
import { fmtRate, fmtX, ratio, skipped, type BenchSection } from "../lib/section.js";

const OPTS = benchEngineOptions({ kvBytes: 256 << 20, maxOutRows: 256, maxBatchPrefillTokens: 256 });

const PROMPTS = ["The meaning of life is", "A friend in need", "You will", "Never trust a", "The best way to", "In the beginning", "Love is", "Today is a good day to", "My computer", "Tell me", "Money is", "When in doubt"];

/** Greedy generations to their natural end (EOS; the heads were trained on text, not on what follows EOS). */
async function run(engine: Engine, texts: string[], newTokens: number): Promise<{ tokS: number; outputs: number[][] }> {
  const ids = texts.map((t) => engine.tokenizer.encode(t));
  const t0 = performance.now();
  let tokens = 0;
  const outputs = await Promise.all(
    ids.map(async (prompt) => {
      const out: number[] = [];
      for await (const e of engine.generate({ prompt, params: { ...DEFAULT_SAMPLING, maxNewTokens: newTokens } }))
        if (e.type === "token") out.push(e.id), tokens++;
      return out;
    }),
  );
  return { tokS: tokens / ((performance.now() - t0) / 1e3), outputs };
}

const section: BenchSection = {
  name: "medusa",
  describe: "demo model: decode speedup and tokens per step with its Medusa heads (batch 1 and 8) and with prompt lookup on copy-heavy prompts",
  async run(ctx) {
    if (!fs.existsSync(path.join(DEMO_MODEL_DIR, "medusa", "config.json"))) return skipped(`no demo Medusa heads in ${DEMO_MODEL_DIR}/medusa (make demo-model)`);
    const plain = await Engine.create(DEMO_MODEL_DIR, OPTS);
    const medusa = await Engine.create(DEMO_MODEL_DIR, { ...OPTS, medusaTreeSize: 8, fixedSpeculation: true });
    const adaptive = await Engine.create(DEMO_MODEL_DIR, { ...OPTS, medusaTreeSize: 8 });
    const heads = await readMedusa(path.join(DEMO_MODEL_DIR, "medusa"), {
      numLayers: medusa.spec.numLayers, hiddenSize: medusa.spec.hiddenSize, intermediateSize: medusa.spec.intermediateSize, numHeads: medusa.spec.numHeads,
      numKvHeads: medusa.spec.numKvHeads, headDim: medusa.spec.headDim, vocabSize: medusa.spec.vocabSize,
    });
    for (const e of [medusa, adaptive]) {
      e.backend.medusaLoad(0, { heads: heads.heads, ownLmHead: heads.version === 1, w: heads.w, b: heads.b, lm: heads.lm });
      e.setDefaultMedusa(0, heads.heads);
    }
    const lookup = await Engine.create(DEMO_MODEL_DIR, { ...OPTS, speculativeTokens: 6 });
    const newTokens = ctx.quick ? 48 : 128;
    const rows: { batch: number; plainTokS: number; medusaTokS: number; speedup: number; tokensPerStep: number; adaptiveTokS: number; adaptiveSpeedup: number; meanTreeSize: number; identical: boolean }[] = [];
    try {
      for (const batch of [1, 8]) {
        const p: number[] = [], m: number[] = [], a: number[] = [];
        let identical = true;
        const before = { acc: medusa.specAccepted, steps: medusa.specSteps };
        adaptive.treeSizes.clear();
        // Batch 1: every prompt alone, one after the other; batch 8: eight at once.
        const batches = batch === 1 ? PROMPTS.map((t) => [t]) : [PROMPTS.slice(0, 8)];
        for (let rep = 0; rep < (ctx.quick ? 2 : 12); rep++) {
          for (const [bi, texts] of batches.entries()) {
            // Whichever engine runs first after another pays for its cold caches and sleeping threads: the order
            // rotates.
            const order = [0, 1, 2].map((k) => (k + bi + rep) % 3);
            const got: Awaited<ReturnType<typeof run>>[] = [];
            for (const k of order) got[k] = await run([plain, medusa, adaptive][k], texts, newTokens);
            const [x, y, z] = got;
            p.push(x.tokS);
            m.push(y.tokS);
            a.push(z.tokS);
            identical &&= JSON.stringify(x.outputs) === JSON.stringify(y.outputs) && JSON.stringify(x.outputs) === JSON.stringify(z.outputs);
          }
        }
        const tokensPerStep = 1 + (medusa.specAccepted - before.acc) / Math.max(1, medusa.specSteps - before.steps);
        let sizeSteps = 0, sizeSum = 0;
        for (const [size, count] of adaptive.treeSizes) (sizeSteps += count), (sizeSum += size * count);
        const meanTreeSize = sizeSum / Math.max(1, sizeSteps);
        rows.push({ batch, plainTokS: median(p), medusaTokS: median(m), speedup: ratio(median(m), median(p)), tokensPerStep, adaptiveTokS: median(a), adaptiveSpeedup: ratio(median(a), median(p)), meanTreeSize, identical });
        ctx.log(`batch ${batch}: ${fmtRate(median(p))} → ${fmtRate(median(m))} with the full tree (${tokensPerStep.toFixed(2)} tokens/step), ${fmtRate(median(a))} adaptive (mean tree ${meanTreeSize.toFixed(1)} nodes), outputs ${identical ? "identical" : "DIFFER"}`);
      }
      // Copy-heavy: the prompt holds a passage and the answer quotes it.
      const passage = "Never put off till tomorrow what you can do the day after tomorrow. A clean desk is a sign of a cluttered drawer.";
      const copy = [`${passage}\nAgain: ${passage.slice(0, 20)}`, `Quote: ${passage}\nQuote: ${passage.slice(0, 12)}`];
      const lp: number[] = [], lq: number[] = [];
      for (let rep = 0; rep < 2; rep++) {
        lp.push((await run(plain, copy, newTokens)).tokS);
        lq.push((await run(lookup, copy, newTokens)).tokS);
      }
      const lookupSpeedup = ratio(median(lq), median(lp));
      const lookupPerStep = 1 + lookup.specAccepted / Math.max(1, lookup.specSteps);
      ctx.log(`prompt lookup on copy-heavy prompts: ${fmtX(lookupSpeedup)}, ${lookupPerStep.toFixed(2)} tokens/step`);
      const b1 = rows[0];
      return {
        json: { newTokens, heads: heads.heads, treeSize: 8, rows, lookup: { speedup: lookupSpeedup, tokensPerStep: lookupPerStep, plainTokS: median(lp), lookupTokS: median(lq) } },
        summary: [
          { figure: "Medusa tokens per verification step (batch 1; accepted drafts + 1)", value: `${b1.tokensPerStep.toFixed(2)} (${(b1.tokensPerStep - 1).toFixed(2)} accepted drafts)`, target: "≥ 1.8", met: b1.tokensPerStep >= 1.8 },
          { figure: "Medusa decode speedup, batch 1 (tree size adapted, the default)", value: `${fmtX(b1.adaptiveSpeedup)} (${fmtRate(b1.adaptiveTokS)} vs ${fmtRate(b1.plainTokS)}; mean tree ${b1.meanTreeSize.toFixed(1)} nodes)`, target: "≥ 1.4×", met: b1.adaptiveSpeedup >= 1.4 },
          { figure: "Medusa decode speedup, batch 1, full 8-node tree every step", value: `${fmtX(b1.speedup)} (${fmtRate(b1.medusaTokS)})` },
          { figure: "Medusa decode speedup, batch 8 (adapted / full tree)", value: `${fmtX(rows[1].adaptiveSpeedup)} / ${fmtX(rows[1].speedup)}` },
          { figure: "greedy outputs with Medusa = without", value: rows.every((r) => r.identical) ? "identical" : "DIFFER", target: "identical", met: rows.every((r) => r.identical) },
          { figure: "prompt lookup speedup, copy-heavy prompts", value: `${fmtX(lookupSpeedup)} (${lookupPerStep.toFixed(2)} tokens/step)` },
        ],
        charts: [
          {
            kind: "bars", file: "medusa-speedup.png", title: "Speculative decoding on the demo model", subtitle: `greedy, ${newTokens} tokens, ${heads.heads} Medusa heads`,
            yLabel: "tokens/s", categories: ["batch 1", "batch 8", "copy-heavy (lookup)"],
            series: [
              { name: "plain", values: [rows[0].plainTokS, rows[1].plainTokS, median(lp)] },
              { name: "speculative, full tree", values: [rows[0].medusaTokS, rows[1].medusaTokS, median(lq)] },
              { name: "speculative, adapted tree", values: [rows[0].adaptiveTokS, rows[1].adaptiveTokS, median(lq)] },
            ],
            format: (v) => v.toFixed(0),
          },
        ],
      };
    } finally {
      plain.backend.close();
      medusa.backend.close();
      adaptive.backend.close();
      lookup.backend.close();
    }
  },
};

export default section;
