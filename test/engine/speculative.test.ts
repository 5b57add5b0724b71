// Speculative decoding: greedy output is token for token the same with Medusa trees and prompt lookup as
// without, alone, batched, with LoRA adapters and with a logit bias; the KV cache after rejected drafts matches a fresh run;
// sampling keeps its distribution (chi-square test); broken Medusa adapters are refused clearly.
import path from "node:path";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { readMedusa } from "../../engine/src/adapters/formats/medusa.js";
import type { Engine } from "../../engine/src/engine.js";
import { adapterEngine, shapeOf, writeAdapter, type AdapterEngine } from "../helpers/lora.js";
import { writeMedusa } from "../helpers/medusa.js";
import { collect, greedy, rng, tinyEngine } from "../helpers/tiny.js";

const MODEL = "llama-f32"; // its greedy output rarely repeats: drafts mostly rejected
const LOOPY = "llama-bf16-tied-linear"; // tied embeddings: output falls into repetition, drafts mostly accepted
const r = rng(11);
const PROMPTS = Array.from({ length: 12 }, (_, i) => Array.from({ length: 3 + Math.floor(r(40)) }, () => (i % 3 === 0 ? 500 + Math.floor(r(8)) : 100 + Math.floor(r(20000)))));

async function outputs(engine: Engine, prompts: number[][], n = 24, extra = {}): Promise<number[][]> {
  const runs = prompts.map((p) => collect(engine.generate({ prompt: p, params: greedy(n), ...extra })));
  return (await Promise.all(runs)).map((x) => x.ids[0]);
}

let plain: Engine;
let expected: number[][];
beforeAll(async () => {
  plain = await tinyEngine(MODEL);
  expected = [];
  for (const p of PROMPTS) expected.push((await outputs(plain, [p]))[0]);
});
afterAll(() => plain.backend.close());

describe("prompt lookup", () => {
  it.each([[MODEL], [LOOPY]])("%s: greedy outputs are identical with --speculative-tokens 4, alone and batched", async (model) => {
    const base = await tinyEngine(model);
    const want = await outputs(base, PROMPTS, 48);
    base.backend.close();
    const e = await tinyEngine(model, { speculativeTokens: 4, fixedSpeculation: true });
    for (const [i, p] of PROMPTS.entries()) expect((await outputs(e, [p], 48))[0], `prompt ${i} alone`).toEqual(want[i]);
    expect(await outputs(e, PROMPTS, 48)).toEqual(want);
    expect(e.specProposed).toBeGreaterThan(0);
    if (model === LOOPY) expect(e.specAccepted / e.specProposed).toBeGreaterThan(0.5);
    expect(e.scheduler.blocks.usedCount).toBe(0);
    e.backend.close();
  });
});

describe("Medusa", () => {
  let ae: AdapterEngine;
  beforeAll(async () => {
    // Fixed trees: these tests check verification, which adaptive sizing would mostly skip with random heads.
    ae = await adapterEngine(MODEL, { slots: 8, fixedSpeculation: true });
    const s = shapeOf(ae.engine);
    writeMedusa(path.join(ae.root, "medusa-rand"), { hidden: s.hiddenSize, vocab: s.vocabSize, heads: 4, seed: 3 });
    writeMedusa(path.join(ae.root, "medusa-zero"), { hidden: s.hiddenSize, vocab: s.vocabSize, heads: 4, zero: true });
    writeMedusa(path.join(ae.root, "medusa-3"), { hidden: s.hiddenSize, vocab: s.vocabSize, heads: 3, seed: 5 });
    writeMedusa(path.join(ae.root, "medusa-v1"), { hidden: s.hiddenSize, vocab: s.vocabSize, heads: 4, version: 1, seed: 6 });
    writeMedusa(path.join(ae.root, "medusa-wide"), { hidden: s.hiddenSize * 2, vocab: s.vocabSize, heads: 4, seed: 7 });
    for (let i = 0; i < 4; i++) writeAdapter(path.join(ae.root, `lora${i}`), s, { rank: 8, alpha: 16, targets: ["q_proj", "v_proj", "lm_head"], seed: 40 + i, bScale: 2 });
    const heads = await ae.registry.loadDefaultMedusa(path.join(ae.root, "medusa-rand"), "local", undefined);
    ae.engine.setDefaultMedusa(0, heads!);
  });
  afterAll(() => ae.close());

  it("server-default heads: greedy identical over many prompts, alone and batched; trees are proposed", async () => {
    for (const [i, p] of PROMPTS.entries()) expect((await outputs(ae.engine, [p]))[0], `prompt ${i}`).toEqual(expected[i]);
    expect(await outputs(ae.engine, PROMPTS)).toEqual(expected);
    expect(ae.engine.specProposed).toBeGreaterThan(PROMPTS.length * 20);
  });

  it("per-request heads (version 2, same head count): greedy identical", async () => {
    const before = ae.engine.specProposed;
    const runs = PROMPTS.map((p) =>
      ae.engine.submit({ input: { tokens: p }, adapter: { id: path.join(ae.root, "medusa-zero"), source: "local" }, params: greedy(24) }).then((s) => collect(s.events)),
    );
    expect((await Promise.all(runs)).map((x) => x.ids[0])).toEqual(expected);
    expect(ae.engine.specProposed).toBeGreaterThan(before);
  });

  it("a logit bias applies in verification: greedy with a bias is identical with and without Medusa", async () => {
    // Ban each prompt's third greedy token and favour a fixed one a little: outputs change from there on.
    const biased = (i: number) => greedy(24, { logitBias: { ids: Int32Array.from([expected[i][2], 777]), values: Float32Array.from([-100, 2.5]) } });
    const before = ae.engine.specProposed;
    for (const [i, p] of PROMPTS.entries()) {
      const want = (await collect(plain.generate({ prompt: p, params: biased(i) }))).ids[0];
      expect(want.slice(0, 2), `prompt ${i}`).toEqual(expected[i].slice(0, 2));
      expect(want[2]).not.toBe(expected[i][2]);
      expect((await collect(ae.engine.generate({ prompt: p, params: biased(i) }))).ids[0], `prompt ${i}`).toEqual(want);
    }
    expect(ae.engine.specProposed).toBeGreaterThan(before);
  });

  it("on a repeating model, Medusa drafts are accepted and output is unchanged", async () => {
    const loopy = await adapterEngine(LOOPY, { slots: 2, fixedSpeculation: true });
    const s = shapeOf(loopy.engine);
    // Zero heads propose the current token again: right whenever the model repeats itself.
    writeMedusa(path.join(loopy.root, "zero"), { hidden: s.hiddenSize, vocab: s.vocabSize, heads: 4, zero: true });
    loopy.engine.setDefaultMedusa(0, (await loopy.registry.loadDefaultMedusa(path.join(loopy.root, "zero"), "local", undefined))!);
    const base = await tinyEngine(LOOPY);
    const want = await outputs(base, PROMPTS, 48);
    base.backend.close();
    expect(await outputs(loopy.engine, PROMPTS, 48)).toEqual(want);
    expect(loopy.engine.specAccepted / loopy.engine.specSteps).toBeGreaterThan(1);
    loopy.close();
  });

  it("adaptive prompt-lookup length (the default): output unchanged, chains still proposed on a repeating model", async () => {
    const base = await tinyEngine(LOOPY);
    const want = await outputs(base, PROMPTS, 48);
    base.backend.close();
    const e = await tinyEngine(LOOPY, { speculativeTokens: 6 });
    expect(await outputs(e, PROMPTS, 48)).toEqual(want);
    expect(e.specProposed).toBeGreaterThan(0);
    e.backend.close();
  });

  it("adaptive tree size (the default): output unchanged on both models, and sizes are chosen each step", async () => {
    for (const [model, zero] of [[LOOPY, true], [MODEL, false]] as const) {
      const e = await adapterEngine(model, { slots: 2 });
      const s = shapeOf(e.engine);
      writeMedusa(path.join(e.root, "heads"), { hidden: s.hiddenSize, vocab: s.vocabSize, heads: 4, zero, seed: 3 });
      e.engine.setDefaultMedusa(0, (await e.registry.loadDefaultMedusa(path.join(e.root, "heads"), "local", undefined))!);
      const base = await tinyEngine(model);
      const want = await outputs(base, PROMPTS, 48);
      base.backend.close();
      expect(await outputs(e.engine, PROMPTS, 48), model).toEqual(want);
      for (const p of PROMPTS.slice(0, 4)) expect((await outputs(e.engine, [p], 48))[0]).toEqual(want[PROMPTS.indexOf(p)]);
      const sizes = [...e.engine.treeSizes.values()].reduce((a, b) => a + b, 0);
      expect(sizes, model).toBeGreaterThan(PROMPTS.length * 2);
      e.close();
    }
  });

  it("LoRA applies per sequence in the verification pass: outputs equal non-speculative LoRA runs", async () => {
    const withSpec = await Promise.all(
      [0, 1, 2, 3].map((i) => ae.engine.submit({ input: { tokens: PROMPTS[i] }, adapter: { id: path.join(ae.root, `lora${i}`), source: "local" }, params: greedy(20) }).then((s) => collect(s.events))),
    );
    const noSpec = await adapterEngine(MODEL, { slots: 8 });
    const s = shapeOf(noSpec.engine);
    for (let i = 0; i < 4; i++) writeAdapter(path.join(noSpec.root, `lora${i}`), s, { rank: 8, alpha: 16, targets: ["q_proj", "v_proj", "lm_head"], seed: 40 + i, bScale: 2 });
    const ref = await Promise.all(
      [0, 1, 2, 3].map((i) => noSpec.engine.submit({ input: { tokens: PROMPTS[i] }, adapter: { id: path.join(noSpec.root, `lora${i}`), source: "local" }, params: greedy(20) }).then((x) => collect(x.events))),
    );
    noSpec.close();
    expect(withSpec.map((x) => x.ids[0])).toEqual(ref.map((x) => x.ids[0]));
  });

  it("the KV cache after rejected drafts continues exactly like a fresh run from the same prefix", async () => {
    const p = PROMPTS[4];
    const first = (await collect(ae.engine.generate({ prompt: p, params: greedy(16) }))).ids[0];
    const cont = (await collect(ae.engine.generate({ prompt: [...p, ...first], params: greedy(8) }))).ids[0];
    const fresh = (await collect(plain.generate({ prompt: [...p, ...first], params: greedy(8) }))).ids[0];
    expect(cont).toEqual(fresh);
    expect(first.concat(cont)).toEqual((await collect(plain.generate({ prompt: p, params: greedy(24) }))).ids[0]);
  });

  it("a different head count, version 1 per request, or another hidden size: clear errors", async () => {
    const sub = (dir: string) => ae.engine.submit({ input: { tokens: [1, 2, 3] }, adapter: { id: path.join(ae.root, dir), source: "local" }, params: greedy(2) });
    await expect(sub("medusa-3")).rejects.toThrow(/has 3 heads; this server speculates with 4/);
    await expect(sub("medusa-v1")).rejects.toThrow(/version 1 .*only version 2/);
    await expect(sub("medusa-wide")).rejects.toThrow(/tensor 0\.0\.linear\.weight has shape \[128,128\], base expects \[64,64\]/);
    const v1 = await readMedusa(path.join(ae.root, "medusa-v1"), shapeOf(ae.engine));
    expect(v1.version).toBe(1);
    expect(v1.lm!.length).toBe(4 * 32000 * 64);
  });
});

describe("sampling keeps its distribution", () => {
  it("second and third tokens: speculative vs plain sampling agree (chi-square, p > 0.001)", async () => {
    const plainLoopy = await tinyEngine(LOOPY);
    const spec = await tinyEngine(LOOPY, { speculativeTokens: 4, fixedSpeculation: true });
    // A prompt whose continuation repeats, so lookup drafts are proposed and often accepted.
    const prompt = [500, 501, 502, 500, 501, 502, 500, 501];
    const N = 1500;
    const draw = async (e: Engine) => {
      const counts = [new Map<number, number>(), new Map<number, number>()];
      const batches = [];
      for (let b = 0; b < N / 100; b++)
        batches.push(collect(e.generate({ prompt, params: greedy(3, { doSample: true, temperature: 1, seed: BigInt(1 + b * 1000) }), n: 100 })));
      for (const res of await Promise.all(batches))
        for (const ids of res.ids) for (let k = 0; k < 2; k++) counts[k].set(ids[k + 1], (counts[k].get(ids[k + 1]) ?? 0) + 1);
      return counts;
    };
    const a = await draw(plainLoopy), b = await draw(spec);
    expect(spec.specAccepted).toBeGreaterThan(100);
    expect(spec.specAccepted).toBeLessThan(spec.specProposed); // both acceptance and rejection happened
    for (let k = 0; k < 2; k++) {
      // Pool categories with fewer than 10 expected counts; two-sample chi-square on the rest.
      const keys = new Set([...a[k].keys(), ...b[k].keys()]);
      let chi = 0, df = -1, restA = 0, restB = 0;
      for (const t of keys) {
        const x = a[k].get(t) ?? 0, y = b[k].get(t) ?? 0;
        if (x + y < 20) {
          restA += x;
          restB += y;
          continue;
        }
        const e = (x + y) / 2;
        chi += (x - e) ** 2 / e + (y - e) ** 2 / e;
        df++;
      }
      if (restA + restB > 0) {
        const e = (restA + restB) / 2;
        chi += (restA - e) ** 2 / e + (restB - e) ** 2 / e;
        df++;
      }
      // chi-square critical value at p = 0.001 (Wilson–Hilferty approximation).
      const crit = df * (1 - 2 / (9 * df) + 3.09 * Math.sqrt(2 / (9 * df))) ** 3;
      expect(df).toBeGreaterThan(2);
      expect(chi, `token ${k + 2}: chi² ${chi.toFixed(1)} with ${df} df`).toBeLessThan(crit);
    }
    spec.backend.close();
    plainLoopy.backend.close();
  });
});

describe("speculation with a grammar", () => {
  it("constrained greedy output is the same with prompt lookup and Medusa drafts as without; drafts are masked", async () => {
    const fmt = { format: { type: "json_schema" as const, schema: { type: "object", properties: { a: { type: "string", maxLength: 30 }, b: { type: "array", maxItems: 5, items: { type: "integer" } } }, required: ["a", "b"] } }, path: "schema", param: "response_format" };
    const run = async (e: Engine, p: number[]) => {
      const sub = await e.submit({ input: { tokens: p }, params: greedy(60, { ignoreEos: false }), responseFormat: fmt });
      return (await collect(sub.events)).ids[0];
    };
    const base = await tinyEngine(LOOPY);
    const lookup = await tinyEngine(LOOPY, { speculativeTokens: 4, fixedSpeculation: true });
    for (const p of PROMPTS.slice(0, 6)) expect(await run(lookup, p)).toEqual(await run(base, p));
    expect(lookup.specProposed).toBeGreaterThan(0);
    const medusa = await adapterEngine(LOOPY, { slots: 2, fixedSpeculation: true });
    const s = shapeOf(medusa.engine);
    writeMedusa(path.join(medusa.root, "zero"), { hidden: s.hiddenSize, vocab: s.vocabSize, heads: 3, zero: true });
    medusa.engine.setDefaultMedusa(0, (await medusa.registry.loadDefaultMedusa(path.join(medusa.root, "zero"), "local", undefined))!);
    for (const p of PROMPTS.slice(0, 6)) expect(await run(medusa.engine, p)).toEqual(await run(base, p));
    base.backend.close();
    lookup.backend.close();
    medusa.close();
  });
});
