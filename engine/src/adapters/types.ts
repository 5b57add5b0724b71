// Shared shapes of adapter data between formats/, sources/, merge and the registry.
// No I/O here: these are plain typed values.

/** The linear layers of the Llama family a LoRA may target. */
export const LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"] as const;
export type LoraTarget = (typeof LORA_TARGETS)[number];

/** Dimensions of the base model an adapter is validated against. */
export interface BaseModelShape {
  numLayers: number;
  hiddenSize: number;
  intermediateSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
}

/** Input and output width of each target in a base model: y[dOut] = W[dOut, dIn] · x[dIn]. */
export function targetDims(shape: BaseModelShape, target: LoraTarget): { dIn: number; dOut: number } {
  const h = shape.hiddenSize;
  switch (target) {
    case "q_proj":
      return { dIn: h, dOut: shape.numHeads * shape.headDim };
    case "k_proj":
    case "v_proj":
      return { dIn: h, dOut: shape.numKvHeads * shape.headDim };
    case "o_proj":
      return { dIn: shape.numHeads * shape.headDim, dOut: h };
    case "gate_proj":
    case "up_proj":
      return { dIn: h, dOut: shape.intermediateSize };
    case "down_proj":
      return { dIn: shape.intermediateSize, dOut: h };
    case "lm_head":
      return { dIn: h, dOut: shape.vocabSize };
  }
}

/** One adapted linear layer: ΔW = scale · B · A. */
export interface LoraModule {
  layer: number; // -1 for lm_head
  target: LoraTarget;
  rank: number;
  scale: number; // lora_alpha / rank, or lora_alpha / sqrt(rank) with rsLoRA; per-module patterns applied
  dIn: number;
  dOut: number;
  a: Float32Array; // [rank, dIn]
  b: Float32Array; // [dOut, rank]
}

/** A LoRA adapter read, normalised and validated, ready for the pool or for merging. */
export interface LoraWeights {
  modules: LoraModule[]; // sorted by (layer, target order of LORA_TARGETS); lm_head last
  maxRank: number;
  /** Non-fatal findings, e.g. a target module this server skips. */
  warnings: string[];
  /** Bytes of A and B in float32. */
  sizeBytes: number;
}
