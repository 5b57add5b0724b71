// Drafting for speculative decoding: Medusa candidate trees (a sparse tree over each head's top-k tokens,
// laid out breadth-first so ancestors come first) and prompt-lookup chains (tokens that followed the latest
// n-gram earlier in the prompt or output). Verification happens natively; KV compaction is described here.

/** Draft nodes 1..M (node 0 is the root: the last committed token). */
export interface Draft {
  tokens: number[]; // [M]
  parents: number[]; // [M] parent node index (0 = root)
  depths: number[]; // [M] ≥ 1
}

/** A tree topology: for each node, its path of candidate ranks (rank r at depth d = head d-1's r-th token). */
export type TreeShape = number[][];

/**
 * The `size` most promising paths, assuming a head's r-th candidate is right with probability ∝ 1/(r+1)²
 * and each deeper head is less accurate. Breadth-first order, so a node's parent is always before it.
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
  return chosen.map((c) => c.path).sort((a, b) => a.length - b.length || key(a).localeCompare(key(b)));
}

/** Candidates per head a shape needs. */
export function shapeTopK(shape: TreeShape): number {
  return 1 + Math.max(0, ...shape.flat());
}

/** The draft for one sequence from Medusa candidates ([heads, k] ids); duplicate siblings are dropped. */
export function medusaDraft(shape: TreeShape, ids: Int32Array, heads: number, k: number): Draft {
  const d: Draft = { tokens: [], parents: [], depths: [] };
  const nodeOf = new Map<string, number>([["", 0]]);
  const siblings = new Map<number, Set<number>>();
  for (const path of shape) {
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
    nodeOf.set(path.join(","), d.tokens.length);
  }
  return d;
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
