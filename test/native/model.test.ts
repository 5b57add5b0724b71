// The native forward pass against the independent float64 reference, for every tiny fixture model
// (architectures, dtypes, tied/untied, GQA ratios, RoPE variants, sliding window, sharded weights),
// on both the reference and the fast CPU kernels.
import { describe, expect, it } from "vitest";

import { Backend, type RowSampling } from "../../engine/src/backend.js";
import { native } from "../../engine/src/native.js";
import { Tokenizer } from "../../engine/src/tokenizer.js";
import { TINY_VARIANTS } from "../../scripts/tiny-models.js";
import { ReferenceModel } from "../helpers/reference-model.js";
import { tinyModels } from "../helpers/tiny.js";

const TEXT = "The quick brown fox jumps over the lazy dog, and then it runs away into the forest.";
const TOL = 2e-4; // absolute, on logits of magnitude ~10: float32 accumulation vs float64 (seen: ≤ 1.3e-5)

const row = (): RowSampling => ({
  sample: false, doSample: false, temperature: 1, topK: 0, topP: 1, typicalP: 1, minP: 0,
  repetitionPenalty: 1, presencePenalty: 0, frequencyPenalty: 0, seed: 0n, step: 0, nTop: 0, target: -1,
});

async function allLogits(be: Backend, ids: number[]): Promise<Float32Array> {
  const out = await be.step({
    tokens: ids.map((t, i) => ({ token: t, position: i, seq: 0, adapterSlot: -1 })),
    sequences: [{ blockTable: [0, 1, 2, 3] }],
    outRows: ids.map((_, i) => i),
    rows: ids.map(row),
    wantLogits: true,
  });
  return out.logits!;
}

describe.each(TINY_VARIANTS.map((v) => [v.name]))("%s", (name) => {
  const dir = tinyModels()[name];
  const ref = new ReferenceModel(dir);
  const ids = Tokenizer.load(dir).encode(TEXT).slice(0, 24);
  const expected = ref.forward(ids);

  it.each([["fast", false], ["reference", true]])("%s kernels: logits at every position match the float64 reference", async (_k, reference) => {
    const be = await Backend.load(dir, { kvBytes: 1 << 20, blockSize: 8, maxStepTokens: 64, maxOutRows: 64, loraSlots: 0, loraMaxRank: 8, reference });
    expect(be.info().backend).toBe(reference ? "cpu-reference" : native().cpuBackend);
    const got = await allLogits(be, ids);
    let maxDiff = 0;
    expected.forEach((e, t) => e.forEach((v, j) => (maxDiff = Math.max(maxDiff, Math.abs(v - got[t * ref.vocab + j])))));
    expect(maxDiff).toBeLessThan(TOL);
    be.close();
  });
});
