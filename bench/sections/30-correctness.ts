// Section "correctness": our greedy tokens against llama.cpp's on the F32 bench model (its F32 KV cache, flash
// attention off, so both compute in F32). Sequences may part only at a near-tie: where our top-2 log-probability
// gap is under NEAR_TIE_NATS. After a parting the contexts differ, so the rest of that sequence is not compared.
import { Engine } from "../../engine/src/engine.js";
import { benchEngineOptions, engineGreedy, prompts } from "../lib/measure.js";
import { skipped, type BenchSection } from "../lib/section.js";

/** A parting counts as a near-tie when our top-1 and top-2 log-probabilities are closer than this. */
export const NEAR_TIE_NATS = 1e-3;

const section: BenchSection = {
  name: "correctness",
  describe: `greedy tokens, ours vs llama.cpp on the F32 bench model; partings allowed only at near-ties (top-2 gap < ${NEAR_TIE_NATS} nats)`,
  async run(ctx) {
    const peer = await ctx.peer();
    if (!peer) return skipped(`needs llama.cpp: ${ctx.peerUnavailable}`);
    const n = ctx.quick ? 2 : 6, newTokens = ctx.quick ? 12 : 24;
    const ps = prompts(n, ctx.quick ? 16 : 24, 3);
    const engine = await Engine.create(ctx.benchModel("F32"), benchEngineOptions({ kvBytes: 256 << 20 }));
    let ours;
    try {
      ours = await engineGreedy(engine, ps, newTokens);
    } finally {
      engine.backend.close();
    }
    const model = await peer.loadModel(ctx.benchGguf("F32"));
    // One single-sequence context per prompt: llama.cpp 3.21.1 with several sequences in one context (F32 KV, no
    // flash attention) parts from its own single-sequence tokens after a few steps, so that path is no reference.
    const theirs: { tokens: number[]; gaps: number[] }[] = [];
    try {
      for (const p of ps) theirs.push((await model.greedy([p], newTokens, true))[0]);
    } finally {
      await model.close();
    }
    let compared = 0, agreed = 0, nearTies = 0, realPartings = 0, maxGapDiff = 0;
    const perPrompt = ps.map((_, i) => {
      const a = ours[i], b = theirs[i];
      let k = 0;
      while (k < newTokens && a.tokens[k] === b.tokens[k]) {
        maxGapDiff = Math.max(maxGapDiff, Math.abs(a.gaps[k] - b.gaps[k]));
        k++;
      }
      compared += Math.min(newTokens, k + 1);
      agreed += k;
      const parted = k < newTokens;
      const nearTie = parted && a.gaps[k] < NEAR_TIE_NATS;
      if (parted && nearTie) nearTies++;
      if (parted && !nearTie) realPartings++;
      return { ours: a.tokens, llamaCpp: b.tokens, agreeFor: k, partedAt: parted ? k : null, ourGapThere: parted ? a.gaps[k] : null, theirGapThere: parted ? b.gaps[k] : null, nearTie };
    });
    ctx.log(`${agreed}/${n * newTokens} tokens agree; ${nearTies} parting(s) at near-ties, ${realPartings} elsewhere; largest top-2 gap difference where they agree: ${maxGapDiff.toExponential(2)} nats`);
    return {
      json: { prompts: n, newTokens, nearTieNats: NEAR_TIE_NATS, agreed, compared, nearTies, realPartings, maxGapDiffNats: maxGapDiff, perPrompt },
      summary: [
        { figure: "greedy tokens equal to llama.cpp (F32)", value: `${agreed}/${n * newTokens}` },
        { figure: `partings not at a near-tie (< ${NEAR_TIE_NATS} nats)`, value: String(realPartings), target: "0", met: realPartings === 0 },
        { figure: "largest top-2 gap difference, ours vs llama.cpp", value: `${maxGapDiff.toExponential(1)} nats` },
      ],
    };
  },
};

export default section;
