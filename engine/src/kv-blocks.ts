// Accounting of the paged KV pool: which blocks are free, and how many sequences share each one (prompt
// blocks shared between the n sequences of one request). Pure bookkeeping; the memory itself is native.

export class BlockAllocator {
  private readonly free: number[];
  private readonly refs: Uint32Array; // [numBlocks]

  constructor(readonly numBlocks: number) {
    this.refs = new Uint32Array(numBlocks);
    this.free = Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i);
  }

  get freeCount(): number {
    return this.free.length;
  }

  get usedCount(): number {
    return this.numBlocks - this.free.length;
  }

  /** Takes n blocks, or none (returns undefined) if fewer are free. */
  alloc(n: number): number[] | undefined {
    if (n > this.free.length) return undefined;
    const out = this.free.splice(this.free.length - n, n).reverse();
    for (const b of out) this.refs[b] = 1;
    return out;
  }

  share(blocks: readonly number[]): void {
    for (const b of blocks) {
      if (this.refs[b] === 0) throw new Error(`block ${b} is free and cannot be shared`);
      this.refs[b]++;
    }
  }

  release(blocks: readonly number[]): void {
    for (const b of blocks) {
      if (this.refs[b] === 0) throw new Error(`block ${b} released twice`);
      if (--this.refs[b] === 0) this.free.push(b);
    }
  }

  refCount(b: number): number {
    return this.refs[b];
  }
}
