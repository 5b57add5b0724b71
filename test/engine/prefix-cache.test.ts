// The prefix cache through the engine and the native model: prompts that share a prefix reuse its KV and
// compute only the rest, and greedy output is token for token what an engine without the cache gives, on
// every tiny architecture (sliding window and tied embeddings included), alone and batched, under LoRA
// adapters (whose KV differs from the base model's and from each other's), with n > 1, and in a KV pool so
// small that sequences are preempted and cached blocks taken back while prompt-lookup drafts move KV.
import path from "node:path";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { Engine, StepEvent } from "../../engine/src/engine.js";
import { adapterEngine, shapeOf, writeAdapter, type AdapterEngine } from "../helpers/lora.js";
import { collect, greedy, rng, tinyEngine } from "../helpers/tiny.js";

const r = rng(5);
const SHARED = Array.from({ length: 50 }, () => 200 + Math.floor(r(20000))); // 3 full blocks of 16, and 2 tokens
const PROMPTS = Array.from({ length: 6 }, (_, i) => [...SHARED, ...Array.from({ length: 1 + i * 7 }, () => 200 + Math.floor(r(20000)))]);

/** Prefill tokens the engine computed, and prompt tokens the prefix cache held, while `fn` ran. */
async function counting<T>(e: Engine, fn: () => Promise<T>): Promise<{ value: T; prefill: number; hit: number }> {
  let prefill = 0, hit = 0;
  const on = (s: StepEvent) => ((prefill += s.stats.prefillTokens), (hit += s.stats.prefixHit));
  e.on("step", on);
  try {
    return { value: await fn(), prefill, hit };
  } finally {
    e.off("step", on);
  }
}

const one = async (e: Engine, prompt: number[], n = 12) => (await collect(e.generate({ prompt, params: greedy(n) }))).ids[0];

describe.each(["llama-f32", "llama-bf16-tied-linear", "mistral-f32-sharded-window", "qwen2-bf16-bias"])("%s", (model) => {
  let cached: Engine, plain: Engine;
  beforeAll(async () => {
    cached = await tinyEngine(model);
    plain = await tinyEngine(model, { prefixCaching: false });
  });
  afterAll(() => {
    cached.backend.close();
    plain.backend.close();
  });

  it("one after another: each prompt after the first computes only past the shared full blocks; output unchanged", async () => {
    const want: number[][] = [];
    for (const p of PROMPTS) want.push(await one(plain, p));
    const first = await counting(cached, () => one(cached, PROMPTS[0]));
    expect(first.value).toEqual(want[0]);
    expect(first.hit).toBe(0);
    for (const [i, p] of PROMPTS.slice(1).entries()) {
      const c = await counting(cached, () => one(cached, p));
      expect(c.value, `prompt ${i + 1}`).toEqual(want[i + 1]);
      expect(c.hit).toBe(48);
      expect(c.prefill).toBe(p.length - 48);
    }
    // The same prompt again: everything but its last block (and at least its last token) comes from the cache.
    const again = await counting(cached, () => one(cached, PROMPTS[5]));
    expect(again.value).toEqual(want[5]);
    expect(again.prefill).toBeLessThanOrEqual(16);
    expect(cached.scheduler.blocks.usedCount).toBe(0);
  });

  it("a follow-up turn (the prompt, the answer generated to it, and more) finds the answer's KV too", async () => {
    const answer = await one(cached, PROMPTS[1], 40);
    const next = [...PROMPTS[1], ...answer, 301, 302, 303];
    const c = await counting(cached, () => one(cached, next));
    expect(c.value).toEqual(await one(plain, next));
    // Every full block but the last: the answer's blocks were registered as its decode filled them (the last
    // answer token was never computed, so the block holding it is recomputed).
    expect(c.hit).toBe(Math.floor((PROMPTS[1].length + answer.length - 1) / 16) * 16);
  });

  it("batched with others and with n = 3: outputs unchanged", async () => {
    const want = await Promise.all(PROMPTS.map((p) => one(plain, p, 20)));
    expect(await Promise.all(PROMPTS.map((p) => one(cached, p, 20)))).toEqual(want);
    const sampled = (e: Engine) => collect(e.generate({ prompt: PROMPTS[2], params: greedy(10, { doSample: true, temperature: 0.9, seed: 3n }), n: 3 }));
    expect((await sampled(cached)).ids).toEqual((await sampled(plain)).ids);
  });
});

describe("under LoRA adapters", () => {
  let cached: AdapterEngine, plain: AdapterEngine;
  beforeAll(async () => {
    cached = await adapterEngine("llama-f32", { slots: 4 });
    plain = await adapterEngine("llama-f32", { slots: 4, prefixCaching: false });
    for (const ae of [cached, plain]) {
      const s = shapeOf(ae.engine);
      // k_proj and v_proj change the KV itself.
      for (const [i, name] of ["a", "b"].entries()) writeAdapter(path.join(ae.root, name), s, { rank: 8, alpha: 16, targets: ["k_proj", "v_proj", "q_proj"], seed: 70 + i, bScale: 2 });
    }
  });
  afterAll(() => {
    cached.close();
    plain.close();
  });

  it("each adapter's KV is its own: the same prompt under the base model and two adapters, in turn, gives what it gives uncached", async () => {
    const run = async (ae: AdapterEngine, adapter?: string) => {
      const sub = await ae.engine.submit({ input: { tokens: PROMPTS[3] }, adapter: adapter ? { id: path.join(ae.root, adapter), source: "local" } : undefined, params: greedy(12) });
      return (await collect(sub.events)).ids[0];
    };
    const order = [undefined, "a", "b", "a", undefined, "b"];
    const want: number[][] = [];
    for (const a of order) want.push(await run(plain, a));
    expect(new Set(want.map((w) => JSON.stringify(w))).size).toBe(3); // the adapters do change the output
    let hits = 0;
    cached.engine.on("step", (s: StepEvent) => (hits += s.stats.prefixHit));
    const per: number[] = [];
    for (const [i, a] of order.entries()) {
      const before = hits;
      expect(await run(cached, a), `run ${i} (${a ?? "base"})`).toEqual(want[i]);
      per.push(hits - before);
    }
    // The repeats (a, base, b) found their own KV, every full block but the one with the last token; nothing else did.
    const full = Math.floor((PROMPTS[3].length - 1) / 16) * 16;
    expect(per).toEqual([0, 0, 0, full, full, full]);
  });
});

describe("under pressure", () => {
  it("a KV pool too small for the load (preemption, cached blocks taken back), n = 2 and prompt-lookup drafts: outputs unchanged", async () => {
    const rr = rng(9);
    const shared = Array.from({ length: 40 }, () => 200 + Math.floor(rr(20000)));
    const prompts = Array.from({ length: 30 }, (_, i) => [...(i % 3 === 0 ? [] : shared.slice(0, 16 + (i % 4) * 8)), ...Array.from({ length: 3 + (i % 9) * 5 }, () => 200 + Math.floor(rr(20000)))]);
    const all = (e: Engine) => Promise.all(prompts.map(async (p, i) => (await collect(e.generate({ prompt: p, params: greedy(20 + (i % 5) * 10), n: i % 7 === 0 ? 2 : 1 }))).ids));
    // 25 blocks of 16 tokens: a tenth of what the 30 requests would hold at once.
    const model = "llama-bf16-tied-linear", kvBytes = 400 << 10;
    const plain = await tinyEngine(model, { kvBytes, prefixCaching: false });
    const cached = await tinyEngine(model, { kvBytes, speculativeTokens: 4, fixedSpeculation: true });
    try {
      const want = await all(plain);
      let hits = 0;
      cached.on("step", (s: StepEvent) => (hits += s.stats.prefixHit));
      for (let round = 0; round < 2; round++) expect(await all(cached), `round ${round}`).toEqual(want);
      expect(cached.scheduler.totalPreemptions).toBeGreaterThan(0);
      expect(hits).toBeGreaterThan(0);
      expect(cached.specAccepted).toBeGreaterThan(0);
      expect(cached.scheduler.blocks.usedCount).toBe(0);
    } finally {
      plain.backend.close();
      cached.backend.close();
    }
  });
});
