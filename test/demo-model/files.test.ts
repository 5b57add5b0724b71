// File-level checks of the shipped demo model (models/demo): every file parses, configs agree with the tensor
// shapes in the safetensors headers, the tokenizer and chat template work in the HF JS libraries, sizes stay small.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { Template } from "@huggingface/jinja";
import { Tokenizer } from "@huggingface/tokenizers";
import { describe, expect, it } from "vitest";

import { ReferenceModel } from "../helpers/reference-model.js";

const DIR = fileURLToPath(new URL("../../models/demo/", import.meta.url));
const MAX_BYTES = 25_000_000;
const PROJ_ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"];
const PROJ_MLP = ["gate_proj", "up_proj", "down_proj"];
const DTYPE_BYTES: Record<string, number> = { F32: 4, BF16: 2, F16: 2 };

type Json = Record<string, any>;
interface Entry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

const readJson = (rel: string): Json => JSON.parse(fs.readFileSync(path.join(DIR, rel), "utf8"));

/** The header of a .safetensors file, read by hand: u64 LE length, then that many bytes of JSON. */
function safetensorsHeader(rel: string): Map<string, Entry> {
  const file = path.join(DIR, rel);
  const fd = fs.openSync(file, "r");
  try {
    const len = Buffer.alloc(8);
    fs.readSync(fd, len, 0, 8, 0);
    const n = Number(len.readBigUInt64LE(0));
    const raw = Buffer.alloc(n);
    fs.readSync(fd, raw, 0, n, 8);
    const header = JSON.parse(raw.toString("utf8")) as Record<string, Entry | Json>;
    const entries = new Map<string, Entry>();
    for (const [name, e] of Object.entries(header)) if (name !== "__metadata__") entries.set(name, e as Entry);
    // Data regions tile the data section exactly and match dtype x shape.
    const spans = [...entries.values()].map((e) => e.data_offsets).sort((a, b) => a[0] - b[0]);
    let at = 0;
    for (const [begin, end] of spans) {
      expect(begin).toBe(at);
      at = end;
    }
    expect(8 + n + at).toBe(fs.statSync(file).size);
    for (const [name, e] of entries) {
      const count = e.shape.reduce((a, b) => a * b, 1);
      expect(e.data_offsets[1] - e.data_offsets[0], name).toBe(count * DTYPE_BYTES[e.dtype]);
    }
    return entries;
  } finally {
    fs.closeSync(fd);
  }
}

function folderBytes(dir: string): number {
  let total = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    total += entry.isDirectory() ? folderBytes(p) : fs.statSync(p).size;
  }
  return total;
}

const config = readJson("config.json");
const H = config.hidden_size;
const adapterNames = fs.readdirSync(path.join(DIR, "adapters")).sort();

describe("demo model files", () => {
  it("has every file, and all JSON parses", () => {
    const files = [
      "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
      "README.md", "samples.json", "train_log.json",
      "medusa/config.json", "medusa/medusa_lm_head.safetensors",
      ...["fortunes", "german", "kjv", "bofh"].map((c) => `heldout/${c}.txt`),
      ...adapterNames.flatMap((a) => [`adapters/${a}/adapter_config.json`, `adapters/${a}/adapter_model.safetensors`]),
    ];
    for (const f of files) expect(fs.existsSync(path.join(DIR, f)), f).toBe(true);
    for (const f of files.filter((f) => f.endsWith(".json"))) expect(() => readJson(f), f).not.toThrow();
    for (const c of ["fortunes", "german", "kjv", "bofh"]) {
      const size = fs.statSync(path.join(DIR, `heldout/${c}.txt`)).size;
      expect(size).toBeGreaterThan(500);
      expect(size).toBeLessThan(16_000);
    }
  });

  it("stays within the size budget", () => {
    expect(folderBytes(DIR)).toBeLessThanOrEqual(MAX_BYTES);
  });

  it("has a Llama config whose fields agree with the tensor shapes", () => {
    expect(config.architectures).toEqual(["LlamaForCausalLM"]);
    expect(config.model_type).toBe("llama");
    expect(config.tie_word_embeddings).toBe(true);
    expect(config.num_attention_heads % config.num_key_value_heads).toBe(0);
    expect(config.num_key_value_heads).toBeLessThan(config.num_attention_heads);
    const hd = config.head_dim, I = config.intermediate_size, V = config.vocab_size;
    const expected = new Map<string, number[]>([["model.embed_tokens.weight", [V, H]], ["model.norm.weight", [H]]]);
    for (let i = 0; i < config.num_hidden_layers; i++) {
      const p = `model.layers.${i}.`;
      expected.set(p + "self_attn.q_proj.weight", [config.num_attention_heads * hd, H]);
      expected.set(p + "self_attn.k_proj.weight", [config.num_key_value_heads * hd, H]);
      expected.set(p + "self_attn.v_proj.weight", [config.num_key_value_heads * hd, H]);
      expected.set(p + "self_attn.o_proj.weight", [H, config.num_attention_heads * hd]);
      expected.set(p + "mlp.gate_proj.weight", [I, H]);
      expected.set(p + "mlp.up_proj.weight", [I, H]);
      expected.set(p + "mlp.down_proj.weight", [H, I]);
      expected.set(p + "input_layernorm.weight", [H]);
      expected.set(p + "post_attention_layernorm.weight", [H]);
    }
    const tensors = safetensorsHeader("model.safetensors");
    expect([...tensors.keys()].sort()).toEqual([...expected.keys()].sort());
    for (const [name, shape] of expected) {
      expect(tensors.get(name)!.shape, name).toEqual(shape);
      expect(tensors.get(name)!.dtype, name).toBe("BF16");
    }
    expect(config.torch_dtype).toBe("bfloat16");
    const gen = readJson("generation_config.json");
    expect(gen.eos_token_id).toBe(config.eos_token_id);
    expect(gen.bos_token_id).toBe(config.bos_token_id);
  });
});

describe("demo tokenizer", () => {
  const tokenizerJson = readJson("tokenizer.json");
  const tokenizerConfig = readJson("tokenizer_config.json");
  const tok = new Tokenizer(tokenizerJson, tokenizerConfig);
  const samples = readJson("samples.json").samples as Record<string, Json[]>;

  it("has the special tokens at the ids the model config names", () => {
    expect(tok.token_to_id(tokenizerConfig.bos_token)).toBe(config.bos_token_id);
    expect(tok.token_to_id(tokenizerConfig.eos_token)).toBe(config.eos_token_id);
    expect(tok.token_to_id(tokenizerConfig.pad_token)).toBe(config.pad_token_id);
    expect(tok.get_vocab(true).size).toBe(config.vocab_size);
    expect(tok.encode("<|user|>hi<|end|>", { add_special_tokens: false }).ids).toEqual([
      tok.token_to_id("<|user|>"), ...tok.encode("hi", { add_special_tokens: false }).ids, config.eos_token_id,
    ]);
  });

  it.each([
    "The quick brown fox jumps over the lazy dog. It's 42, isn't it?",
    "Grüße aus Köln: Äpfel, Öl, Übermut und Spaß.",
    "Emoji 🙂🎉 and a skin tone 👍🏽, then 東京 and ﬁ ligatures.",
    "  two  spaces,\ttabs\t\tand\n\nnewlines  \n",
    "\t\t-- Mark Twain",
  ])("round-trips %j exactly", (text) => {
    const ids = tok.encode(text, { add_special_tokens: false }).ids;
    expect(tok.decode(ids)).toBe(text);
    const withBos = tok.encode(text).ids;
    expect(withBos[0]).toBe(config.bos_token_id);
    expect(withBos.slice(1)).toEqual(ids);
  });

  it("compresses English text with its merges", () => {
    const text = "Whenever you find yourself on the side of the majority, it is time to pause and reflect.";
    expect(tok.encode(text, { add_special_tokens: false }).ids.length).toBeLessThan(text.length / 3);
  });

  it("renders the chat template with @huggingface/jinja, as the training script did", () => {
    const template = new Template(tokenizerConfig.chat_template);
    const messages = [
      { role: "system", content: "You are a helpful assistant." },
      { role: "user", content: "Tell me about love." },
    ];
    const vars = { bos_token: tokenizerConfig.bos_token, eos_token: tokenizerConfig.eos_token };
    expect(template.render({ messages, add_generation_prompt: true, ...vars })).toBe(
      "<|bos|><|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nTell me about love.<|end|>\n<|assistant|>\n",
    );
    expect(template.render({ messages: messages.slice(1), add_generation_prompt: false, ...vars })).toBe(
      "<|bos|><|user|>\nTell me about love.<|end|>\n",
    );
  });

  it("tokenizes the sample prompts to the ids the Python tokenizer produced", () => {
    const template = new Template(tokenizerConfig.chat_template);
    for (const s of samples.base) {
      const ids =
        s.kind === "chat"
          ? tok.encode(
              template.render({
                messages: [{ role: "user", content: s.prompt }],
                add_generation_prompt: true,
                bos_token: tokenizerConfig.bos_token,
              }),
              { add_special_tokens: false },
            ).ids
          : tok.encode(s.prompt).ids;
      expect(ids, s.prompt).toEqual(s.prompt_ids);
      expect(tok.decode(s.output_ids, { skip_special_tokens: true })).toBe(s.output);
    }
  });
});

describe("demo adapters", () => {
  const KEY = /^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$/;

  it("ships at least three distinct LoRA adapters", () => {
    expect(adapterNames.length).toBeGreaterThanOrEqual(3);
    const configs = adapterNames.map((a) => readJson(`adapters/${a}/adapter_config.json`));
    expect(new Set(configs.map((c) => `${c.r}/${c.lora_alpha}/${c.target_modules}/${c.use_rslora}`)).size).toBeGreaterThan(1);
    expect(configs.some((c) => c.use_rslora || Object.keys(c.rank_pattern).length > 0)).toBe(true);
  });

  it.each(adapterNames)("%s follows the PEFT layout and matches the base shapes", (name) => {
    const c = readJson(`adapters/${name}/adapter_config.json`);
    expect(c).toMatchObject({
      peft_type: "LORA", task_type: "CAUSAL_LM", bias: "none", fan_in_fan_out: false,
      use_dora: false, modules_to_save: null, inference_mode: true,
    });
    expect(typeof c.base_model_name_or_path).toBe("string");
    const tensors = safetensorsHeader(`adapters/${name}/adapter_model.safetensors`);
    const dims: Record<string, [number, number]> = {
      q_proj: [H, config.num_attention_heads * config.head_dim],
      k_proj: [H, config.num_key_value_heads * config.head_dim],
      v_proj: [H, config.num_key_value_heads * config.head_dim],
      o_proj: [config.num_attention_heads * config.head_dim, H],
      gate_proj: [H, config.intermediate_size],
      up_proj: [H, config.intermediate_size],
      down_proj: [config.intermediate_size, H],
    };
    const seen = new Set<string>();
    for (const [key, e] of tensors) {
      const m = KEY.exec(key);
      expect(m, key).not.toBeNull();
      const [, layer, block, proj, ab] = m!;
      expect(block).toBe(PROJ_ATTN.includes(proj) ? "self_attn" : "mlp");
      expect(c.target_modules).toContain(proj);
      expect(Number(layer)).toBeLessThan(config.num_hidden_layers);
      const r = (c.rank_pattern as Record<string, number>)[proj] ?? c.r;
      const [inDim, outDim] = dims[proj];
      expect(e.shape, key).toEqual(ab === "A" ? [r, inDim] : [outDim, r]);
      seen.add(key);
    }
    for (let i = 0; i < config.num_hidden_layers; i++)
      for (const proj of c.target_modules as string[])
        for (const ab of ["A", "B"]) {
          const block = PROJ_ATTN.includes(proj) ? "self_attn" : PROJ_MLP.includes(proj) ? "mlp" : "?";
          expect(seen.has(`base_model.model.model.layers.${i}.${block}.${proj}.lora_${ab}.weight`)).toBe(true);
        }
  });
});

describe("demo Medusa heads", () => {
  it("is a version-2 head set shaped for the base", () => {
    const c = readJson("medusa/config.json");
    expect(c.version).toBe(2);
    expect(c.medusa_num_layers).toBe(1);
    expect(c.medusa_num_heads).toBeGreaterThanOrEqual(2);
    expect(c.hidden_size).toBe(H);
    expect(c.vocab_size).toBe(config.vocab_size);
    expect(typeof c.base_model_name_or_path).toBe("string");
    const tensors = safetensorsHeader("medusa/medusa_lm_head.safetensors");
    const expected = new Map<string, number[]>();
    for (let h = 0; h < c.medusa_num_heads; h++) {
      expected.set(`medusa_head.${h}.0.linear.weight`, [H, H]);
      expected.set(`medusa_head.${h}.0.linear.bias`, [H]);
    }
    expect([...tensors.keys()].sort()).toEqual([...expected.keys()].sort());
    for (const [name, shape] of expected) expect(tensors.get(name)!.shape).toEqual(shape);
  });
});

describe("demo model logits", () => {
  it("match an independent float64 Llama forward pass (base model, first sample prompts)", () => {
    // samples.json's logits come from scripts/demo-model's PyTorch model, which runs the bf16 weights in float32:
    // the reference keeps its activations unrounded to match.
    const ref = new ReferenceModel(DIR, false);
    const samples = readJson("samples.json").samples.base as Json[];
    for (const s of samples.slice(0, 2)) {
      const logits = ref.forward(s.prompt_ids, true)[0];
      const order = [...logits.keys()].sort((a, b) => logits[b] - logits[a]).slice(0, 5);
      expect(order, s.prompt).toEqual(s.first_step_top5.ids);
      order.forEach((id, i) => expect(Math.abs(logits[id] - s.first_step_top5.logits[i])).toBeLessThan(2e-3));
      const n = Math.min(6, s.output_ids.length); // the sample stops after <|end|>
      expect(ref.greedy(s.prompt_ids, n)).toEqual(s.output_ids.slice(0, n));
    }
  });
});
