// Reads a Hugging Face config.json (+ generation_config.json) of the Llama family into the engine's ModelSpec:
// dimensions, RoPE frequencies with scaling applied, per-layer sliding windows, special token ids.
// Unsupported architectures and settings are refused here, at start-up, with the supported list.
import fs from "node:fs";
import path from "node:path";

export const SUPPORTED_ARCHITECTURES = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"] as const;

export interface ModelSpec {
  architecture: (typeof SUPPORTED_ARCHITECTURES)[number];
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsEps: number;
  maxPositions: number;
  tied: boolean;
  qkvBias: boolean;
  invFreq: Float32Array; // [headDim/2], float32 as Hugging Face computes it
  window: Int32Array; // [numLayers], 0 = full attention
  bosTokenId?: number;
  eosTokenIds: number[];
  torchDtype?: string;
}

export class ModelConfigError extends Error {}

type Json = Record<string, any>;

function int(cfg: Json, key: string, where: string, def?: number): number {
  const v = cfg[key] ?? def;
  if (!Number.isSafeInteger(v) || v <= 0) throw new ModelConfigError(`${where}: "${key}" is ${JSON.stringify(cfg[key])}, expected a positive integer`);
  return v;
}

export function readModelSpec(dir: string): ModelSpec {
  const file = path.join(dir, "config.json");
  let cfg: Json;
  try {
    cfg = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    throw new ModelConfigError(`cannot read ${file}: ${(e as Error).message}`);
  }
  let gen: Json = {};
  const genFile = path.join(dir, "generation_config.json");
  if (fs.existsSync(genFile)) {
    try {
      gen = JSON.parse(fs.readFileSync(genFile, "utf8"));
    } catch (e) {
      throw new ModelConfigError(`cannot parse ${genFile}: ${(e as Error).message}`);
    }
  }
  return parseModelSpec(cfg, gen, file);
}

export function parseModelSpec(cfg: Json, gen: Json, where: string): ModelSpec {
  const archs: unknown = cfg.architectures;
  const arch = Array.isArray(archs) ? archs.find((a) => (SUPPORTED_ARCHITECTURES as readonly string[]).includes(a)) : undefined;
  if (!arch)
    throw new ModelConfigError(
      `${where}: unsupported architecture ${JSON.stringify(archs ?? cfg.model_type)}; supported: ${SUPPORTED_ARCHITECTURES.join(", ")}`,
    );
  if ((cfg.hidden_act ?? "silu") !== "silu")
    throw new ModelConfigError(`${where}: hidden_act "${cfg.hidden_act}" is not supported (only silu)`);
  if (cfg.attention_bias === true || cfg.mlp_bias === true)
    throw new ModelConfigError(`${where}: attention_bias/mlp_bias on a ${arch} is not supported`);
  const hidden = int(cfg, "hidden_size", where);
  const heads = int(cfg, "num_attention_heads", where);
  const kvHeads = int(cfg, "num_key_value_heads", where, heads);
  const headDim = cfg.head_dim == null ? hidden / heads : int(cfg, "head_dim", where);
  if (!Number.isInteger(headDim) || headDim % 2 !== 0)
    throw new ModelConfigError(`${where}: head_dim ${headDim} (hidden_size / num_attention_heads) must be an even integer`);
  if (heads % kvHeads !== 0)
    throw new ModelConfigError(`${where}: num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads}`);
  const layers = int(cfg, "num_hidden_layers", where);
  const theta = cfg.rope_theta ?? 10000;
  if (typeof theta !== "number" || !(theta > 0)) throw new ModelConfigError(`${where}: rope_theta ${JSON.stringify(theta)} must be a positive number`);
  const maxPositions = int(cfg, "max_position_embeddings", where, 2048);
  const invFreq = ropeInvFreq(headDim, theta, cfg.rope_scaling ?? null, maxPositions, where);

  const window = new Int32Array(layers);
  if (Array.isArray(cfg.layer_types) && cfg.sliding_window != null) {
    cfg.layer_types.forEach((t: string, i: number) => {
      if (t === "sliding_attention" && i < layers) window[i] = int(cfg, "sliding_window", where);
    });
  } else if (arch === "MistralForCausalLM" && cfg.sliding_window != null) {
    window.fill(int(cfg, "sliding_window", where));
  } else if (arch === "Qwen2ForCausalLM" && cfg.use_sliding_window === true && cfg.sliding_window != null) {
    const from = cfg.max_window_layers ?? layers;
    for (let i = from; i < layers; i++) window[i] = int(cfg, "sliding_window", where);
  }

  const eos = new Set<number>();
  for (const src of [cfg.eos_token_id, gen.eos_token_id]) {
    for (const v of Array.isArray(src) ? src : src == null ? [] : [src]) if (Number.isSafeInteger(v)) eos.add(v);
  }
  return {
    architecture: arch as ModelSpec["architecture"],
    vocabSize: int(cfg, "vocab_size", where),
    hiddenSize: hidden,
    intermediateSize: int(cfg, "intermediate_size", where),
    numLayers: layers,
    numHeads: heads,
    numKvHeads: kvHeads,
    headDim,
    rmsEps: cfg.rms_norm_eps ?? 1e-6,
    maxPositions,
    tied: cfg.tie_word_embeddings ?? false,
    qkvBias: arch === "Qwen2ForCausalLM",
    invFreq,
    window,
    bosTokenId: Number.isSafeInteger(cfg.bos_token_id) ? cfg.bos_token_id : undefined,
    eosTokenIds: [...eos],
    torchDtype: cfg.torch_dtype ?? cfg.dtype,
  };
}

/** RoPE inverse frequencies in float32 steps, as transformers computes them, with linear / llama3 scaling. */
export function ropeInvFreq(headDim: number, theta: number, scaling: Json | null, maxPositions: number, where: string): Float32Array {
  const f = Math.fround;
  const half = headDim / 2;
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) inv[i] = f(1 / f(Math.pow(theta, f(f(2 * i) / headDim))));
  const type = scaling ? (scaling.rope_type ?? scaling.type ?? "default") : "default";
  if (type === "default") return inv;
  const factor = scaling!.factor;
  if (typeof factor !== "number" || !(factor > 0)) throw new ModelConfigError(`${where}: rope_scaling.factor ${JSON.stringify(factor)} must be a positive number`);
  if (type === "linear") {
    for (let i = 0; i < half; i++) inv[i] = f(inv[i] / factor);
    return inv;
  }
  if (type === "llama3") {
    const low = scaling!.low_freq_factor ?? 1;
    const high = scaling!.high_freq_factor ?? 4;
    const old = scaling!.original_max_position_embeddings ?? maxPositions;
    const lowWavelen = old / low;
    const highWavelen = old / high;
    for (let i = 0; i < half; i++) {
      const freq = inv[i];
      const wavelen = (2 * Math.PI) / freq;
      if (wavelen < highWavelen) continue;
      if (wavelen > lowWavelen) inv[i] = f(freq / factor);
      else {
        const smooth = (old / wavelen - low) / (high - low);
        inv[i] = f((1 - smooth) * (freq / factor) + smooth * freq);
      }
    }
    return inv;
  }
  throw new ModelConfigError(`${where}: rope_scaling type "${type}" is not supported (supported: linear, llama3)`);
}
