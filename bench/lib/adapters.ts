// Random LoRA adapters for the benchmarks, identical for both engines: in memory for ours (loaded into LoRA slots
// with a key → slot gate), as GGUF files for llama.cpp. No adapter sources, registry or residency logic here.
import fs from "node:fs";
import path from "node:path";

import { LORA_TARGETS, targetDims, type BaseModelShape, type LoraModule, type LoraTarget, type LoraWeights } from "../../engine/src/adapters/types.js";
import type { Engine } from "../../engine/src/engine.js";
import type { ModelSpec } from "../../engine/src/model/config.js";
import type { Sequence } from "../../engine/src/scheduler.js";
import { writeLoraGguf } from "../../scripts/gguf.js";

/** The seven projections of every layer (lm_head left out: llama.cpp adapts only the blocks' weights). */
export const BENCH_LORA_TARGETS: LoraTarget[] = LORA_TARGETS.filter((t) => t !== "lm_head");

export function baseShape(spec: ModelSpec): BaseModelShape {
  return {
    numLayers: spec.numLayers, hiddenSize: spec.hiddenSize, intermediateSize: spec.intermediateSize, numHeads: spec.numHeads,
    numKvHeads: spec.numKvHeads, headDim: spec.headDim, vocabSize: spec.vocabSize,
  };
}

/**
 * A seeded random rank-`rank` LoRA on every layer's seven projections: A ~ U with std 1/√dIn, B with std
 * `bStd`/√rank, scale alpha/rank (PEFT's rule, and llama.cpp's for adapter.lora.alpha). Big enough to change
 * greedy tokens, small enough to keep activations in range.
 */
export function randomLora(shape: BaseModelShape, rank: number, seed: number, alpha = 2 * rank, bStd = 0.1): LoraWeights & { alpha: number } {
  let s = (seed * 0x9e3779b1 + 0x7f4a7c15) >>> 0 || 1;
  const uni = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296 - 0.5;
  };
  const fill = (n: number, std: number) => {
    const a = new Float32Array(n), k = std * Math.sqrt(12);
    for (let i = 0; i < n; i++) a[i] = uni() * k;
    return a;
  };
  const modules: LoraModule[] = [];
  let sizeBytes = 0;
  for (let layer = 0; layer < shape.numLayers; layer++)
    for (const target of BENCH_LORA_TARGETS) {
      const { dIn, dOut } = targetDims(shape, target);
      const m: LoraModule = { layer, target, rank, scale: alpha / rank, dIn, dOut, a: fill(rank * dIn, 1 / Math.sqrt(dIn)), b: fill(dOut * rank, bStd / Math.sqrt(rank)) };
      modules.push(m);
      sizeBytes += (m.a.length + m.b.length) * 4;
    }
  return { modules, maxRank: rank, warnings: [], sizeBytes, alpha };
}

/** Writes (once) the GGUF file of `randomLora(shape, rank, seed)` under `dir`; returns its path. */
export function loraGguf(dir: string, spec: ModelSpec, rank: number, seed: number): string {
  const file = path.join(dir, `lora-r${rank}-s${seed}.gguf`);
  if (fs.existsSync(file)) return file;
  const w = randomLora(baseShape(spec), rank, seed);
  writeLoraGguf(file, spec, w.alpha, w.modules);
  return file;
}

/**
 * Loads `count` adapters into the engine's LoRA slots (slot i ← make(i), made one at a time and dropped once copied;
 * the first `alreadyLoaded` a previous call loaded) and routes each request's `adapterKey` ("lora-<i>") to its slot. Throws, with the reason,
 * when the engine has no LoRA support (the caller skips).
 */
export async function installAdapters(engine: Engine, count: number, make: (i: number) => LoraWeights, alreadyLoaded = 0): Promise<string[]> {
  const backend = engine.backend as Partial<Pick<Engine["backend"], "loraLoad">>;
  if (typeof backend.loraLoad !== "function") throw new Error("the engine's backend has no loraLoad: multi-LoRA support is not in this build");
  if (typeof engine.scheduler?.setGate !== "function") throw new Error("the engine's scheduler has no setGate: cannot route requests to LoRA slots");
  const keys = Array.from({ length: count }, (_, i) => `lora-${i}`);
  for (let i = alreadyLoaded; i < count; i++) await engine.backend.loraLoad(i, make(i));
  const slotOf = new Map(keys.map((k, i) => [k, i]));
  engine.scheduler.setGate({
    acquire: (seq: Sequence) => {
      seq.adapterSlot = seq.adapterKey === null ? -1 : (slotOf.get(seq.adapterKey) ?? -1);
      return true;
    },
    release: () => {},
  });
  return keys;
}
