// The continuous-batching scheduler: pure logic, no I/O. Each step it takes one decode token from every running
// sequence plus prefill chunks of others within the token, row and KV budgets; admits waiting sequences by free
// KV blocks, starting each past the longest prefix whose KV the prefix cache holds; preempts the newest running
// sequence (recompute later) when blocks run out; forks the n sequences of one prompt onto shared prompt blocks,
// copying a shared block before any of them writes it. Tokens, text and sampling belong to the engine.
import { createHash } from "node:crypto";

import { BlockAllocator } from "./kv-blocks.js";
import type { Draft } from "./speculation.js";

export interface SchedulerConfig {
  blockSize: number;
  numBlocks: number;
  /** Prefill tokens per step (the chunk size when one prompt is alone). */
  maxBatchPrefillTokens: number;
  /** Tokens per step in all (decode + prefill): the native activation buffers. */
  maxStepTokens: number;
  /** KV tokens running sequences may hold together, counted by blocks (a block they share counts once). */
  maxBatchTotalTokens: number;
  /** Logit rows per step. */
  maxOutRows: number;
  /** LoRAX: decode steps a waiting request may be held back before it must join. */
  maxWaitingTokens: number;
  /** LoRAX: new requests join a running batch only if at least running × ratio of them are ready. */
  waitingServedRatio: number;
  /** Keep full blocks of committed KV by prefix, and start new sequences past the longest one found. */
  prefixCaching?: boolean;
}

/** Decides whether a sequence's adapter is ready (and pins it while the sequence runs). */
export interface AdapterGate {
  acquire(seq: Sequence): boolean;
  release(seq: Sequence): void;
}

export const BASE_ONLY_GATE: AdapterGate = { acquire: () => true, release: () => {} };

export type SeqState = "held" | "waiting" | "running" | "finished";

let nextSeqId = 1;

export class Sequence {
  readonly id = nextSeqId++;
  tokens: number[];
  computed = 0; // tokens whose K/V are in the cache
  blocks: number[] = [];
  state: SeqState = "waiting";
  admitOrder = 0;
  preemptions = 0;
  cancelled = false;
  adapterSlot = -1;
  /** Date.now() when first admitted to the running batch. */
  firstScheduledAt?: number;
  /** Children of the same prompt start once this (index 0) sequence has prefilled it. */
  children: Sequence[] = [];
  /** Speculative tokens to verify in the next decode step (set by the engine). */
  draft?: Draft;
  /** KV entries to move before the next step: accepted speculative tokens compacted to their positions. */
  kvMoves: [from: number, to: number][] = [];
  /** What besides the tokens its KV depends on (the adapter's loaded weights; "" = the base model). */
  kvSalt = "";
  /** Prefix keys of the full blocks of its tokens so far (a memo: tokens only grow). */
  tokenKeys: string[] = [];
  /** Leading blocks already offered to the prefix cache. */
  registered = 0;
  /** Tokens whose KV the prefix cache held when it was first admitted. */
  cachedTokens = 0;

  constructor(
    prompt: readonly number[],
    readonly promptLen: number,
    /** Rows of the prompt need log-probabilities (decoder_input_details). */
    public promptLogprobs: boolean,
    readonly adapterKey: string | null,
    readonly arrival: number,
  ) {
    this.tokens = prompt.slice();
  }

  get generated(): number {
    return this.tokens.length - this.promptLen;
  }
}

/** One sequence's share of a step: tokens[start, start+count), sampling a token after the last if sample. */
export interface BatchEntry {
  seq: Sequence;
  start: number;
  count: number;
  sample: boolean;
  /** Rows that only want the logprob of the next prompt token (prompt logprobs), positions start.. */
  promptRows: number;
}

export interface StepStats {
  batchSize: number;
  decodeTokens: number;
  prefillTokens: number;
  waiting: number;
  running: number;
  kvUsedBlocks: number;
  kvTotalBlocks: number;
  preemptions: number; // during this schedule
  /** Prompt tokens of the sequences admitted this step, and how many of them the prefix cache held. */
  prefixQueried: number;
  prefixHit: number;
}

export class Scheduler {
  readonly blocks: BlockAllocator;
  private waiting: Sequence[] = [];
  private running: Sequence[] = [];
  private admitCounter = 0;
  private stepsSinceAdmit = 0;
  totalPreemptions = 0;

  constructor(
    readonly cfg: SchedulerConfig,
    private gate: AdapterGate = BASE_ONLY_GATE,
  ) {
    this.blocks = new BlockAllocator(cfg.numBlocks);
  }

  setGate(gate: AdapterGate): void {
    this.gate = gate;
  }

  /** KV capacity in tokens. */
  get capacityTokens(): number {
    return this.cfg.numBlocks * this.cfg.blockSize;
  }

  add(seq: Sequence, held = false): void {
    seq.state = held ? "held" : "waiting";
    if (!held) this.waiting.push(seq);
  }

  hasWork(): boolean {
    return this.waiting.length > 0 || this.running.length > 0;
  }

  /** Adapter keys of running and waiting sequences (for the routing metrics). */
  adapterKeys(): { running: Set<string>; waiting: Set<string> } {
    const running = new Set<string>(), waiting = new Set<string>();
    for (const s of this.running) if (s.adapterKey !== null) running.add(s.adapterKey);
    for (const s of this.waiting) if (s.adapterKey !== null && !running.has(s.adapterKey)) waiting.add(s.adapterKey);
    return { running, waiting };
  }

  get waitingCount(): number {
    return this.waiting.length;
  }

  get runningCount(): number {
    return this.running.length;
  }

  /** Marks a sequence cancelled; its blocks go back at the next schedule(). */
  cancel(seq: Sequence): void {
    seq.cancelled = true;
    for (const c of seq.children) if (c.state === "held") c.cancelled = true;
  }

  /** Releases a finished sequence's blocks at once. */
  finish(seq: Sequence): void {
    if (seq.state === "finished") return;
    this.drop(seq);
    seq.state = "finished";
  }

  private drop(seq: Sequence): void {
    if (seq.state === "running") {
      this.running.splice(this.running.indexOf(seq), 1);
      this.gate.release(seq);
    } else if (seq.state === "waiting") {
      this.waiting.splice(this.waiting.indexOf(seq), 1);
    }
    this.blocks.release(seq.blocks);
    seq.blocks = [];
  }

  private blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.cfg.blockSize);
  }

  private preempt(seq: Sequence): void {
    this.running.splice(this.running.indexOf(seq), 1);
    this.gate.release(seq);
    this.blocks.release(seq.blocks);
    seq.blocks = [];
    seq.computed = 0;
    seq.registered = 0;
    seq.draft = undefined;
    seq.kvMoves = [];
    seq.state = "waiting";
    seq.preemptions++;
    this.totalPreemptions++;
    this.waiting.unshift(seq);
  }

  /** Blocks of `seq` that KV positions [from, to) write and that other sequences still share. */
  private sharedIn(seq: Sequence, from: number, to: number): number[] {
    const bs = this.cfg.blockSize, out: number[] = [];
    for (let b = Math.floor(from / bs); b <= Math.floor((to - 1) / bs) && b < seq.blocks.length; b++)
      if (this.blocks.refCount(seq.blocks[b]) > 1) out.push(b);
    return out;
  }

  /**
   * Copy-on-write: `seq` gets its own copy of each shared block that positions [from, to) write (the copies run
   * natively before the step), and a block of its own that is in the prefix cache leaves it (a cached block's
   * KV never changes). False, changing nothing, when the free pool cannot hold the copies.
   */
  private unshare(seq: Sequence, from: number, to: number, copies: [number, number][]): boolean {
    const shared = this.sharedIn(seq, from, to);
    if (shared.length > 0) {
      const fresh = this.blocks.alloc(shared.length);
      if (!fresh) return false;
      shared.forEach((b, i) => {
        copies.push([seq.blocks[b], fresh[i]]);
        this.blocks.release([seq.blocks[b]]);
        seq.blocks[b] = fresh[i];
      });
    }
    const bs = this.cfg.blockSize;
    for (let b = Math.floor(from / bs); b <= Math.floor((to - 1) / bs) && b < seq.blocks.length; b++) {
      this.blocks.unregister(seq.blocks[b]);
      seq.registered = Math.min(seq.registered, b);
    }
    return true;
  }

  /** The prefix key of full block i of `seq`'s tokens: the adapter identity and every token up to its end. */
  private tokenKey(seq: Sequence, i: number): string {
    const bs = this.cfg.blockSize;
    while (seq.tokenKeys.length <= i) {
      const j = seq.tokenKeys.length;
      const h = createHash("sha256").update(j === 0 ? `salt:${seq.kvSalt}` : seq.tokenKeys[j - 1]);
      h.update(new Uint8Array(Int32Array.from(seq.tokens.slice(j * bs, (j + 1) * bs)).buffer));
      seq.tokenKeys.push(h.digest("base64"));
    }
    return seq.tokenKeys[i];
  }

  /**
   * The cached blocks holding the longest prefix of a new sequence's KV, in order (not yet taken). At least
   * its last token is left to compute, for the logits that sample the next one; a request for prompt
   * log-probabilities computes its whole prompt.
   */
  private cachedPrefix(seq: Sequence): number[] {
    if (!this.cfg.prefixCaching || seq.promptLogprobs || seq.blocks.length > 0 || seq.computed > 0) return [];
    const out: number[] = [];
    for (let i = 0; i < Math.floor((seq.tokens.length - 1) / this.cfg.blockSize); i++) {
      const b = this.blocks.lookup(this.tokenKey(seq, i));
      if (b === undefined) break;
      out.push(b);
    }
    return out;
  }

  /** Offers `seq`'s newly full blocks of committed KV (none a pending KV move will still write) to the prefix cache. */
  private register(seq: Sequence): void {
    let limit = seq.computed;
    for (const [, to] of seq.kvMoves) limit = Math.min(limit, to);
    const full = Math.min(Math.floor(limit / this.cfg.blockSize), seq.blocks.length);
    for (let i = seq.registered; i < full; i++) this.blocks.register(seq.blocks[i], this.tokenKey(seq, i));
    seq.registered = Math.max(seq.registered, full);
  }

  /** Builds the next step, or returns undefined when there is nothing to run. */
  schedule(): { entries: BatchEntry[]; stats: StepStats; blockCopies: [number, number][] } | undefined {
    const { blockSize: bs } = this.cfg;
    for (const s of [...this.waiting, ...this.running]) if (s.cancelled) this.finish(s);
    let preempted = 0, prefixQueried = 0, prefixHit = 0;
    const entries: BatchEntry[] = [];
    const blockCopies: [number, number][] = [];
    const inStep = new Set<Sequence>();
    let tokens = 0, rows = 0;

    // 1. One decode token for every running sequence that has finished its prefill.
    for (const seq of [...this.running]) {
      if (seq.state !== "running" || seq.computed !== seq.tokens.length - 1 || seq.computed < seq.promptLen) continue;
      if (tokens + 1 > this.cfg.maxStepTokens || rows + 1 > this.cfg.maxOutRows) break;
      // A draft rides along when the step has room for it (each draft token is a row and a logits row).
      let count = 1 + (seq.draft?.tokens.length ?? 0);
      if (count > 1 && (tokens + count > this.cfg.maxStepTokens || rows + count > this.cfg.maxOutRows)) {
        seq.draft = undefined;
        count = 1;
      }
      const grow = this.blocksFor(seq.computed + count) - seq.blocks.length;
      // Blocks for growth and for copies of shared blocks it writes (preempting a sibling may unshare them).
      const need = () => grow + this.sharedIn(seq, seq.computed, seq.computed + count).length;
      while (need() > 0 && this.blocks.freeCount < need()) {
        const victim = [...this.running].reverse().find((s) => !inStep.has(s));
        if (!victim) break;
        this.preempt(victim);
        preempted++;
        if (victim === seq) break;
      }
      if (seq.state !== "running") continue;
      if (this.blocks.freeCount < need()) continue; // every other sequence is already in this step: wait for the next one
      if (grow > 0) seq.blocks.push(...this.blocks.alloc(grow)!);
      this.unshare(seq, seq.computed, seq.computed + count, blockCopies);
      entries.push({ seq, start: seq.computed, count, sample: true, promptRows: 0 });
      inStep.add(seq);
      tokens += count;
      rows += count;
    }

    // 2. Prefill chunks: running sequences mid-prefill first, then admissions from the waiting queue.
    let prefill = 0;
    const chunkOf = (seq: Sequence): BatchEntry | undefined => {
      const remaining = seq.tokens.length - seq.computed;
      let count = Math.min(remaining, this.cfg.maxBatchPrefillTokens - prefill, this.cfg.maxStepTokens - tokens);
      const wantsPromptRows = seq.promptLogprobs && seq.computed < seq.promptLen;
      if (wantsPromptRows) count = Math.min(count, this.cfg.maxOutRows - rows);
      if (count <= 0) return undefined;
      const sample = seq.computed + count === seq.tokens.length;
      if (!wantsPromptRows && sample && rows + 1 > this.cfg.maxOutRows) return undefined;
      // Prompt rows: every row whose next token is still in the prompt.
      const promptRows = wantsPromptRows ? Math.max(0, Math.min(seq.computed + count, seq.promptLen - 1) - seq.computed) : 0;
      return { seq, start: seq.computed, count, sample, promptRows };
    };
    const take = (e: BatchEntry): boolean => {
      if (!this.unshare(e.seq, e.start, e.start + e.count, blockCopies)) return false;
      entries.push(e);
      inStep.add(e.seq);
      tokens += e.count;
      prefill += e.count;
      rows += e.promptRows + (e.sample ? 1 : 0);
      return true;
    };
    for (const seq of this.running) {
      if (inStep.has(seq) || seq.computed >= seq.tokens.length) continue;
      const e = chunkOf(seq);
      if (e) take(e);
    }

    const minJoin =
      this.running.length === 0 || this.stepsSinceAdmit >= this.cfg.maxWaitingTokens
        ? 0
        : Math.floor(this.running.length * this.cfg.waitingServedRatio);
    if (this.waiting.length > 0 && this.waiting.length >= minJoin) {
      // KV held in tokens, counted by blocks: a prefix that sequences share (cached, or the n of one prompt) once.
      let kvHeld = this.blocks.usedCount * bs;
      const skipped: Sequence[] = [];
      while (this.waiting.length > 0 && prefill < this.cfg.maxBatchPrefillTokens && tokens < this.cfg.maxStepTokens) {
        const seq = this.waiting[0];
        const hit = this.cachedPrefix(seq);
        // Taking an idle cached block uses up a free one, as a fresh block would.
        const need = this.blocksFor(seq.tokens.length) - seq.blocks.length - hit.length + hit.filter((b) => this.blocks.isIdle(b)).length +
          this.sharedIn(seq, seq.computed, seq.tokens.length).length;
        if (need > this.blocks.freeCount || kvHeld + need * bs > this.cfg.maxBatchTotalTokens) break;
        if (!this.gate.acquire(seq)) {
          // Its adapter is not ready: let the next request go first, keep this one's place.
          skipped.push(this.waiting.shift()!);
          continue;
        }
        this.waiting.shift();
        for (const b of hit) this.blocks.take(b);
        seq.blocks.push(...hit);
        seq.computed = hit.length * bs;
        seq.registered = hit.length;
        if (seq.firstScheduledAt === undefined) seq.cachedTokens = seq.computed;
        if (this.cfg.prefixCaching && !seq.promptLogprobs) prefixQueried += seq.tokens.length;
        prefixHit += seq.computed;
        seq.blocks.push(...this.blocks.alloc(this.blocksFor(seq.tokens.length) - seq.blocks.length)!);
        seq.state = "running";
        seq.admitOrder = ++this.admitCounter;
        seq.firstScheduledAt ??= Date.now();
        this.running.push(seq);
        kvHeld += need * bs;
        const e = chunkOf(seq);
        if (!e || !take(e)) break;
      }
      this.waiting.unshift(...skipped);
      this.stepsSinceAdmit = 0;
    } else {
      this.stepsSinceAdmit++;
    }

    if (entries.length === 0) return undefined;
    return {
      entries,
      blockCopies,
      stats: {
        batchSize: entries.length,
        decodeTokens: entries.filter((e) => e.start >= e.seq.promptLen).length,
        prefillTokens: prefill,
        waiting: this.waiting.length,
        running: this.running.length,
        kvUsedBlocks: this.blocks.usedCount,
        kvTotalBlocks: this.cfg.numBlocks,
        preemptions: preempted,
        prefixQueried,
        prefixHit,
      },
    };
  }

  /**
   * Records a finished step: each sequence's new tokens (sampled, or accepted speculative ones plus the bonus)
   * and how far its KV cache now reaches (default start+count). Blocks past what the next step needs go back.
   * A sequence index 0 that just prefilled its prompt releases its children onto the shared prompt blocks.
   */
  commit(entries: BatchEntry[], results: Map<Sequence, { tokens: number[]; computed?: number }>): void {
    for (const e of entries) {
      const seq = e.seq;
      if (seq.state !== "running") continue;
      const r = results.get(seq);
      seq.computed = r?.computed ?? e.start + e.count;
      if (r) seq.tokens.push(...r.tokens);
      const moveEnd = seq.kvMoves.reduce((m, [from]) => Math.max(m, from + 1), 0);
      // Slots still needed: every token not yet in the cache (prompt left to prefill, the new token) and the
      // sources of pending KV moves; blocks past them held rejected speculative tokens.
      const keep = this.blocksFor(Math.max(seq.tokens.length, moveEnd));
      if (seq.blocks.length > keep) this.blocks.release(seq.blocks.splice(keep));
      if (this.cfg.prefixCaching) this.register(seq);
      if (seq.computed >= seq.promptLen && seq.children.length > 0) this.fork(seq);
    }
  }

  /**
   * The children share every block of the prompt's KV, the last partial one included, and join the running
   * batch at once (they are preemptable like any other, and a waiting sequence never holds blocks); each
   * recomputes only the last prompt token, whose logits sample its own first token, and that write copies the
   * block it lands in. A child whose adapter cannot be pinned now waits with no blocks and recomputes the prompt.
   */
  private fork(parent: Sequence): void {
    const share = parent.blocks.slice(0, this.blocksFor(parent.promptLen));
    for (const c of parent.children) {
      if (c.state !== "held") continue;
      if (c.cancelled) {
        c.state = "finished";
        continue;
      }
      if (!this.gate.acquire(c)) {
        c.state = "waiting";
        this.waiting.unshift(c);
        continue;
      }
      this.blocks.share(share);
      c.blocks = share.slice();
      c.computed = parent.promptLen - 1;
      c.tokenKeys = parent.tokenKeys.slice(0, Math.floor(parent.promptLen / this.cfg.blockSize));
      c.state = "running";
      c.admitOrder = ++this.admitCounter;
      c.firstScheduledAt ??= Date.now();
      this.running.push(c);
    }
    parent.children = [];
  }
}
