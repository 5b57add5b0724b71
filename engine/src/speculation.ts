// Drafting for speculative decoding: Medusa candidate trees (a sparse tree over each head's top-k tokens, its
// paths in the order they were chosen so ancestors come first and every prefix is a smaller tree), the tree
// size each step should propose (TreeSizer), and prompt-lookup chains (tokens that followed the latest n-gram
// earlier in the prompt or output). Verification happens natively; KV compaction is described here.

/** Draft nodes 1..M (node 0 is the root: the last committed token). */
export interface Draft {
  tokens: number[]; // [M]
  parents: number[]; // [M] parent node index (0 = root)
  depths: number[]; // [M] ≥ 1
  /** Medusa drafts: each node's index in the tree shape (for acceptance statistics). */
  shapeIndex?: number[]; // [M]
}

/** A tree topology: for each node, its path of candidate ranks (rank r at depth d = head d-1's r-th token). */
export type TreeShape = number[][];

/**
 * The `size` most promising paths, assuming a head's r-th candidate is right with probability ∝ 1/(r+1)²
 * and each deeper head is less accurate, in the order they were chosen: a node's parent is always before it,
 * and the first n paths are the best tree of n nodes.
 */
export function medusaTreeShape(heads: number, size: number): TreeShape {
  const rankP = (r: number) => 1 / ((r + 1) * (r + 1));
  const depthP = (d: number) => 0.8 ** d;
  const chosen: { path: number[]; score: number }[] = [];
  const frontier = [{ path: [0], score: rankP(0) * depthP(0) }];
  const key = (p: number[]) => p.join(",");
  const seen = new Set<string>([key([0])]);
  while (chosen.length < size && frontier.length > 0) {
    frontier.sort((a, b) => b.score - a.score);
    const best = frontier.shift()!;
    chosen.push(best);
    const d = best.path.length;
    const last = best.path[d - 1];
    const next: number[][] = [best.path.slice(0, -1).concat(last + 1)];
    if (d < heads) next.push(best.path.concat(0));
    for (const p of next) {
      if (seen.has(key(p))) continue;
      seen.add(key(p));
      frontier.push({ path: p, score: best.score * (p.length > d ? rankP(0) * depthP(d) : rankP(last + 1) / rankP(last)) });
    }
  }
  return chosen.map((c) => c.path);
}

/** Candidates per head a shape needs. */
export function shapeTopK(shape: TreeShape): number {
  return 1 + Math.max(0, ...shape.flat());
}

/** The draft for one sequence from Medusa candidates ([heads, k] ids); duplicate siblings are dropped. */
export function medusaDraft(shape: TreeShape, ids: Int32Array, heads: number, k: number): Draft {
  const d: Draft = { tokens: [], parents: [], depths: [], shapeIndex: [] };
  const nodeOf = new Map<string, number>([["", 0]]);
  const siblings = new Map<number, Set<number>>();
  for (const [index, path] of shape.entries()) {
    const depth = path.length;
    if (depth > heads) continue;
    const parent = nodeOf.get(path.slice(0, -1).join(","));
    if (parent === undefined) continue;
    const token = ids[(depth - 1) * k + path[depth - 1]];
    if (token < 0) continue;
    const sib = siblings.get(parent) ?? siblings.set(parent, new Set()).get(parent)!;
    if (sib.has(token)) continue;
    sib.add(token);
    d.tokens.push(token);
    d.parents.push(parent);
    d.depths.push(depth);
    d.shapeIndex!.push(index);
    nodeOf.set(path.join(","), d.tokens.length);
  }
  return d;
}

/**
 * Chooses how many nodes of the Medusa tree the next step proposes: the prefix size n that maximises tokens
 * gained per millisecond of step. Two measurements feed it. Each tree path's acceptance rate (how often it was
 * on the accepted path when proposed, decayed so it follows the text) gives a sequence's expected gain with n
 * nodes, 1 + the sum of the first n rates. The model's time for pure decode steps by their token count, the
 * heads' time (which a step of size 0 can skip) and the engine's own time per step give the cost of a step with
 * n nodes per speculating sequence. A large model on a CPU is memory bound, and verifying a few more tokens
 * costs little; a small one is compute bound, and every node costs nearly a token. Each time is the median of
 * its last 15 samples (steps on a shared machine stall now and then, and an average let one stall, or one
 * lucky fast step, decide), and every `explore`-th step tries a size next to the best (two larger, or one
 * smaller) to keep both measured.
 */
export class TreeSizer {
  private readonly proposed: Float64Array;
  private readonly accepted: Float64Array;
  private readonly cost = new Map<number, Recent>(); // step tokens → the model's ms (heads excluded)
  private readonly heads = new Recent(); // the heads' ms per step
  private readonly overhead = new Recent(); // the engine's ms per step outside the native call
  private steps = 0;

  constructor(
    readonly maxSize: number,
    private readonly explore = 16,
    private readonly decay = 0.99,
  ) {
    this.proposed = new Float64Array(maxSize);
    this.accepted = new Float64Array(maxSize);
  }

  /** A pure decode step of `tokens` tokens: `nativeMs` in the addon, of which `headsMs` the heads (0: none ran). */
  observeStep(tokens: number, nativeMs: number, headsMs: number, wallMs: number): void {
    let c = this.cost.get(tokens);
    if (!c) this.cost.set(tokens, (c = new Recent()));
    c.add(nativeMs - headsMs);
    if (headsMs > 0) this.heads.add(headsMs);
    this.overhead.add(Math.max(0, wallMs - nativeMs));
  }

  /** A verified draft: the shape index of each proposed node, and the accepted draft nodes (1-based). */
  observeDraft(shapeIndex: readonly number[], acceptedNodes: readonly number[]): void {
    for (const i of shapeIndex) {
      this.proposed[i] = this.proposed[i] * this.decay + 1;
      this.accepted[i] *= this.decay;
    }
    for (const node of acceptedNodes) this.accepted[shapeIndex[node - 1]] += 1;
  }

  /**
   * Tokens a sequence is expected to gain per step with the first n nodes. An unmeasured path counts 0.2: too
   * hopeful a prior made rarely proposed deep paths look worth their cost on a compute-bound model.
   */
  expectedGain(n: number): number {
    let e = 1;
    for (let i = 0; i < n; i++) e += (this.accepted[i] + 0.2) / (this.proposed[i] + 1);
    return e;
  }

  /**
   * Smoothed ms of a decode step of T tokens, engine time included: measured, else interpolated between
   * measurements, else extrapolated above them; undefined below every measurement or with only one (to be tried).
   */
  stepCost(T: number, heads: boolean): number | undefined {
    const c = this.modelCost(T), h = this.heads.median();
    if (c === undefined || (heads && h === undefined)) return undefined;
    return c + (heads ? h! : 0) + (this.overhead.median() ?? 0);
  }

  private modelCost(T: number): number | undefined {
    const exact = this.cost.get(T)?.median();
    if (exact !== undefined) return exact;
    let lo: [number, number] | undefined, hi: [number, number] | undefined, top: [number, number] | undefined, next: [number, number] | undefined;
    for (const [t, recent] of this.cost) {
      const c = recent.median()!;
      if (t < T && (!lo || t > lo[0])) lo = [t, c];
      if (t > T && (!hi || t < hi[0])) hi = [t, c];
      if (!top || t > top[0]) (next = top), (top = [t, c]);
      else if (!next || t > next[0]) next = [t, c];
    }
    if (lo && hi) return lo[1] + ((hi[1] - lo[1]) * (T - lo[0])) / (hi[0] - lo[0]);
    if (!lo || !top || !next) return undefined;
    return top[1] + (Math.max(0, top[1] - next[1]) * (T - top[0])) / (top[0] - next[0]);
  }

  /** The size that maximises tokens per ms now; the smallest size whose cost was never measured comes first. */
  best(spec: number, other: number): number {
    let best = 0, bestRate = -Infinity;
    for (let n = 0; n <= this.maxSize; n++) {
      const c = this.stepCost(other + spec * (1 + n), n > 0);
      if (c === undefined) return n; // never measured: find out
      const rate = (other + spec * this.expectedGain(n)) / c;
      // A larger tree must beat the best smaller one by 2%: measurements are noisy, and a wrong larger choice
      // costs more than a wrong smaller one.
      if (rate > bestRate * 1.02) (best = n), (bestRate = rate);
    }
    return best;
  }

  /**
   * The plan for the next step, with `spec` sequences drafting by Medusa and `other` other decode tokens:
   * how many nodes to propose (0 when this step computed no candidates), and whether that step should run
   * the heads at all. While no tree pays (size 0) the heads are skipped too, but every `explore` steps they
   * run once so that the step after can try a tree; while one pays, every `explore`-th step proposes two
   * nodes more than the best, one fewer, or none, in turn, so that their costs stay measured. None matters
   * most: a first measurement of plain steps may be a cold one (caches, sleeping threads right after the
   * model loaded), and a stale high cost there would keep a losing tree chosen for good.
   */
  plan(spec: number, other: number, haveCandidates: boolean): { size: number; heads: boolean } {
    const phase = this.steps % this.explore, round = Math.floor(this.steps++ / this.explore);
    const best = spec > 0 ? this.best(spec, other) : 0;
    const near = best === 0 || round % 3 === 0 ? Math.min(this.maxSize, best + 2) : round % 3 === 1 ? best - 1 : 0;
    const size = !haveCandidates ? 0 : phase === this.explore - 1 ? near : best;
    return { size, heads: best > 0 || phase === this.explore - 2 };
  }
}

/** The last 15 samples of a time, and their median (kept up to date as samples arrive). */
class Recent {
  private readonly xs: number[] = [];
  private at = 0;
  private mid?: number;
  add(x: number): void {
    if (this.xs.length < 15) this.xs.push(x);
    else this.xs[this.at++ % 15] = x;
    const s = this.xs.slice().sort((a, b) => a - b);
    this.mid = s[s.length >> 1];
  }
  median(): number | undefined {
    return this.mid;
  }
}

/** Prompt lookup: the tokens that followed the most recent earlier match of the last n-gram (n = 3, 2, 1). */
export function lookupDraft(tokens: readonly number[], maxTokens: number, minN = 1, maxN = 3): Draft {
  const L = tokens.length;
  for (let n = Math.min(maxN, L - 1); n >= minN; n--) {
    for (let start = L - n - 1; start >= 0; start--) {
      let match = true;
      for (let i = 0; i < n; i++)
        if (tokens[start + i] !== tokens[L - n + i]) {
          match = false;
          break;
        }
      if (!match) continue;
      const follow = tokens.slice(start + n, Math.min(start + n + maxTokens, L));
      if (follow.length === 0) continue;
      return { tokens: follow, parents: follow.map((_, i) => i), depths: follow.map((_, i) => i + 1) };
    }
  }
  return { tokens: [], parents: [], depths: [] };
}

/** Attention masks of the draft rows: node i sees the context, its ancestors and itself (bit j = node j+1). */
export function treeMasks(d: Draft): bigint[] {
  const masks: bigint[] = [];
  for (let i = 0; i < d.tokens.length; i++) {
    const p = d.parents[i];
    masks.push((p > 0 ? masks[p - 1] : 0n) | (1n << BigInt(i)));
  }
  return masks;
}

/** The tokens from the root down to node `node` (1-based; 0 is the root: an empty path). */
export function pathOf(d: Draft, node: number): number[] {
  const path: number[] = [];
  for (let n = node; n > 0; n = d.parents[n - 1]) path.push(d.tokens[n - 1]);
  return path.reverse();
}
