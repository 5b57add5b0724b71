// The scheduler alone (pure logic, no model): the n sequences of one prompt share its KV blocks, the last
// partial one included, and each write into a block still shared first copies it (copy-on-write); the prefix
// cache starts a new sequence past the full blocks of its prefix computed before, under the same adapter.
import { describe, expect, it } from "vitest";

import { Scheduler, Sequence, type SchedulerConfig } from "../../engine/src/scheduler.js";

const CFG: SchedulerConfig = {
  blockSize: 4, numBlocks: 16, maxBatchPrefillTokens: 64, maxStepTokens: 64, maxBatchTotalTokens: 1 << 20, maxOutRows: 64,
  maxWaitingTokens: 20, waitingServedRatio: 0,
};

/** A prompt of `len` tokens sampled `n` times: sequence 0 plus held children, as the engine submits them. */
function request(s: Scheduler, len: number, n: number): Sequence[] {
  const prompt = Array.from({ length: len }, (_, i) => 10 + i);
  const seqs = Array.from({ length: n }, () => new Sequence(prompt, len, false, null, 0));
  seqs[0].children = seqs.slice(1);
  s.add(seqs[0]);
  for (const c of seqs.slice(1)) s.add(c, true);
  return seqs;
}

/** Runs one step as the engine would: every sampled entry gains one token `tok`. */
function step(s: Scheduler, tok = 7) {
  const plan = s.schedule()!;
  s.commit(plan.entries, new Map(plan.entries.filter((e) => e.sample).map((e) => [e.seq, { tokens: [tok] }])));
  return plan;
}

describe("copy-on-write of shared prompt blocks", () => {
  it("children share the whole prompt, recompute only its last token, and copy the block that write lands in", () => {
    const s = new Scheduler(CFG);
    const [p, c1, c2] = request(s, 10, 3); // blocks of 4: [0-3] [4-7] [8-9 + room]
    const prefill = step(s);
    expect(prefill.entries.map((e) => [e.start, e.count])).toEqual([[0, 10]]);
    expect(prefill.blockCopies).toEqual([]);
    const promptBlocks = p.blocks.slice(0, 3);
    // Forked: both children hold the parent's three prompt blocks.
    expect(c1.blocks).toEqual(promptBlocks);
    expect(c2.blocks).toEqual(promptBlocks);
    for (const b of promptBlocks) expect(s.blocks.refCount(b)).toBe(3);
    expect(s.blocks.usedCount).toBe(3);

    const next = step(s);
    // The parent decodes position 10; each child recomputes position 9. All three write block 2, so the first
    // two to write copy it and the last one writes the original in place.
    const byId = new Map(next.entries.map((e) => [e.seq, e]));
    expect([byId.get(p)!.start, byId.get(p)!.count]).toEqual([10, 1]);
    expect([byId.get(c1)!.start, byId.get(c1)!.count]).toEqual([9, 1]);
    expect([byId.get(c2)!.start, byId.get(c2)!.count]).toEqual([9, 1]);
    expect(next.blockCopies).toHaveLength(2);
    for (const [from, to] of next.blockCopies) {
      expect(from).toBe(promptBlocks[2]);
      expect(promptBlocks).not.toContain(to);
    }
    // Full blocks stay shared; the last is now three different blocks, one per sequence.
    for (const q of [p, c1, c2]) expect(q.blocks.slice(0, 2)).toEqual(promptBlocks.slice(0, 2));
    expect(new Set([p.blocks[2], c1.blocks[2], c2.blocks[2]]).size).toBe(3);
    for (const q of [p, c1, c2]) expect(s.blocks.refCount(q.blocks[2])).toBe(1);
    expect(s.blocks.refCount(promptBlocks[0])).toBe(3);
    expect(s.blocks.usedCount).toBe(5);

    // Later steps write private blocks only.
    for (let i = 0; i < 4; i++) expect(step(s).blockCopies).toEqual([]);
    for (const q of [p, c1, c2]) s.finish(q);
    expect(s.blocks.usedCount).toBe(0);
  });

  it("a prompt that fills its last block: the children copy that full block to rewrite its last slot", () => {
    const s = new Scheduler(CFG);
    const [p, c1] = request(s, 8, 2);
    step(s);
    expect(c1.blocks).toEqual(p.blocks.slice(0, 2)); // not the parent's fresh block for position 8
    const next = step(s);
    expect(next.blockCopies).toEqual([[p.blocks[1], c1.blocks[1]]]);
    expect(s.blocks.refCount(p.blocks[0])).toBe(2);
    expect(s.blocks.refCount(p.blocks[1])).toBe(1);
  });

  it("with no block free for a copy, the newest sharer is preempted and the other writes in place", () => {
    const s = new Scheduler({ ...CFG, numBlocks: 3 });
    const [p, c1] = request(s, 10, 2); // the prompt takes all three blocks
    step(s);
    expect(s.blocks.freeCount).toBe(0);
    // The parent's decode needs a copy of block 2 while the child shares it, and none is free: the child (newest)
    // is preempted — it gives back its shared references and will recompute the prompt — and the parent, the
    // block's only holder now, writes it in place.
    const next = step(s);
    expect(next.entries.map((e) => e.seq)).toEqual([p]);
    expect(next.stats.preemptions).toBe(1);
    expect(next.blockCopies).toEqual([]);
    expect(c1.blocks).toEqual([]);
    expect(c1.computed).toBe(0);
    expect(s.blocks.usedCount).toBe(3);
    s.finish(p);
    // Once the parent is done the child runs alone from the start of the prompt.
    expect(step(s).entries.map((e) => [e.seq, e.start, e.count])).toEqual([[c1, 0, 10]]);
  });
});

describe("prefix cache", () => {
  const PC: SchedulerConfig = { ...CFG, prefixCaching: true };
  const seqOf = (tokens: number[], salt = "", promptLogprobs = false) => {
    const q = new Sequence(tokens, tokens.length, promptLogprobs, salt || null, 0);
    q.kvSalt = salt;
    return q;
  };
  const run = (s: Scheduler, q: Sequence) => {
    s.add(q);
    const plan = step(s);
    return plan.entries.find((e) => e.seq === q)!;
  };
  const A = Array.from({ length: 10 }, (_, i) => 100 + i); // blocks of 4: [100-103] [104-107] [108 109]

  it("a prompt whose full blocks were computed before starts past them, on the same blocks; its last token is always computed", () => {
    const s = new Scheduler(PC);
    const a = seqOf(A);
    expect(run(s, a)).toMatchObject({ start: 0, count: 10 });
    const [b0, b1] = a.blocks;
    s.finish(a);
    // Both full blocks stay cached though no sequence holds them; the partial one went back to the pool.
    expect(s.blocks.usedCount).toBe(0);
    expect(s.blocks.cachedCount).toBe(2);

    const b = seqOf([...A.slice(0, 9), 999]);
    s.add(b);
    const plan = step(s);
    expect(plan.entries[0]).toMatchObject({ seq: b, start: 8, count: 2 });
    expect(plan.stats).toMatchObject({ prefixQueried: 10, prefixHit: 8 });
    expect(b.blocks.slice(0, 2)).toEqual([b0, b1]);
    // A prompt of exactly two blocks reuses only the first: its last token must run for its logits.
    expect(run(s, seqOf(A.slice(0, 8)))).toMatchObject({ start: 4, count: 4 });
    // A different first block matches nothing, though the second block's tokens are the same.
    expect(run(s, seqOf([1, ...A.slice(1)]))).toMatchObject({ start: 0, count: 10 });
  });

  it("another adapter's KV, or a request for prompt log-probabilities, finds nothing", () => {
    const s = new Scheduler(PC);
    const a = seqOf(A, "hub:org/x#1");
    run(s, a);
    s.finish(a);
    expect(s.blocks.cachedCount).toBe(2);
    expect(run(s, seqOf(A))).toMatchObject({ start: 0 });
    expect(run(s, seqOf(A, "hub:org/x#2"))).toMatchObject({ start: 0 });
    expect(run(s, seqOf(A, "hub:org/x#1", true))).toMatchObject({ start: 0 });
    expect(run(s, seqOf(A, "hub:org/x#1"))).toMatchObject({ start: 8 });
  });

  it("idle cached blocks count as free and are reused least recently released first", () => {
    const s = new Scheduler({ ...PC, numBlocks: 6 });
    const a = seqOf(A), b = seqOf(A.map((t) => t + 50));
    run(s, a);
    s.finish(a);
    run(s, b);
    s.finish(b);
    expect(s.blocks.cachedCount).toBe(4);
    expect(s.blocks.freeCount).toBe(6);
    // 16 tokens need 4 blocks: the 2 free ones, then a's two idle ones (released first).
    const c = seqOf(Array.from({ length: 16 }, (_, i) => 500 + i));
    expect(run(s, c)).toMatchObject({ start: 0, count: 16 });
    expect(s.blocks.freeCount).toBe(2);
    s.finish(c);
    expect(run(s, seqOf(A.map((t) => t + 50)))).toMatchObject({ start: 8 }); // b's blocks survived
    expect(run(s, seqOf(A))).toMatchObject({ start: 0 }); // a's were taken
  });

  it("the KV budget (max-batch-total-tokens) counts a shared prefix once", () => {
    const s = new Scheduler({ ...PC, maxBatchTotalTokens: 16 }); // four blocks of 4
    const a = seqOf(A);
    run(s, a);
    s.finish(a);
    // Each holds 10 tokens, 20 together, but in four blocks: two shared from the cache and one of its own each.
    const b = seqOf([...A.slice(0, 8), 1, 2]), c = seqOf([...A.slice(0, 8), 3, 4]);
    s.add(b);
    s.add(c);
    const plan = step(s);
    expect(plan.entries.map((e) => [e.seq, e.start])).toEqual([[b, 8], [c, 8]]);
    expect(s.blocks.usedCount).toBe(4);
    // A third would need a fifth block.
    expect(run(s, seqOf([...A.slice(0, 8), 5, 6]))).toBeUndefined();
  });

  it("a cached block is not written while cached: the sequence that writes into one it alone holds takes it out first", () => {
    const s = new Scheduler(PC);
    const [p, c] = request(s, 8, 2); // two full blocks, both registered when the prompt is in
    step(s);
    expect(s.blocks.cachedCount).toBe(2);
    s.finish(p);
    // The child recomputes position 7 in block 1, which only it holds now: written in place, so out of the
    // cache for that step; its KV is whole again afterwards, and offered again.
    const plan = s.schedule()!;
    expect(plan.entries.find((e) => e.seq === c)).toMatchObject({ start: 7, count: 1 });
    expect(plan.blockCopies).toEqual([]);
    expect(s.blocks.isRegistered(c.blocks[0])).toBe(true);
    expect(s.blocks.isRegistered(c.blocks[1])).toBe(false);
    s.commit(plan.entries, new Map([[c, { tokens: [7] }]]));
    expect(s.blocks.isRegistered(c.blocks[1])).toBe(true);
  });

  it("a block that a pending KV move (accepted speculative tokens) still writes is offered only once the move is done", () => {
    const s = new Scheduler(PC);
    const q = seqOf(A.slice(0, 6));
    s.add(q);
    let plan = s.schedule()!;
    s.commit(plan.entries, new Map([[q, { tokens: [7] }]])); // computed 6, tokens 7
    expect(s.blocks.cachedCount).toBe(1);
    // A decode step at slot 6 verified a draft: its first accepted token was node 2, to move from slot 8 to 7.
    plan = s.schedule()!;
    q.kvMoves.push([8, 7]);
    s.commit(plan.entries, new Map([[q, { tokens: [1, 2, 3], computed: 9 }]]));
    expect(s.blocks.cachedCount).toBe(1);
    q.kvMoves = []; // the next step applies the move
    plan = s.schedule()!;
    s.commit(plan.entries, new Map([[q, { tokens: [4] }]]));
    expect(s.blocks.cachedCount).toBe(2);
  });
});
