// The Medusa tree size controller alone: prefixes of the tree are trees; the size chosen follows measured step
// cost and acceptance (none pays on a compute-bound model with poor heads, a big one on a memory-bound model
// with good heads); unmeasured sizes are tried; the heads are skipped while no tree pays, except to explore.
import { describe, expect, it } from "vitest";

import { TreeSizer, medusaDraft, medusaTreeShape } from "../../engine/src/speculation.js";
import { rng } from "../helpers/tiny.js";

const r = rng(7);

/**
 * Feeds `steps` steps of one speculating sequence: the model's time from `cost(tokens)`, the heads' `headsMs`
 * when they ran, acceptance from `hit`.
 */
function drive(z: TreeSizer, steps: number, cost: (T: number) => number, headsMs: number, hit: (shapeIndex: number) => boolean) {
  const sizes: number[] = [];
  let have = true, heads = true;
  for (let i = 0; i < steps; i++) {
    const plan = z.plan(1, 0, have);
    sizes.push(plan.size);
    const idx = Array.from({ length: plan.size }, (_, j) => j);
    // The accepted path: the draft nodes (1-based) that hit, while every earlier one did (a chain is enough here).
    const accepted: number[] = [];
    for (const j of idx) if (hit(j) && accepted.length === j) accepted.push(j + 1);
    if (plan.size > 0) z.observeDraft(idx, accepted);
    const h = heads ? headsMs : 0;
    z.observeStep(1 + plan.size, cost(1 + plan.size) + h, h, cost(1 + plan.size) + h + 0.1);
    have = plan.heads;
    heads = plan.heads;
  }
  return sizes;
}

describe("Medusa tree shapes", () => {
  it("every prefix of the tree is a tree: parents come first", () => {
    const shape = medusaTreeShape(4, 16);
    expect(shape).toHaveLength(16);
    for (let n = 1; n <= 16; n++) {
      const prefix = new Set(shape.slice(0, n).map((p) => p.join(",")));
      for (const p of shape.slice(0, n)) if (p.length > 1) expect(prefix.has(p.slice(0, -1).join(","))).toBe(true);
      // A smaller tree is the prefix of a larger one.
      expect(medusaTreeShape(4, n)).toEqual(shape.slice(0, n));
    }
  });

  it("drafts carry each node's index in the shape", () => {
    const shape = medusaTreeShape(2, 4); // [0], [0,0], [1], ...
    const ids = Int32Array.from([7, 8, 9, 10, 11, 12]); // head 0: 7 8 9, head 1: 10 11 12 (k = 3)
    const d = medusaDraft(shape, ids, 2, 3);
    expect(d.shapeIndex).toHaveLength(d.tokens.length);
    for (const [i, si] of d.shapeIndex!.entries()) expect(d.depths[i]).toBe(shape[si].length);
  });
});

describe("TreeSizer", () => {
  it("tries each size whose cost is unknown, smallest first, then chooses by tokens per ms", () => {
    const z = new TreeSizer(4);
    expect(z.plan(1, 0, true).size).toBe(0);
    z.observeStep(1, 1, 0, 1.1);
    expect(z.plan(1, 0, true).size).toBe(1); // the heads' time is not known yet either
    z.observeStep(2, 1.3, 0.3, 1.4); // a second token costs nothing: memory bound
    // Sizes 2-4 now extrapolate flat from the two measurements; with unmeasured paths counted at ½ each, the
    // whole tree gains most.
    expect(z.plan(1, 0, true).size).toBe(4);
    z.observeStep(5, 9.3, 0.3, 9.4); // ...but five tokens cost nine times one: beyond two it is compute bound
    expect(z.best(1, 0)).toBe(0); // and no path has been accepted yet
    for (let i = 0; i < 10; i++) z.observeDraft([0, 1, 2, 3], [1]); // the first path always right, the rest never
    expect(z.best(1, 0)).toBe(1);
  });

  it("compute bound (a step costs per token) with poor heads: proposes nothing and stops running the heads", () => {
    const z = new TreeSizer(8, 16);
    const sizes = drive(z, 400, (T) => T, 0.3, (j) => j === 0 && r(1) < 0.3);
    const tail = sizes.slice(200);
    // Apart from the exploring steps, size 0.
    expect(tail.filter((s) => s === 0).length).toBeGreaterThan(tail.length * 0.85);
    expect(z.best(1, 0)).toBe(0);
  });

  it("a cold first measurement of plain steps does not keep a losing tree chosen: plain steps are measured again", () => {
    const z = new TreeSizer(8, 16);
    // The first plain steps after loading ran cold, at 20× their cost. From then on one token costs 1 ms and
    // two or more cost ~1.9 ms (a small model, where a GEMV and a GEMM differ), and the heads are too poor for
    // a tree to pay. Against the cold cost a three-node tree looks best, and two more or one fewer (the sizes
    // explored around it) never measure plain steps again.
    for (let i = 0; i < 3; i++) z.observeStep(1, 20, 0, 20.1);
    const sizes = drive(z, 1200, (T) => (T === 1 ? 1 : 1.8 + 0.05 * T), 0.3, (j) => j < 3 && r(1) < 0.5);
    const tail = sizes.slice(800);
    expect(tail.filter((s) => s === 0).length).toBeGreaterThan(tail.length * 0.85);
    expect(z.best(1, 0)).toBe(0);
  });

  it("memory bound (a step costs nearly the same for a few more tokens) with good heads: proposes a larger tree", () => {
    const z = new TreeSizer(8, 16);
    drive(z, 400, (T) => 20 + 0.5 * T, 0.2, (j) => j < 4 && r(1) < 0.8);
    const best = z.best(1, 0);
    expect(best).toBeGreaterThanOrEqual(3);
    expect(z.expectedGain(best)).toBeGreaterThan(2);
  });

  it("interpolates between measured step costs, extrapolates above them, and adds the heads only when they run", () => {
    const z = new TreeSizer(8);
    z.observeStep(2, 11, 1, 11); // model 10 ms, heads 1 ms
    z.observeStep(6, 21, 1, 21); // model 20 ms
    expect(z.stepCost(4, false)).toBeCloseTo(15);
    expect(z.stepCost(4, true)).toBeCloseTo(16);
    expect(z.stepCost(8, false)).toBeCloseTo(25);
    expect(z.stepCost(1, false)).toBeUndefined();
  });

  it("a stall does not move a size's cost; a lasting change does", () => {
    const z = new TreeSizer(2);
    for (let i = 0; i < 5; i++) z.observeStep(1, 1, 0, 1);
    z.observeStep(1, 10, 0, 10); // a stall on a shared machine
    expect(z.stepCost(1, false)).toBe(1);
    for (let i = 0; i < 15; i++) z.observeStep(1, 2, 0, 2);
    expect(z.stepCost(1, false)).toBe(2);
  });
});
