// Test helpers for LoRA: writes PEFT adapters with random weights for a base model, writes a copy of a base
// model with an adapter merged into its weights (W + scale·B·A, in float64), and builds an engine with a real
// adapter registry over local sources.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import pino from "pino";

import { AdapterRegistry } from "../../engine/src/adapters/registry.js";
import { createAdapterSources } from "../../engine/src/adapters/sources/index.js";
import { targetDims, type BaseModelShape, type LoraTarget } from "../../engine/src/adapters/types.js";
import { Engine, type EngineOptions } from "../../engine/src/engine.js";
import { readSafetensorsHeader, readTensorF32, writeSafetensors, type TensorToWrite } from "../../engine/src/model/safetensors.js";
import { normalRng } from "../../scripts/tiny-models.js";
import { TEST_ENGINE_OPTIONS, tinyModels } from "./tiny.js";

export interface AdapterSpec {
  rank: number;
  alpha: number;
  targets: LoraTarget[];
  rslora?: boolean;
  alphaPattern?: Record<string, number>;
  rankPattern?: Record<string, number>;
  layers?: number[];
  seed: number;
  /** Scale of B's entries (PEFT initialises B to 0; trained adapters are not). */
  bScale?: number;
}

export interface WrittenModule {
  layer: number;
  target: LoraTarget;
  scale: number;
  rank: number;
  a: Float32Array; // [rank, dIn]
  b: Float32Array; // [dOut, rank]
}

const BLOCK: Record<LoraTarget, string> = { q_proj: "self_attn", k_proj: "self_attn", v_proj: "self_attn", o_proj: "self_attn", gate_proj: "mlp", up_proj: "mlp", down_proj: "mlp", lm_head: "" };

export function weightName(layer: number, target: LoraTarget): string {
  return target === "lm_head" ? "lm_head.weight" : `model.layers.${layer}.${BLOCK[target]}.${target}.weight`;
}

/** Writes adapter_config.json + adapter_model.safetensors with PEFT's key names; returns the modules. */
export function writeAdapter(dir: string, base: BaseModelShape, spec: AdapterSpec): WrittenModule[] {
  fs.mkdirSync(dir, { recursive: true });
  const rnd = normalRng(spec.seed);
  const layers = spec.layers ?? Array.from({ length: base.numLayers }, (_, i) => i);
  const tensors: TensorToWrite[] = [];
  const mods: WrittenModule[] = [];
  for (const target of spec.targets) {
    for (const layer of target === "lm_head" ? [-1] : layers) {
      const rank = spec.rankPattern?.[target] ?? spec.rank;
      const alpha = spec.alphaPattern?.[target] ?? spec.alpha;
      const { dIn, dOut } = targetDims(base, target);
      const a = Float32Array.from({ length: rank * dIn }, () => rnd() / Math.sqrt(dIn));
      const b = Float32Array.from({ length: dOut * rank }, () => rnd() * (spec.bScale ?? 0.5));
      const prefix = target === "lm_head" ? "base_model.model.lm_head" : `base_model.model.model.layers.${layer}.${BLOCK[target]}.${target}`;
      tensors.push({ name: `${prefix}.lora_A.weight`, dtype: "F32", shape: [rank, dIn], data: a });
      tensors.push({ name: `${prefix}.lora_B.weight`, dtype: "F32", shape: [dOut, rank], data: b });
      mods.push({ layer, target, rank, a, b, scale: spec.rslora ? alpha / Math.sqrt(rank) : alpha / rank });
    }
  }
  writeSafetensors(path.join(dir, "adapter_model.safetensors"), tensors);
  fs.writeFileSync(
    path.join(dir, "adapter_config.json"),
    JSON.stringify({
      peft_type: "LORA", task_type: "CAUSAL_LM", r: spec.rank, lora_alpha: spec.alpha, target_modules: spec.targets,
      use_rslora: spec.rslora ?? false, alpha_pattern: spec.alphaPattern ?? {}, rank_pattern: spec.rankPattern ?? {},
      layers_to_transform: spec.layers ?? null, lora_dropout: 0, bias: "none", fan_in_fan_out: false, modules_to_save: null,
      base_model_name_or_path: "tiny", use_dora: false, inference_mode: true,
    }),
  );
  return mods;
}

/** A copy of `src` (a single-file F32 model) with the modules merged into its weights. */
export function writeMergedModel(src: string, dst: string, mods: WrittenModule[]): void {
  fs.mkdirSync(dst, { recursive: true });
  for (const f of fs.readdirSync(src)) if (f !== "model.safetensors") fs.copyFileSync(path.join(src, f), path.join(dst, f));
  const file = path.join(src, "model.safetensors");
  const out: TensorToWrite[] = [];
  for (const t of readSafetensorsHeader(file)) {
    const w = readTensorF32(file, t);
    for (const m of mods.filter((x) => weightName(x.layer, x.target) === t.name)) {
      const [dOut, dIn] = t.shape;
      const merged = new Float64Array(w);
      for (let o = 0; o < dOut; o++)
        for (let i = 0; i < dIn; i++) {
          let s = 0;
          for (let j = 0; j < m.rank; j++) s += m.b[o * m.rank + j] * m.a[j * dIn + i];
          merged[o * dIn + i] += m.scale * s;
        }
      w.set(merged);
    }
    out.push({ name: t.name, dtype: t.dtype, shape: t.shape, data: w });
  }
  writeSafetensors(path.join(dst, "model.safetensors"), out);
}

export function shapeOf(engine: Engine): BaseModelShape {
  const s = engine.spec;
  return { numLayers: s.numLayers, hiddenSize: s.hiddenSize, intermediateSize: s.intermediateSize, numHeads: s.numHeads, numKvHeads: s.numKvHeads, headDim: s.headDim, vocabSize: s.vocabSize };
}

export interface AdapterEngine {
  engine: Engine;
  registry: AdapterRegistry;
  root: string;
  close(): void;
}

/** An engine over a tiny model with a registry whose local root is a fresh temp directory. */
export async function adapterEngine(model: string, opts: Partial<EngineOptions> & { slots?: number; budgetBytes?: number; cycleMs?: number } = {}): Promise<AdapterEngine> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "loraserve-lora-"));
  const engine = await Engine.create(tinyModels()[model], { ...TEST_ENGINE_OPTIONS, loraSlots: opts.slots ?? 8, loraMaxRank: 128, ...opts });
  const logger = pino({ level: "silent" });
  const sources = await createAdapterSources({ dataDir: root, localRoots: [root], logger });
  const registry = new AdapterRegistry({
    backend: engine.backend, sources, maxActive: opts.slots ?? 8, activeBudgetBytes: opts.budgetBytes ?? 1 << 30,
    hostBudgetBytes: 1 << 30, cycleTimeMs: opts.cycleMs ?? 200, maxMergeIds: 8, logger, wake: () => engine.kick(),
    medusaHeads: () => engine.medusaHeads,
  });
  engine.setAdapterProvider(registry);
  return {
    engine, registry, root,
    close: () => {
      engine.backend.close();
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
}
