// Multi-LoRA end to end: a mixed batch's logits equal each adapter merged into the base weights; greedy output
// does not depend on the other adapters in the batch; a pool smaller than the working set still completes
// everything correctly with evictions; bad adapters fail clearly while others keep serving.
import fs from "node:fs";
import path from "node:path";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { readPeftAdapter } from "../../engine/src/adapters/formats/peft.js";
import { Backend, type RowSampling } from "../../engine/src/backend.js";
import { AdapterIncompatibleError, NotFoundError } from "../../engine/src/errors.js";
import { adapterEngine, shapeOf, writeAdapter, writeMergedModel, type AdapterEngine, type AdapterSpec } from "../helpers/lora.js";
import { collect, greedy, rng, tinyModels } from "../helpers/tiny.js";

const MODEL = "llama-f32";
const ROW: RowSampling = { sample: false, doSample: false, temperature: 1, topK: 0, topP: 1, typicalP: 1, minP: 0, repetitionPenalty: 1, presencePenalty: 0, frequencyPenalty: 0, seed: 0n, step: 0, nTop: 0, target: -1 };

describe("mixed batch equals merged weights", () => {
  let ae: AdapterEngine;
  beforeAll(async () => (ae = await adapterEngine(MODEL, { slots: 8, maxOutRows: 128 })));
  afterAll(() => ae.close());

  const specs: AdapterSpec[] = [
    { rank: 4, alpha: 8, targets: ["q_proj", "v_proj"], seed: 1 },
    { rank: 8, alpha: 16, targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], seed: 2 },
    { rank: 16, alpha: 16, targets: ["lm_head"], seed: 3 },
    { rank: 32, alpha: 8, targets: ["down_proj", "up_proj"], rslora: true, seed: 4 },
    { rank: 64, alpha: 32, targets: ["o_proj", "k_proj"], seed: 5 },
    { rank: 12, alpha: 24, targets: ["q_proj", "gate_proj", "lm_head"], alphaPattern: { gate_proj: 4 }, seed: 6 },
    { rank: 8, alpha: 16, targets: ["v_proj", "down_proj"], rankPattern: { down_proj: 24 }, seed: 7 },
    { rank: 5, alpha: 10, targets: ["q_proj", "up_proj"], layers: [1], seed: 8 },
  ];

  it("base + 8 adapters (ranks 4–64, lm_head, rsLoRA, alpha/rank patterns) in one step", async () => {
    const shape = shapeOf(ae.engine);
    const be = ae.engine.backend;
    const prompts = specs.map((_, i) => Array.from({ length: 5 + i }, (_, j) => 300 + 97 * i + 13 * j));
    prompts.push([11, 22, 33, 44, 55, 66]); // the base model row
    const mods = [];
    for (const [i, spec] of specs.entries()) {
      const dir = path.join(ae.root, `a${i}`);
      mods.push(writeAdapter(dir, shape, spec));
      await be.loraLoad(i, await readPeftAdapter(dir, shape));
    }
    // One step: every sequence's prompt, each row with its adapter slot, logits for every row.
    const tokens = [], outRows = [];
    const sequences = prompts.map((_, s) => ({ blockTable: [s * 2, s * 2 + 1] }));
    for (const [s, p] of prompts.entries())
      for (const [i, t] of p.entries()) {
        outRows.push(tokens.length);
        tokens.push({ token: t, position: i, seq: s, adapterSlot: s < specs.length ? s : -1 });
      }
    const out = await be.step({ tokens, sequences, outRows, rows: outRows.map(() => ROW), wantLogits: true });
    const V = ae.engine.spec.vocabSize;
    let row = 0;
    for (const [s, p] of prompts.entries()) {
      let refDir = tinyModels()[MODEL];
      if (s < specs.length) {
        refDir = path.join(ae.root, `merged${s}`);
        writeMergedModel(tinyModels()[MODEL], refDir, mods[s]);
      }
      const ref = await Backend.load(refDir, { kvBytes: 1 << 20, blockSize: 16, maxStepTokens: 64, maxOutRows: 64, loraSlots: 0, loraMaxRank: 8 });
      const want = (await ref.step({ tokens: p.map((t, i) => ({ token: t, position: i, seq: 0, adapterSlot: -1 })), sequences: [{ blockTable: [0] }], outRows: p.map((_, i) => i), rows: p.map(() => ROW), wantLogits: true })).logits!;
      ref.close();
      let maxDiff = 0, maxAbs = 0;
      for (let i = 0; i < p.length * V; i++) {
        maxDiff = Math.max(maxDiff, Math.abs(want[i] - out.logits![row * V + i]));
        maxAbs = Math.max(maxAbs, Math.abs(want[i]));
      }
      expect(maxDiff, `sequence ${s}`).toBeLessThan(2e-3 * Math.max(1, maxAbs / 10));
      row += p.length;
    }
  });
});

describe("registry-driven serving", () => {
  let ae: AdapterEngine;
  const N = 32;
  beforeAll(async () => {
    ae = await adapterEngine(MODEL, { slots: N });
    const shape = shapeOf(ae.engine);
    for (let i = 0; i < N; i++) writeAdapter(path.join(ae.root, `ad${i}`), shape, { rank: 4 + (i % 5) * 4, alpha: 16, targets: i % 3 ? ["q_proj", "v_proj", "down_proj"] : ["o_proj", "lm_head"], seed: 100 + i, bScale: 2 });
  });
  afterAll(() => ae.close());

  const run = (i: number, prompt: number[]) =>
    ae.engine.submit({ input: { tokens: prompt }, adapter: { id: path.join(ae.root, `ad${i}`), source: "local" }, params: greedy(10) }).then((s) => collect(s.events));

  it("each adapter changes the output; alone equals mixed with 31 others", async () => {
    const prompt = [1, 450, 4996, 17354, 1701];
    const base = (await collect(ae.engine.generate({ prompt, params: greedy(10) }))).ids[0];
    const alone = [];
    for (const i of [0, 7, 19]) alone.push((await run(i, prompt)).ids[0]);
    for (const a of alone) expect(a).not.toEqual(base);
    const mixed = await Promise.all(Array.from({ length: N }, (_, i) => run(i, prompt)));
    expect([mixed[0].ids[0], mixed[7].ids[0], mixed[19].ids[0]]).toEqual(alone);
    expect(new Set(mixed.map((m) => m.ids[0].join())).size).toBeGreaterThan(N / 2);
  });
});

describe("a pool smaller than the working set", () => {
  let ae: AdapterEngine;
  const ADAPTERS = 40, REQUESTS = 400;
  beforeAll(async () => {
    ae = await adapterEngine(MODEL, { slots: 4, cycleMs: 50 });
    const shape = shapeOf(ae.engine);
    for (let i = 0; i < ADAPTERS; i++) writeAdapter(path.join(ae.root, `p${i}`), shape, { rank: 8, alpha: 16, targets: ["q_proj", "v_proj", "gate_proj"], seed: 500 + i, bScale: 2 });
  });
  afterAll(() => ae.close());

  it("4 slots, 40 adapters, 400 requests: all complete, outputs correct, evictions counted, waits bounded", async () => {
    const prompt = [1, 1724, 338, 263];
    const gen = (i: number) =>
      ae.engine.submit({ input: { tokens: prompt }, adapter: { id: path.join(ae.root, `p${i}`), source: "local" }, params: greedy(4) });
    // Reference outputs, one adapter at a time.
    const expected: number[][] = [];
    for (let i = 0; i < ADAPTERS; i++) expected.push((await collect((await gen(i)).events)).ids[0]);
    const evictionsBefore = ae.registry.evictions;
    const r = rng(17);
    const order = Array.from({ length: REQUESTS }, (_, k) => k % ADAPTERS).sort(() => r(2) - 1);
    const waits = new Map<number, number[]>();
    const t0 = performance.now();
    await Promise.all(
      order.map(async (i) => {
        const start = performance.now();
        const sub = await gen(i);
        let first = 0;
        const ids: number[] = [];
        for await (const e of sub.events) if (e.type === "token") (first ||= performance.now()), ids.push(e.id);
        expect(ids).toEqual(expected[i]);
        (waits.get(i) ?? waits.set(i, []).get(i)!).push(first - start);
      }),
    );
    const total = performance.now() - t0;
    expect(ae.registry.evictions - evictionsBefore).toBeGreaterThan(ADAPTERS - 4);
    const worst = Math.max(...[...waits.values()].map((w) => Math.max(...w)));
    // Every adapter was served, and no request waited longer than the stated bound for its first token (the
    // active set rotates; ~10 rotations of 4 slots cover 40 adapters).
    expect(waits.size).toBe(ADAPTERS);
    expect(worst).toBeLessThan(30_000);
    expect(worst).toBeLessThanOrEqual(total);
    expect(ae.engine.scheduler.blocks.usedCount).toBe(0);
  });
});

describe("bad adapters fail clearly and do not stop the others", () => {
  let ae: AdapterEngine;
  beforeAll(async () => (ae = await adapterEngine(MODEL, { slots: 4 })));
  afterAll(() => ae.close());

  const submit = (dir: string) => ae.engine.submit({ input: { tokens: [1, 2, 3] }, adapter: { id: dir, source: "local" }, params: greedy(3) });

  it("wrong shapes, no config, truncated weights, malicious pickle; safetensors wins over .bin", async () => {
    const shape = shapeOf(ae.engine);
    const good = path.join(ae.root, "good");
    writeAdapter(good, shape, { rank: 4, alpha: 8, targets: ["q_proj"], seed: 9 });
    const wrong = path.join(ae.root, "wrong");
    writeAdapter(wrong, { ...shape, hiddenSize: shape.hiddenSize * 2 }, { rank: 4, alpha: 8, targets: ["q_proj"], seed: 9 });
    await expect(submit(wrong)).rejects.toThrow(/has shape \[4,128\].*expect.*\[4,64\]/);
    await expect(submit(wrong)).rejects.toBeInstanceOf(AdapterIncompatibleError);

    const noConfig = path.join(ae.root, "noconfig");
    writeAdapter(noConfig, shape, { rank: 4, alpha: 8, targets: ["q_proj"], seed: 9 });
    fs.rmSync(path.join(noConfig, "adapter_config.json"));
    await expect(submit(noConfig)).rejects.toThrow(/adapter_config\.json/);

    const truncated = path.join(ae.root, "trunc");
    writeAdapter(truncated, shape, { rank: 4, alpha: 8, targets: ["q_proj"], seed: 9 });
    const f = path.join(truncated, "adapter_model.safetensors");
    fs.truncateSync(f, fs.statSync(f).size - 100);
    await expect(submit(truncated)).rejects.toThrow(/truncated|beyond|end of/i);

    const evil = path.join(ae.root, "evil");
    fs.mkdirSync(evil);
    fs.copyFileSync(path.join(good, "adapter_config.json"), path.join(evil, "adapter_config.json"));
    // A pickle that asks for os.system: GLOBAL 'os\nsystem', a string arg, REDUCE.
    const pkl = Buffer.concat([Buffer.from([0x80, 0x02]), Buffer.from("cos\nsystem\n"), Buffer.from([0x58]), Buffer.from([5, 0, 0, 0]), Buffer.from("touch"), Buffer.from([0x85, 0x52, 0x2e])]);
    const { torchArchive } = await import("../engine/adapters/formats/writers.js");
    fs.writeFileSync(path.join(evil, "adapter_model.bin"), torchArchive([], { pickle: pkl }));
    await expect(submit(evil)).rejects.toThrow(/os\.system|os system|not allowed|refus/i);

    // Both files: a broken .bin beside a good safetensors — the safetensors is read.
    fs.writeFileSync(path.join(good, "adapter_model.bin"), Buffer.from("not a zip"));
    const ok = await collect((await submit(good)).events);
    expect(ok.ids[0]).toHaveLength(3);

    await expect(submit(path.join(ae.root, "missing"))).rejects.toBeInstanceOf(NotFoundError);
    // The engine still serves the base model and the good adapter.
    expect((await collect(ae.engine.generate({ prompt: [1, 2], params: greedy(2) }))).ids[0]).toHaveLength(2);
  });
});
