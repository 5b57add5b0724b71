// Accounting of the paged KV pool: which blocks are free, how many sequences share each one (prompt blocks of
// the n sequences of one request, prefixes found in the prefix cache), and the prefix cache itself: full blocks
// registered under a key that names everything their KV depends on, kept when no sequence holds them until
// their space is needed. Pure bookkeeping; the memory itself is native.

export class BlockAllocator {
  private readonly free: number[];
  private readonly refs: Uint32Array; // [numBlocks]
  private readonly keyOf = new Map<number, string>(); // registered block → its prefix key
  private readonly blockOf = new Map<string, number>(); // prefix key → the block holding that KV
  /** Registered blocks no sequence holds, least recently released first: found by key until allocated over. */
  private readonly idle = new Set<number>();

  constructor(readonly numBlocks: number) {
    this.refs = new Uint32Array(numBlocks);
    this.free = Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i);
  }

  /** Blocks an allocation may take: free ones and idle cached ones. */
  get freeCount(): number {
    return this.free.length + this.idle.size;
  }

  /** Blocks that sequences hold. */
  get usedCount(): number {
    return this.numBlocks - this.freeCount;
  }

  /** Registered blocks (held or idle). */
  get cachedCount(): number {
    return this.keyOf.size;
  }

  /** Takes n blocks, or none (returns undefined) if fewer are free: free ones first, then the idle cached blocks least recently used. */
  alloc(n: number): number[] | undefined {
    if (n > this.freeCount) return undefined;
    const fromFree = Math.min(n, this.free.length);
    const out = this.free.splice(this.free.length - fromFree, fromFree).reverse();
    for (const b of this.idle) {
      if (out.length === n) break;
      this.idle.delete(b);
      this.unregister(b);
      out.push(b);
    }
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
      if (--this.refs[b] > 0) continue;
      if (this.keyOf.has(b)) this.idle.add(b);
      else this.free.push(b);
    }
  }

  refCount(b: number): number {
    return this.refs[b];
  }

  /** The block registered under `key`, if any (held or idle); does not take it. */
  lookup(key: string): number | undefined {
    return this.blockOf.get(key);
  }

  /** Whether a block is idle: cached, held by no sequence (taking it uses up one free block). */
  isIdle(b: number): boolean {
    return this.idle.has(b);
  }

  /** Holds a registered block for one more sequence (an idle one leaves the idle set). */
  take(b: number): void {
    if (!this.keyOf.has(b)) throw new Error(`block ${b} is not in the prefix cache`);
    this.idle.delete(b);
    this.refs[b]++;
  }

  /** Registers a held block's KV under `key`, unless another block already holds that key. */
  register(b: number, key: string): void {
    if (this.refs[b] === 0) throw new Error(`block ${b} is free and cannot be registered`);
    if (this.blockOf.has(key) || this.keyOf.has(b)) return;
    this.keyOf.set(b, key);
    this.blockOf.set(key, b);
  }

  isRegistered(b: number): boolean {
    return this.keyOf.has(b);
  }

  /** Takes a block out of the prefix cache (its KV is about to be overwritten, or its space reused); no-op if not in it. */
  unregister(b: number): void {
    const key = this.keyOf.get(b);
    if (key === undefined) return;
    this.keyOf.delete(b);
    this.blockOf.delete(key);
  }
}
