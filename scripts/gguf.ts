// GGUF v3 writing for the benchmark peer (llama.cpp): a Hugging Face Llama directory becomes one GGUF model file
// (llama.* metadata, SentencePiece vocab, llama.cpp tensor names, Q/K rows permuted for its interleaved RoPE), and
// LoRA A/B matrices become a GGUF adapter. It reads HF files only; it does not serve, quantize or read GGUF back.
import fs from "node:fs";
import path from "node:path";

import type { LoraTarget } from "../engine/src/adapters/types.js";
import { readModelSpec, type ModelSpec } from "../engine/src/model/config.js";
import { readTensorF32, type DType } from "../engine/src/model/safetensors.js";
import { listWeights } from "../engine/src/model/weights.js";

/** ggml tensor type codes (ggml.h). */
export const GGML_TYPE: Record<DType, number> = { F32: 0, F16: 1, BF16: 30 };
/** llama_ftype codes for general.file_type. */
const FILE_TYPE: Record<DType, number> = { F32: 0, F16: 1, BF16: 32 };
/** GGUF metadata value type codes. */
export const GGUF_VALUE = { u8: 0, i8: 1, u16: 2, i16: 3, u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9, u64: 10, i64: 11, f64: 12 } as const;
/** tokenizer.ggml.token_type values (llama_token_type). */
export const TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;
export const GGUF_ALIGNMENT = 32;

export type GgufValue =
  | { type: "u32" | "i32" | "f32" | "u64"; value: number }
  | { type: "bool"; value: boolean }
  | { type: "string"; value: string }
  | { type: "strings"; value: string[] }
  | { type: "f32s"; value: ArrayLike<number> }
  | { type: "i32s"; value: ArrayLike<number> };

export const gv = {
  u32: (value: number): GgufValue => ({ type: "u32", value }),
  i32: (value: number): GgufValue => ({ type: "i32", value }),
  f32: (value: number): GgufValue => ({ type: "f32", value }),
  bool: (value: boolean): GgufValue => ({ type: "bool", value }),
  str: (value: string): GgufValue => ({ type: "string", value }),
  strs: (value: string[]): GgufValue => ({ type: "strings", value }),
  f32s: (value: ArrayLike<number>): GgufValue => ({ type: "f32s", value }),
  i32s: (value: ArrayLike<number>): GgufValue => ({ type: "i32s", value }),
};

export interface GgufTensorSpec {
  name: string;
  /** Row-major shape as PyTorch writes it ([out, in]); GGUF stores the reverse (ne[0] = innermost). */
  shape: number[];
  dtype: DType;
}

const BYTES: Record<DType, number> = { F32: 4, F16: 2, BF16: 2 };
const nbytesOf = (t: GgufTensorSpec) => t.shape.reduce((a, d) => a * d, 1) * BYTES[t.dtype];
const align = (n: number) => Math.ceil(n / GGUF_ALIGNMENT) * GGUF_ALIGNMENT;

/** A growable little-endian byte buffer for the header. */
class ByteSink {
  private buf = Buffer.alloc(1 << 16);
  length = 0;
  private room(n: number): number {
    if (this.length + n > this.buf.length) {
      const next = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n));
      this.buf.copy(next, 0, 0, this.length);
      this.buf = next;
    }
    const at = this.length;
    this.length += n;
    return at;
  }
  u32(v: number) { const at = this.room(4); this.buf.writeUInt32LE(v, at); }
  i32(v: number) { const at = this.room(4); this.buf.writeInt32LE(v, at); }
  u64(v: number) { const at = this.room(8); this.buf.writeBigUInt64LE(BigInt(v), at); }
  f32(v: number) { const at = this.room(4); this.buf.writeFloatLE(v, at); }
  u8(v: number) { const at = this.room(1); this.buf.writeUInt8(v, at); }
  str(s: string) {
    const b = Buffer.from(s, "utf8");
    this.u64(b.length);
    const at = this.room(b.length);
    b.copy(this.buf, at);
  }
  padToAlignment() { this.room(align(this.length) - this.length); }
  bytes(): Buffer { return this.buf.subarray(0, this.length); }
}

function writeValue(s: ByteSink, key: string, v: GgufValue): void {
  s.str(key);
  const arr = (elem: number, n: number) => (s.u32(GGUF_VALUE.array), s.u32(elem), s.u64(n));
  switch (v.type) {
    case "u32": return s.u32(GGUF_VALUE.u32), s.u32(v.value);
    case "i32": return s.u32(GGUF_VALUE.i32), s.i32(v.value);
    case "f32": return s.u32(GGUF_VALUE.f32), s.f32(v.value);
    case "u64": return s.u32(GGUF_VALUE.u64), s.u64(v.value);
    case "bool": return s.u32(GGUF_VALUE.bool), s.u8(v.value ? 1 : 0);
    case "string": return s.u32(GGUF_VALUE.string), s.str(v.value);
    case "strings":
      arr(GGUF_VALUE.string, v.value.length);
      for (const x of v.value) s.str(x);
      return;
    case "f32s":
      arr(GGUF_VALUE.f32, v.value.length);
      for (let i = 0; i < v.value.length; i++) s.f32(v.value[i]);
      return;
    case "i32s":
      arr(GGUF_VALUE.i32, v.value.length);
      for (let i = 0; i < v.value.length; i++) s.i32(v.value[i]);
      return;
  }
}

/**
 * Writes a GGUF v3 file: header, metadata, tensor infos, then each tensor's bytes at a 32-byte aligned offset.
 * `data(name)` returns a tensor's raw little-endian bytes in its dtype, asked for one tensor at a time.
 * Written to a temporary name, then renamed, so a killed run never leaves a half file under the real name.
 */
export function writeGguf(file: string, meta: Record<string, GgufValue>, tensors: GgufTensorSpec[], data: (name: string) => Buffer): void {
  const names = new Set<string>();
  for (const t of tensors) {
    if (names.has(t.name)) throw new Error(`GGUF tensor name "${t.name}" appears twice: each tensor needs its own name`);
    names.add(t.name);
    if (t.shape.length < 1 || t.shape.length > 4) throw new Error(`GGUF tensor ${t.name} has ${t.shape.length} dims ${JSON.stringify(t.shape)}; ggml takes 1 to 4`);
  }
  const h = new ByteSink();
  h.u32(0x46554747); // "GGUF" read as a little-endian u32
  h.u32(3);
  h.u64(tensors.length);
  h.u64(Object.keys(meta).length);
  for (const [k, v] of Object.entries(meta)) writeValue(h, k, v);
  let offset = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    h.str(t.name);
    h.u32(t.shape.length);
    for (let i = t.shape.length - 1; i >= 0; i--) h.u64(t.shape[i]);
    h.u32(GGML_TYPE[t.dtype]);
    h.u64(offset);
    offsets.push(offset);
    offset = align(offset + nbytesOf(t));
  }
  h.padToAlignment();
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, "w");
  try {
    fs.writeSync(fd, h.bytes());
    const zeros = Buffer.alloc(GGUF_ALIGNMENT);
    let at = 0;
    tensors.forEach((t, i) => {
      if (offsets[i] > at) fs.writeSync(fd, zeros, 0, offsets[i] - at);
      const b = data(t.name);
      if (b.length !== nbytesOf(t))
        throw new Error(`GGUF tensor ${t.name}: got ${b.length} bytes, ${t.dtype}${JSON.stringify(t.shape)} needs ${nbytesOf(t)}`);
      fs.writeSync(fd, b);
      at = offsets[i] + b.length;
    });
    if (offset > at) fs.writeSync(fd, zeros, 0, offset - at);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
}

/**
 * Hugging Face stores q_proj/k_proj rows per head as [two halves, headDim/2] (rotate_half RoPE); llama.cpp's Llama
 * graph rotates adjacent pairs, so each head's rows go to [headDim/2, two]: GGUF row h·d + 2i + s takes HF row
 * h·d + s·d/2 + i. Works on raw rows of any dtype (`rowBytes` per row).
 */
export function permuteRopeRows(src: Buffer, rows: number, nHeads: number, rowBytes: number): Buffer {
  if (rows % nHeads !== 0 || (rows / nHeads) % 2 !== 0)
    throw new Error(`cannot permute ${rows} rows into ${nHeads} heads of an even size (wrong head count for this projection?)`);
  if (src.length !== rows * rowBytes) throw new Error(`permuteRopeRows: ${src.length} bytes is not ${rows} rows × ${rowBytes} bytes`);
  const d = rows / nHeads, half = d / 2;
  const out = Buffer.alloc(src.length);
  for (let h = 0; h < nHeads; h++)
    for (let s = 0; s < 2; s++)
      for (let i = 0; i < half; i++) {
        const from = (h * d + s * half + i) * rowBytes;
        src.copy(out, (h * d + 2 * i + s) * rowBytes, from, from + rowBytes);
      }
  return out;
}

/** HF Llama tensor name → llama.cpp GGUF name (and the heads to permute its rows over, for q/k). */
export function ggufTensorName(hf: string, spec: Pick<ModelSpec, "numHeads" | "numKvHeads">): { name: string; permuteHeads?: number } | undefined {
  if (hf === "model.embed_tokens.weight") return { name: "token_embd.weight" };
  if (hf === "model.norm.weight") return { name: "output_norm.weight" };
  if (hf === "lm_head.weight") return { name: "output.weight" };
  const m = /^model\.layers\.(\d+)\.(.+)\.weight$/.exec(hf);
  if (!m) return undefined;
  const blk = `blk.${m[1]}.`;
  const map: Record<string, { name: string; permuteHeads?: number }> = {
    "self_attn.q_proj": { name: "attn_q", permuteHeads: spec.numHeads },
    "self_attn.k_proj": { name: "attn_k", permuteHeads: spec.numKvHeads },
    "self_attn.v_proj": { name: "attn_v" },
    "self_attn.o_proj": { name: "attn_output" },
    "mlp.gate_proj": { name: "ffn_gate" },
    "mlp.up_proj": { name: "ffn_up" },
    "mlp.down_proj": { name: "ffn_down" },
    input_layernorm: { name: "attn_norm" },
    post_attention_layernorm: { name: "ffn_norm" },
  };
  const t = map[m[2]];
  return t && { name: `${blk}${t.name}.weight`, permuteHeads: t.permuteHeads };
}

/** The GGUF name of a LoRA target's base weight in layer `layer`. */
export function ggufLoraBaseName(layer: number, target: LoraTarget): string {
  if (target === "lm_head") return "output.weight";
  const names: Record<Exclude<LoraTarget, "lm_head">, string> = {
    q_proj: "attn_q", k_proj: "attn_k", v_proj: "attn_v", o_proj: "attn_output", gate_proj: "ffn_gate", up_proj: "ffn_up", down_proj: "ffn_down",
  };
  return `blk.${layer}.${names[target]}.weight`;
}

interface TokenizerJson {
  model?: { type?: string; vocab?: Record<string, number>; merges?: (string | [string, string])[]; byte_fallback?: boolean; unk_token?: string };
  added_tokens?: { id: number; content: string; special?: boolean }[];
}

/**
 * The tokenizer.ggml.* metadata of a SentencePiece-style BPE vocab (Llama 1/2, Mistral v0.1: tokenizer.json with a
 * BPE model, byte fallback and ▁ for spaces). llama.cpp's "llama" tokenizer merges the adjacent pair whose result
 * scores highest, so each merge result scores −(its rank in `merges`): the same order Hugging Face merges in.
 */
export function llamaVocabMeta(modelDir: string, vocabSize: number): Record<string, GgufValue> {
  const file = path.join(modelDir, "tokenizer.json");
  const tj = JSON.parse(fs.readFileSync(file, "utf8")) as TokenizerJson;
  const m = tj.model;
  if (m?.type !== "BPE" || m.byte_fallback !== true || !m.vocab)
    throw new Error(
      `${file}: model type ${JSON.stringify(m?.type)} with byte_fallback ${JSON.stringify(m?.byte_fallback)}; the GGUF converter writes SentencePiece-style vocabs only (BPE with byte_fallback, as Llama 2 ships)`,
    );
  const tokens: string[] = new Array(vocabSize);
  for (const [piece, id] of Object.entries(m.vocab)) if (id < vocabSize) tokens[id] = piece;
  const special = new Map<number, string>();
  for (const a of tj.added_tokens ?? []) {
    if (a.id >= vocabSize) throw new Error(`${file}: added token ${JSON.stringify(a.content)} has id ${a.id}, beyond vocab_size ${vocabSize} in config.json`);
    tokens[a.id] = a.content;
    if (a.special) special.set(a.id, a.content);
  }
  const rank = new Map<string, number>();
  (m.merges ?? []).forEach((mg, r) => {
    const joined = typeof mg === "string" ? mg.split(" ").join("") : mg.join("");
    if (!rank.has(joined)) rank.set(joined, r);
  });
  const scores = new Float32Array(vocabSize);
  const types = new Int32Array(vocabSize);
  for (let id = 0; id < vocabSize; id++) {
    const t = tokens[id];
    if (t === undefined) {
      tokens[id] = `[PAD${id}]`;
      types[id] = TOKEN_TYPE.unused;
      continue;
    }
    if (t === m.unk_token) types[id] = TOKEN_TYPE.unknown;
    else if (special.has(id)) types[id] = TOKEN_TYPE.control;
    else if (/^<0x[0-9A-F]{2}>$/.test(t)) types[id] = TOKEN_TYPE.byte;
    else types[id] = TOKEN_TYPE.normal;
    scores[id] = types[id] === TOKEN_TYPE.normal ? -(rank.get(t) ?? id) : 0;
  }
  const cfgFile = path.join(modelDir, "tokenizer_config.json");
  const cfg = fs.existsSync(cfgFile) ? (JSON.parse(fs.readFileSync(cfgFile, "utf8")) as Record<string, unknown>) : {};
  const idOf = (v: unknown): number | undefined => {
    const s = typeof v === "string" ? v : (v as { content?: string } | null)?.content;
    if (s === undefined) return undefined;
    const id = tokens.indexOf(s);
    return id >= 0 ? id : undefined;
  };
  const meta: Record<string, GgufValue> = {
    "tokenizer.ggml.model": gv.str("llama"),
    "tokenizer.ggml.tokens": gv.strs(tokens),
    "tokenizer.ggml.scores": gv.f32s(scores),
    "tokenizer.ggml.token_type": gv.i32s(types),
  };
  const bos = idOf(cfg.bos_token), eos = idOf(cfg.eos_token), unk = idOf(cfg.unk_token ?? m.unk_token);
  if (bos !== undefined) meta["tokenizer.ggml.bos_token_id"] = gv.u32(bos);
  if (eos !== undefined) meta["tokenizer.ggml.eos_token_id"] = gv.u32(eos);
  if (unk !== undefined) meta["tokenizer.ggml.unknown_token_id"] = gv.u32(unk);
  if (typeof cfg.add_bos_token === "boolean") meta["tokenizer.ggml.add_bos_token"] = gv.bool(cfg.add_bos_token);
  if (typeof cfg.add_eos_token === "boolean") meta["tokenizer.ggml.add_eos_token"] = gv.bool(cfg.add_eos_token);
  if (typeof cfg.chat_template === "string") meta["tokenizer.chat_template"] = gv.str(cfg.chat_template);
  return meta;
}

export interface ConvertResult {
  file: string;
  tensors: number;
  bytes: number;
  dtype: DType;
}

/**
 * Converts a Hugging Face Llama directory (safetensors, single or sharded) into one GGUF model file. Matrices keep
 * their stored dtype (F32, F16 or BF16); norms are written as F32, as llama.cpp's converter does. Refuses what this
 * Llama graph in llama.cpp would compute differently (biases, sliding windows, llama3 RoPE scaling).
 */
export function convertHfToGguf(modelDir: string, outFile: string): ConvertResult {
  const spec = readModelSpec(modelDir);
  const cfg = JSON.parse(fs.readFileSync(path.join(modelDir, "config.json"), "utf8")) as Record<string, any>;
  if (spec.architecture !== "LlamaForCausalLM" && !(spec.architecture === "MistralForCausalLM" && spec.window.every((w) => w === 0)))
    throw new Error(`${modelDir}: ${spec.architecture} is not converted to GGUF here; the converter writes Llama (and Mistral without sliding window)`);
  if (spec.qkvBias) throw new Error(`${modelDir}: q/k/v biases are not written by this converter (Llama only)`);
  const scaling = cfg.rope_scaling as Record<string, unknown> | null | undefined;
  const scalingType = scaling ? (scaling.rope_type ?? scaling.type ?? "default") : "default";
  if (scalingType !== "default" && scalingType !== "linear")
    throw new Error(`${modelDir}: rope_scaling ${JSON.stringify(scalingType)} is not converted (supported: none, linear)`);
  const w = listWeights(modelDir);
  const out: { spec: GgufTensorSpec; src: (typeof w.tensors)[number]; permuteHeads?: number }[] = [];
  for (const t of w.tensors) {
    const g = ggufTensorName(t.name, spec);
    if (!g) throw new Error(`${modelDir}: tensor ${t.name} has no llama.cpp name (not a Llama weight?)`);
    const dtype: DType = t.shape.length === 1 ? "F32" : t.dtype;
    out.push({ spec: { name: g.name, shape: t.shape, dtype }, src: t, permuteHeads: g.permuteHeads });
  }
  const order = (n: string) => (n === "token_embd.weight" ? -1 : n.startsWith("blk.") ? Number(n.split(".")[1]) : 1e9);
  out.sort((a, b) => order(a.spec.name) - order(b.spec.name));
  const matDtype = out.find((o) => o.spec.shape.length === 2)?.spec.dtype ?? "F32";
  const meta: Record<string, GgufValue> = {
    "general.architecture": gv.str("llama"),
    "general.name": gv.str(path.basename(path.resolve(modelDir))),
    "general.file_type": gv.u32(FILE_TYPE[matDtype]),
    "general.alignment": gv.u32(GGUF_ALIGNMENT),
    "llama.context_length": gv.u32(spec.maxPositions),
    "llama.embedding_length": gv.u32(spec.hiddenSize),
    "llama.block_count": gv.u32(spec.numLayers),
    "llama.feed_forward_length": gv.u32(spec.intermediateSize),
    "llama.rope.dimension_count": gv.u32(spec.headDim),
    "llama.attention.head_count": gv.u32(spec.numHeads),
    "llama.attention.head_count_kv": gv.u32(spec.numKvHeads),
    "llama.attention.layer_norm_rms_epsilon": gv.f32(spec.rmsEps),
    "llama.rope.freq_base": gv.f32(cfg.rope_theta ?? 10000),
    "llama.vocab_size": gv.u32(spec.vocabSize),
  };
  if (spec.headDim * spec.numHeads !== spec.hiddenSize) {
    meta["llama.attention.key_length"] = gv.u32(spec.headDim);
    meta["llama.attention.value_length"] = gv.u32(spec.headDim);
  }
  if (scalingType === "linear") {
    meta["llama.rope.scaling.type"] = gv.str("linear");
    meta["llama.rope.scaling.factor"] = gv.f32(Number(scaling!.factor));
  }
  Object.assign(meta, llamaVocabMeta(modelDir, spec.vocabSize));
  const byName = new Map(out.map((o) => [o.spec.name, o]));
  fs.mkdirSync(path.dirname(outFile), { recursive: true });
  writeGguf(outFile, meta, out.map((o) => o.spec), (name) => {
    const o = byName.get(name)!;
    const file = w.files[o.src.file];
    if (o.spec.dtype !== o.src.dtype) {
      const f = readTensorF32(file, o.src);
      return Buffer.from(f.buffer, f.byteOffset, f.byteLength);
    }
    const raw = Buffer.alloc(o.src.nbytes);
    const fd = fs.openSync(file, "r");
    try {
      fs.readSync(fd, raw, 0, raw.length, o.src.offset);
    } finally {
      fs.closeSync(fd);
    }
    if (o.permuteHeads === undefined) return raw;
    return permuteRopeRows(raw, o.src.shape[0], o.permuteHeads, raw.length / o.src.shape[0]);
  });
  return { file: outFile, tensors: out.length, bytes: fs.statSync(outFile).size, dtype: matDtype };
}

/** Converts once: reuses `outFile` when it is newer than every weight file of `modelDir`. */
export function ensureGguf(modelDir: string, outFile: string): string {
  if (fs.existsSync(outFile)) {
    const t = fs.statSync(outFile).mtimeMs;
    const srcs = [...listWeights(modelDir).files, path.join(modelDir, "config.json"), path.join(modelDir, "tokenizer.json")];
    if (srcs.every((f) => fs.statSync(f).mtimeMs <= t)) return outFile;
  }
  convertHfToGguf(modelDir, outFile);
  return outFile;
}

export interface GgufLoraModule {
  layer: number;
  target: LoraTarget;
  rank: number;
  a: Float32Array; // [rank, dIn]
  b: Float32Array; // [dOut, rank]
  dIn: number;
  dOut: number;
}

/**
 * Writes a LoRA adapter as llama.cpp loads it: general.type "adapter", adapter.type "lora", adapter.lora.alpha, and
 * per adapted weight `<base name>.lora_a` (ne [dIn, rank]) and `.lora_b` (ne [rank, dOut]) in F32. llama.cpp scales
 * B·A by alpha / rank (times the scale given at load), as PEFT does; q/k B rows get the base weights' permutation.
 */
export function writeLoraGguf(file: string, base: Pick<ModelSpec, "numHeads" | "numKvHeads">, alpha: number, modules: GgufLoraModule[]): void {
  if (modules.length === 0) throw new Error(`LoRA GGUF ${file}: no modules to write (an adapter needs at least one A/B pair)`);
  const tensors: GgufTensorSpec[] = [];
  const data = new Map<string, Buffer>();
  for (const m of modules) {
    if (m.target === "lm_head") throw new Error(`LoRA GGUF ${file}: lm_head adapters are not written (llama.cpp treats output LoRA differently)`);
    if (m.a.length !== m.rank * m.dIn || m.b.length !== m.dOut * m.rank)
      throw new Error(`LoRA GGUF ${file}: layer ${m.layer} ${m.target} A has ${m.a.length} values, B ${m.b.length}; rank ${m.rank} with ${m.dIn}→${m.dOut} needs ${m.rank * m.dIn} and ${m.dOut * m.rank}`);
    const name = ggufLoraBaseName(m.layer, m.target);
    tensors.push({ name: `${name}.lora_a`, shape: [m.rank, m.dIn], dtype: "F32" }, { name: `${name}.lora_b`, shape: [m.dOut, m.rank], dtype: "F32" });
    const heads = m.target === "q_proj" ? base.numHeads : m.target === "k_proj" ? base.numKvHeads : 0;
    const b = Buffer.from(m.b.buffer, m.b.byteOffset, m.b.byteLength);
    data.set(`${name}.lora_a`, Buffer.from(m.a.buffer, m.a.byteOffset, m.a.byteLength));
    data.set(`${name}.lora_b`, heads ? permuteRopeRows(b, m.dOut, heads, m.rank * 4) : b);
  }
  const meta: Record<string, GgufValue> = {
    "general.architecture": gv.str("llama"),
    "general.type": gv.str("adapter"),
    "general.alignment": gv.u32(GGUF_ALIGNMENT),
    "adapter.type": gv.str("lora"),
    "adapter.lora.alpha": gv.f32(alpha),
  };
  fs.mkdirSync(path.dirname(file), { recursive: true });
  writeGguf(file, meta, tensors, (n) => data.get(n)!);
}

if (process.argv[1] && path.resolve(process.argv[1]).endsWith(path.join("scripts", "gguf.ts"))) {
  const [dir, out] = process.argv.slice(2);
  if (!dir) {
    console.error("usage: tsx scripts/gguf.ts <hf-model-dir> [out.gguf]   (default out: <dir>/model.gguf)");
    process.exit(2);
  }
  const r = convertHfToGguf(dir, out ?? path.join(dir, "model.gguf"));
  console.log(`${r.file}: ${r.tensors} tensors, ${r.dtype}, ${(r.bytes / 1e6).toFixed(1)} MB`);
}
