// Writes the benchmark model: a ~350M-parameter Llama-shaped random model (hidden 1024, 24 layers, 16 heads /
// 8 KV heads, intermediate 2816, vocab 32000) in F32 and BF16, with the Llama-2 style tokenizer.
// Run: `tsx scripts/bench-model.ts [dir]` (default .cache/bench-model); skips files that already exist.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { writeSafetensorsStreaming, type DType } from "../engine/src/model/safetensors.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const BENCH_MODEL_DIR = path.join(ROOT, ".cache", "bench-model");

export const BENCH_SHAPE = { hidden: 1024, layers: 24, heads: 16, kvHeads: 8, intermediate: 2816, vocab: 32000 };

export function benchTensorSpecs(dtype: DType): { name: string; dtype: DType; shape: number[] }[] {
  const { hidden: H, layers, heads, kvHeads, intermediate: I, vocab: V } = BENCH_SHAPE;
  const hd = H / heads;
  const out = [{ name: "model.embed_tokens.weight", dtype, shape: [V, H] }];
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}.`;
    out.push(
      { name: p + "self_attn.q_proj.weight", dtype, shape: [heads * hd, H] },
      { name: p + "self_attn.k_proj.weight", dtype, shape: [kvHeads * hd, H] },
      { name: p + "self_attn.v_proj.weight", dtype, shape: [kvHeads * hd, H] },
      { name: p + "self_attn.o_proj.weight", dtype, shape: [H, heads * hd] },
      { name: p + "mlp.gate_proj.weight", dtype, shape: [I, H] },
      { name: p + "mlp.up_proj.weight", dtype, shape: [I, H] },
      { name: p + "mlp.down_proj.weight", dtype, shape: [H, I] },
      { name: p + "input_layernorm.weight", dtype, shape: [H] },
      { name: p + "post_attention_layernorm.weight", dtype, shape: [H] },
    );
  }
  out.push({ name: "model.norm.weight", dtype, shape: [H] }, { name: "lm_head.weight", dtype, shape: [V, H] });
  return out;
}

/** Writes one dtype's model directory; returns its path. */
export function writeBenchModel(dtype: DType, root = BENCH_MODEL_DIR): string {
  const dir = path.join(root, dtype.toLowerCase());
  if (fs.existsSync(path.join(dir, "model.safetensors"))) return dir;
  fs.mkdirSync(dir, { recursive: true });
  let seed = 0x9e3779b9;
  const uni = () => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) / 4294967296 - 0.5;
  };
  writeSafetensorsStreaming(path.join(dir, "model.safetensors"), benchTensorSpecs(dtype), (name) => {
    const spec = benchTensorSpecs(dtype).find((t) => t.name === name)!;
    const n = spec.shape.reduce((a, d) => a * d, 1);
    const a = new Float32Array(n);
    if (spec.shape.length === 1) a.fill(1);
    else {
      const s = (name.includes("embed") ? 2 : 2 / Math.sqrt(spec.shape[1])) * Math.sqrt(3);
      for (let i = 0; i < n; i++) a[i] = uni() * s;
    }
    return a;
  });
  const tok = path.join(ROOT, "node_modules", "@lenml", "tokenizer-llama2", "models");
  fs.copyFileSync(path.join(tok, "tokenizer.json"), path.join(dir, "tokenizer.json"));
  // The Llama-2 tokenizer config has no chat template: give the bench model a plain one (HTTP chat benchmarks).
  const tokCfg = JSON.parse(fs.readFileSync(path.join(tok, "tokenizer_config.json"), "utf8"));
  tokCfg.chat_template = "{% for m in messages %}{{ '[' + m['role'] + '] ' + m['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '[assistant] ' }}{% endif %}";
  fs.writeFileSync(path.join(dir, "tokenizer_config.json"), JSON.stringify(tokCfg, null, 2));
  const { hidden, layers, heads, kvHeads, intermediate, vocab } = BENCH_SHAPE;
  fs.writeFileSync(
    path.join(dir, "config.json"),
    JSON.stringify(
      {
        architectures: ["LlamaForCausalLM"], model_type: "llama", hidden_size: hidden, num_hidden_layers: layers,
        num_attention_heads: heads, num_key_value_heads: kvHeads, intermediate_size: intermediate, vocab_size: vocab,
        hidden_act: "silu", max_position_embeddings: 4096, rms_norm_eps: 1e-5, rope_theta: 10000, tie_word_embeddings: false,
        bos_token_id: 1, eos_token_id: 2, torch_dtype: dtype === "F32" ? "float32" : "bfloat16",
      },
      null,
      2,
    ),
  );
  return dir;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const root = process.argv[2] ? path.resolve(process.argv[2]) : BENCH_MODEL_DIR;
  for (const d of ["F32", "BF16"] as DType[]) console.log(writeBenchModel(d, root));
}
