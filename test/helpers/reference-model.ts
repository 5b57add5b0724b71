// An independent float64 forward pass of the Llama family (Llama, Mistral, Qwen2), written from the published
// Hugging Face model definitions, used as the yardstick for the native engine's logits. Slow and simple.
import fs from "node:fs";
import path from "node:path";

import { readSafetensorsHeader, readTensorF32, type TensorEntry } from "../../engine/src/model/safetensors.js";

type Json = Record<string, any>;

// v as an activation entering a product with BF16 weights: to float32, then to bfloat16 (round to nearest even,
// float32 subnormals to zero), as PyTorch's bf16 inference and the engine's BF16 kernels do.
const f32 = new Float32Array(1), bits = new Uint32Array(f32.buffer);
function bf16Input(v: number): number {
  f32[0] = v;
  const u = bits[0];
  if ((u & 0x7f800000) === 0) bits[0] = u & 0x80000000;
  else if ((u & 0x7fffffff) <= 0x7f800000) bits[0] = (u + 0x7fff + ((u >>> 16) & 1)) & 0xffff0000;
  return f32[0];
}

export class ReferenceModel {
  private w = new Map<string, Float64Array>();
  private bf16 = new Set<string>(); // tensors stored as BF16: their matmul inputs are rounded to bf16
  readonly cfg: Json;
  readonly hidden: number;
  readonly heads: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly layers: number;
  readonly vocab: number;
  private invFreq: Float64Array;
  private windows: number[];

  /** bf16Inputs: round the inputs of products with BF16 tensors to bf16, as the engine does (default); false
   * keeps them float64, as a PyTorch float32 forward pass over the same weights. */
  constructor(dir: string, private readonly bf16Inputs = true) {
    this.cfg = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
    const c = this.cfg;
    const files = fs.existsSync(path.join(dir, "model.safetensors.index.json"))
      ? [...new Set(Object.values(JSON.parse(fs.readFileSync(path.join(dir, "model.safetensors.index.json"), "utf8")).weight_map as Record<string, string>))]
      : ["model.safetensors"];
    for (const f of files) {
      const p = path.join(dir, f);
      for (const t of readSafetensorsHeader(p) as TensorEntry[]) {
        this.w.set(t.name, Float64Array.from(readTensorF32(p, t)));
        if (t.dtype === "BF16") this.bf16.add(t.name);
      }
    }
    this.hidden = c.hidden_size;
    this.heads = c.num_attention_heads;
    this.kvHeads = c.num_key_value_heads ?? this.heads;
    this.headDim = c.head_dim ?? this.hidden / this.heads;
    this.layers = c.num_hidden_layers;
    this.vocab = c.vocab_size;
    // RoPE: inv_freq_i = theta^(-2i/d), then the config's scaling.
    const half = this.headDim / 2;
    this.invFreq = new Float64Array(half);
    for (let i = 0; i < half; i++) this.invFreq[i] = 1 / Math.pow(c.rope_theta ?? 10000, (2 * i) / this.headDim);
    const rs = c.rope_scaling;
    const kind = rs ? (rs.rope_type ?? rs.type) : undefined;
    if (kind === "linear") for (let i = 0; i < half; i++) this.invFreq[i] /= rs.factor;
    if (kind === "llama3") {
      const old = rs.original_max_position_embeddings;
      for (let i = 0; i < half; i++) {
        const f = this.invFreq[i], wl = (2 * Math.PI) / f;
        if (wl > old / rs.low_freq_factor) this.invFreq[i] = f / rs.factor;
        else if (wl >= old / rs.high_freq_factor) {
          const s = (old / wl - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
          this.invFreq[i] = (1 - s) * (f / rs.factor) + s * f;
        }
      }
    }
    const arch = c.architectures[0];
    this.windows = Array.from({ length: this.layers }, () =>
      arch === "MistralForCausalLM" && c.sliding_window ? c.sliding_window : 0,
    );
  }

  private get(name: string): Float64Array {
    const t = this.w.get(name);
    if (!t) throw new Error(`reference: no tensor ${name}`);
    return t;
  }

  private linear(x: Float64Array, name: string, out: number, bias?: string): Float64Array {
    const W = this.get(name), inn = x.length, y = new Float64Array(out);
    if (this.bf16Inputs && this.bf16.has(name)) x = x.map(bf16Input);
    const b = bias && this.w.has(bias) ? this.get(bias) : undefined;
    for (let o = 0; o < out; o++) {
      let s = b ? b[o] : 0;
      for (let i = 0; i < inn; i++) s += W[o * inn + i] * x[i];
      y[o] = s;
    }
    return y;
  }

  private rmsnorm(x: Float64Array, name: string): Float64Array {
    const w = this.get(name);
    let ss = 0;
    for (const v of x) ss += v * v;
    const r = 1 / Math.sqrt(ss / x.length + (this.cfg.rms_norm_eps ?? 1e-6));
    return x.map((v, i) => v * r * w[i]);
  }

  private rope(v: Float64Array, nh: number, pos: number): void {
    const hd = this.headDim, half = hd / 2;
    for (let h = 0; h < nh; h++)
      for (let i = 0; i < half; i++) {
        const a = v[h * hd + i], b = v[h * hd + i + half];
        const ang = pos * this.invFreq[i], c = Math.cos(ang), s = Math.sin(ang);
        v[h * hd + i] = a * c - b * s;
        v[h * hd + i + half] = b * c + a * s;
      }
  }

  /** Logits at every position of tokens (causal), each [vocab]; only the last one with lastOnly. */
  forward(tokens: number[], lastOnly = false): Float64Array[] {
    const H = this.hidden, hd = this.headDim, T = tokens.length;
    const emb = this.get("model.embed_tokens.weight");
    let xs: Float64Array[] = tokens.map((t) => emb.slice(t * H, (t + 1) * H));
    for (let l = 0; l < this.layers; l++) {
      const p = `model.layers.${l}.`;
      const qs: Float64Array[] = [], ks: Float64Array[] = [], vs: Float64Array[] = [];
      for (let t = 0; t < T; t++) {
        const h = this.rmsnorm(xs[t], p + "input_layernorm.weight");
        const q = this.linear(h, p + "self_attn.q_proj.weight", this.heads * hd, p + "self_attn.q_proj.bias");
        const k = this.linear(h, p + "self_attn.k_proj.weight", this.kvHeads * hd, p + "self_attn.k_proj.bias");
        const v = this.linear(h, p + "self_attn.v_proj.weight", this.kvHeads * hd, p + "self_attn.v_proj.bias");
        this.rope(q, this.heads, t);
        this.rope(k, this.kvHeads, t);
        qs.push(q), ks.push(k), vs.push(v);
      }
      const win = this.windows[l];
      const next: Float64Array[] = [];
      for (let t = 0; t < T; t++) {
        const att = new Float64Array(this.heads * hd);
        for (let h = 0; h < this.heads; h++) {
          const kh = Math.floor(h / (this.heads / this.kvHeads));
          const j0 = win ? Math.max(0, t - win + 1) : 0;
          const sc: number[] = [];
          for (let j = j0; j <= t; j++) {
            let d = 0;
            for (let i = 0; i < hd; i++) d += qs[t][h * hd + i] * ks[j][kh * hd + i];
            sc.push(d / Math.sqrt(hd));
          }
          const m = Math.max(...sc);
          const e = sc.map((s) => Math.exp(s - m));
          const z = e.reduce((a, b) => a + b, 0);
          for (let j = j0; j <= t; j++)
            for (let i = 0; i < hd; i++) att[h * hd + i] += (e[j - j0] / z) * vs[j][kh * hd + i];
        }
        const o = this.linear(att, p + "self_attn.o_proj.weight", H);
        const x1 = xs[t].map((v, i) => v + o[i]);
        const h2 = this.rmsnorm(x1, p + "post_attention_layernorm.weight");
        const I = this.cfg.intermediate_size;
        const g = this.linear(h2, p + "mlp.gate_proj.weight", I);
        const u = this.linear(h2, p + "mlp.up_proj.weight", I);
        const a = g.map((gv, i) => (gv / (1 + Math.exp(-gv))) * u[i]);
        const d = this.linear(a, p + "mlp.down_proj.weight", H);
        next.push(x1.map((v, i) => v + d[i]));
      }
      xs = next;
    }
    const head = this.cfg.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    return (lastOnly ? xs.slice(-1) : xs).map((x) => this.linear(this.rmsnorm(x, "model.norm.weight"), head, this.vocab));
  }

  /** Greedy continuation (argmax, first index on ties). */
  greedy(prompt: number[], n: number): number[] {
    const toks = prompt.slice();
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      const logits = this.forward(toks, true)[0];
      let best = 0;
      for (let v = 1; v < logits.length; v++) if (logits[v] > logits[best]) best = v;
      out.push(best);
      toks.push(best);
    }
    return out;
  }
}
