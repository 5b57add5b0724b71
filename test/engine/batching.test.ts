// Continuous batching under load: 200 concurrent requests of random lengths equal their solo runs and return
// every KV block; a KV pool too small for the running set preempts and recomputes without changing outputs;
// cancellations at random points free their blocks; n = 4 holds a long prompt's blocks once.
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { Engine, GenerationEvent } from "../../engine/src/engine.js";
import { CancelledError } from "../../engine/src/errors.js";
import { collect, greedy, rng, tinyEngine } from "../helpers/tiny.js";

const MODEL = "llama-f32";

describe("200 concurrent greedy requests", () => {
  let engine: Engine;
  beforeAll(async () => (engine = await tinyEngine(MODEL, { kvBytes: 256 << 20, maxBatchPrefillTokens: 512, maxStepTokens: 1024, maxOutRows: 256 })));
  afterAll(() => engine.backend.close());

  it("each equals the same request run alone; none lost; every block returns", async () => {
    const r = rng(2024);
    const reqs = Array.from({ length: 200 }, () => ({
      prompt: Array.from({ length: 1 + Math.floor(r(1000)) }, () => 3 + Math.floor(r(31000))),
      n: 1 + Math.floor(r(12)),
    }));
    const solo: number[][] = [];
    for (const q of reqs) solo.push((await collect(engine.generate({ prompt: q.prompt, params: greedy(q.n) }))).ids[0]);
    let steps = 0, maxBatch = 0;
    const onStep = (e: { stats: { batchSize: number } }) => {
      steps++;
      maxBatch = Math.max(maxBatch, e.stats.batchSize);
    };
    engine.on("step", onStep);
    const together = await Promise.all(reqs.map((q) => collect(engine.generate({ prompt: q.prompt, params: greedy(q.n) }))));
    engine.off("step", onStep);
    expect(together.map((t) => t.ids[0])).toEqual(solo);
    expect(maxBatch).toBeGreaterThan(8); // they really ran together (prefill of up to 1,000 tokens paces admission)
    expect(engine.requestsInFlight).toBe(0);
    expect(engine.scheduler.blocks.usedCount).toBe(0);
  }, 300_000);
});

describe("a KV pool too small for all running sequences", () => {
  it("everything completes with unchanged outputs; preemptions are counted", async () => {
    // 24 blocks of 16 tokens = 384 tokens of KV for 12 sequences that each grow to ~70 tokens.
    const small = await tinyEngine(MODEL, { kvBytes: 24 * 2 * 2 * 2 * 16 * 16 * 4, maxTotalTokens: 128 });
    expect(small.scheduler.cfg.numBlocks).toBe(24);
    const big = await tinyEngine(MODEL);
    const r = rng(5);
    const prompts = Array.from({ length: 12 }, () => Array.from({ length: 10 + Math.floor(r(20)) }, () => 3 + Math.floor(r(31000))));
    const want = await Promise.all(prompts.map((p) => collect(big.generate({ prompt: p, params: greedy(48) }))));
    const got = await Promise.all(prompts.map((p) => collect(small.generate({ prompt: p, params: greedy(48) }))));
    expect(got.map((g) => g.ids[0])).toEqual(want.map((w) => w.ids[0]));
    expect(small.scheduler.totalPreemptions).toBeGreaterThan(0);
    expect(small.scheduler.blocks.usedCount).toBe(0);
    small.backend.close();
    big.backend.close();
  });
});

describe("cancellation", () => {
  it("cancel during prefill and mid-decode frees blocks and leaves the others unchanged", async () => {
    const engine = await tinyEngine(MODEL, { maxBatchPrefillTokens: 32 });
    const r = rng(9);
    const keep = Array.from({ length: 6 }, () => Array.from({ length: 20 + Math.floor(r(100)) }, () => 3 + Math.floor(r(31000))));
    const want = await Promise.all(keep.map((p) => collect(engine.generate({ prompt: p, params: greedy(30) }))));
    const victims = Array.from({ length: 10 }, (_, i) => {
      const ac = new AbortController();
      // Long prompts (prefill in 32-token chunks) and long decodes, cut at different points.
      const it = engine.generate({ prompt: Array.from({ length: 50 + i * 40 }, (_, j) => 100 + j), params: greedy(200), signal: ac.signal });
      const cutAfter = i % 2 === 0 ? 0 : 1 + Math.floor(r(20)); // 0 = before the first token (during prefill)
      return (async () => {
        let n = 0;
        if (cutAfter === 0) setTimeout(() => ac.abort(), 1 + Math.floor(r(5)));
        try {
          for await (const e of it) if (e.type === "token" && ++n >= cutAfter && cutAfter > 0) ac.abort();
        } catch (e) {
          expect(e).toBeInstanceOf(CancelledError);
        }
      })();
    });
    const got = await Promise.all([Promise.all(keep.map((p) => collect(engine.generate({ prompt: p, params: greedy(30) })))), ...victims]);
    expect(got[0].map((g) => g.ids[0])).toEqual(want.map((w) => w.ids[0]));
    await new Promise((res) => setTimeout(res, 50));
    expect(engine.requestsInFlight).toBe(0);
    expect(engine.scheduler.blocks.usedCount).toBe(0);
    engine.backend.close();
  });
});

describe("n sequences share the prompt", () => {
  it("n = 4 with a 500-token prompt holds the prompt's blocks once", async () => {
    const engine = await tinyEngine(MODEL, { maxBatchPrefillTokens: 512 });
    const prompt = Array.from({ length: 500 }, (_, i) => 100 + ((i * 37) % 20000));
    let peak = 0, prefilled = 0;
    const onStep = (e: { stats: { kvUsedBlocks: number; prefillTokens: number } }) => {
      peak = Math.max(peak, e.stats.kvUsedBlocks);
      prefilled += e.stats.prefillTokens;
    };
    engine.on("step", onStep);
    const res = await collect(engine.generate({ prompt, params: greedy(8, { doSample: true, seed: 3n }), n: 4 }));
    engine.off("step", onStep);
    expect(res.ids).toHaveLength(4);
    const promptBlocks = Math.ceil(500 / 16); // 32
    // Shared: 31 full prompt blocks once, plus each sequence's own copy of the last block (copy-on-write) and
    // the block it grows into: far below 4 × 32.
    expect(peak).toBeLessThanOrEqual(promptBlocks + 4 * 2);
    expect(peak).toBeGreaterThanOrEqual(promptBlocks);
    // The prompt is computed once; each other sequence recomputes only its last token (for its first sample).
    expect(prefilled).toBe(500 + 3);
    // The four equal four separate runs with seeds 3..6, token for token and logprob for logprob (a copied
    // block that lost its contents moves the logprobs before it moves a sampled token).
    const logprobs = (events: GenerationEvent[], index: number) => events.flatMap((e) => (e.type === "token" && e.index === index ? [e.logprob] : []));
    for (let i = 0; i < 4; i++) {
      const alone = await collect(engine.generate({ prompt, params: greedy(8, { doSample: true, seed: BigInt(3 + i) }) }));
      expect(res.ids[i]).toEqual(alone.ids[0]);
      expect(logprobs(res.events, i)).toEqual(logprobs(alone.events, 0));
    }
    expect(engine.scheduler.blocks.usedCount).toBe(0);
    engine.backend.close();
  });
});
