// The scheduler alone (pure logic, no model): the n sequences of one prompt share its KV blocks, the last
// partial one included, and each write into a block still shared first copies it (copy-on-write).
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
