// Tests readPeftAdapter over every real-world weight folder and over synthetic adapters built in temp directories.
// Covers key layouts, dtypes, scales, patterns, fan_in_fan_out, file precedence and each refusal with its message.

import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { type PeftAdapter, readPeftAdapter } from "../../../../engine/src/adapters/formats/peft.js";
import { type BaseModelShape, type LoraTarget, targetDims } from "../../../../engine/src/adapters/types.js";
import { AdapterIncompatibleError, NotFoundError } from "../../../../engine/src/errors.js";
import { type Dtype, type TensorSpec, Pickle, adapterDir, removeTempDirs, safetensors, torchArchive, values, zip } from "./writers.js";

afterAll(removeTempDirs);

const WEIGHTS = "/work/shared/fixtures/real-world/peft-weights";

// Base shapes for the "accept" folders, read off each adapter's own tensor shapes (tensors.tsv) and its base model.
/** TinyLlama-1.1B: hidden 2048, 22 layers, 32 heads, 4 kv heads, head_dim 64, intermediate 5632, vocab 32000. */
const TINYLLAMA: BaseModelShape = { numLayers: 22, hiddenSize: 2048, intermediateSize: 5632, numHeads: 32, numKvHeads: 4, headDim: 64, vocabSize: 32000 };
/** Qwen2.5-0.5B: hidden 896, 24 layers, 14 heads, 2 kv heads, head_dim 64, intermediate 4864, vocab 151936. */
const QWEN05B: BaseModelShape = { numLayers: 24, hiddenSize: 896, intermediateSize: 4864, numHeads: 14, numKvHeads: 2, headDim: 64, vocabSize: 151936 };
/** The Ministral-3b adapter's tensors: hidden 4096, layers 0–13, q 32×128, k/v 8×128 (GQA); MLP and vocab unused. */
const MINISTRAL: BaseModelShape = { numLayers: 14, hiddenSize: 4096, intermediateSize: 14336, numHeads: 32, numKvHeads: 8, headDim: 128, vocabSize: 32768 };
/** Gemma-2b: hidden 2048, 18 layers, 8 heads, 1 kv head, head_dim 256, intermediate 16384, vocab 256000. */
const GEMMA2B: BaseModelShape = { numLayers: 18, hiddenSize: 2048, intermediateSize: 16384, numHeads: 8, numKvHeads: 1, headDim: 256, vocabSize: 256000 };

type FolderVerdict =
  | { base: BaseModelShape; modules: number; rank: number; scale: number; targets: LoraTarget[]; layers: number }
  | { base: BaseModelShape; refuse: RegExp };

/** Every folder of peft-weights/ → accepted (with what it must contain) or refused (with the reason). */
const FOLDERS: Record<string, FolderVerdict> = {
  // TinyLlama r=4 α=32 q/v, torch .bin with storages on cuda:0
  "othorizedshogun__poem-generator__model": { base: TINYLLAMA, modules: 44, rank: 4, scale: 8, targets: ["q_proj", "v_proj"], layers: 22 },
  // Qwen2.5-0.5B r=6 α=32 q/v, safetensors F32
  "MatthewZhang473__LoRA_Qwen0.5B__fine_tuned_models-20251017_101834_r6_alpha32": {
    base: QWEN05B,
    modules: 48,
    rank: 6,
    scale: 32 / 6,
    targets: ["q_proj", "v_proj"],
    layers: 24,
  },
  // Ministral-3b r=4 α=16 q/v, safetensors F32
  rohitamar__llamafinetuning__results: { base: MINISTRAL, modules: 28, rank: 4, scale: 4, targets: ["q_proj", "v_proj"], layers: 14 },
  // Gemma-2b r=8 α=32 q/k/v/o, BF16, keys with a doubled base_model.model. prefix
  "NandhiniMuralidharan__Gemma-Medical-LoRA-FineTuning__adapters": {
    base: GEMMA2B,
    modules: 72,
    rank: 8,
    scale: 4,
    targets: ["q_proj", "k_proj", "v_proj", "o_proj"],
    layers: 18,
  },
  // GPT-NeoX fused query_key_value
  "BK7195__deltacompression-poc__adapter": {
    base: TINYLLAMA,
    refuse: /no tensors matched a module of the base model .*e\.g\. "base_model\.model\.gpt_neox\.layers\.0\.attention\.query_key_value\.lora_A\.weight"/,
  },
  // GPT-2 Conv1D c_attn
  "chetanreddyv__ChessGPT__model": {
    base: TINYLLAMA,
    refuse: /no tensors matched a module of the base model .*e\.g\. "base_model\.model\.transformer\.h\.0\.attn\.c_attn\.lora_A\.weight"/,
  },
  // BERT query/value under four nested prefixes, plus a classifier head
  "Pseudo-CS__Intel-Proj__model": { base: TINYLLAMA, refuse: /no tensors matched a module of the base model .*bert\.encoder\.layer\.0\.attention\.self\.query\.lora_A\.weight/ },
  // pre-0.3 MergedLinear (3-D lora_B)
  "wujindou__BLOOM-LORA__root": { base: TINYLLAMA, refuse: /adapter_config\.json: uses a feature .*enable_lora \[true,false,true\]/ },
  "_broken__sherryxzhao__lora_alpaca__output": { base: TINYLLAMA, refuse: /adapter_model\.bin: not a complete zip archive: no end-of-central-directory record/ },
  "_broken__Hastws__NVIDIA-Nemotron-Model-Reasoning-Challenge__adapter": { base: TINYLLAMA, refuse: /adapter_model\.safetensors: the file is empty \(0 bytes\)/ },
  "_broken__Aakashkuragayala__AIT-st125050-Master-Research__llama3_finetuned": {
    base: TINYLLAMA,
    refuse: /adapter_model\.safetensors: the file is 2 bytes, shorter than the 8-byte header length/,
  },
  "_broken__Yairama__alpaca-miner__root": { base: TINYLLAMA, refuse: /adapter_model\.bin: the file is a Git LFS pointer, not the weights/ },
  "_not-peft__Arjun-254__Medical_Question_Answering_SLM__adapters": { base: GEMMA2B, refuse: /adapter_config\.json: this is an MLX-LM adapter config/ },
  "_not-peft__Inishpy__lerobot-libero__root": { base: TINYLLAMA, refuse: /adapter_config\.json: no peft_type: not a PEFT adapter config \(keys: base_model\)/ },
};

describe("real-world adapter folders", () => {
  const folders = readdirSync(WEIGHTS);

  it("the table covers every folder", () => {
    expect(folders.sort()).toEqual(Object.keys(FOLDERS).sort());
  });

  it.each(folders)("%s", async (folder) => {
    const expected = FOLDERS[folder];
    const read = readPeftAdapter(join(WEIGHTS, folder), expected.base, { name: folder });
    if ("refuse" in expected) {
      await expect(read).rejects.toThrow(AdapterIncompatibleError);
      await expect(read).rejects.toThrow(new RegExp(`^adapter "${folder.replace(/[.]/g, "\\.")}": `));
      await expect(read).rejects.toThrow(expected.refuse);
      return;
    }
    const adapter = await read;
    expect(adapter.modules).toHaveLength(expected.modules);
    expect(adapter.maxRank).toBe(expected.rank);
    expect(adapter.warnings).toEqual([]);
    expect(new Set(adapter.modules.map((m) => m.target))).toEqual(new Set(expected.targets));
    expect(new Set(adapter.modules.map((m) => m.layer)).size).toBe(expected.layers);
    let floats = 0;
    for (const m of adapter.modules) {
      const { dIn, dOut } = targetDims(expected.base, m.target);
      expect([m.rank, m.dIn, m.dOut, m.a.length, m.b.length]).toEqual([expected.rank, dIn, dOut, m.rank * dIn, dOut * m.rank]);
      expect(m.scale).toBeCloseTo(expected.scale, 12);
      expect(m.a.some((x) => x !== 0)).toBe(true);
      floats += m.a.length + m.b.length;
    }
    expect(adapter.sizeBytes).toBe(4 * floats);
  });

  it("keeps values exactly: TinyLlama layer 0 q_proj lora_A starts as in the file", async () => {
    const a = await readPeftAdapter(join(WEIGHTS, "othorizedshogun__poem-generator__model"), TINYLLAMA);
    expect(a.modules[0]).toMatchObject({ layer: 0, target: "q_proj" });
    expect(Array.from(a.modules[0].a.slice(0, 2))).toEqual([Math.fround(-0.0003008994390256703), Math.fround(0.016157763078808784)]);
    expect(a.modules.at(-1)).toMatchObject({ layer: 21, target: "v_proj" });
  });

  it("refuses a real adapter against the wrong base, naming tensor, shape and expected shape", async () => {
    await expect(readPeftAdapter(join(WEIGHTS, "rohitamar__llamafinetuning__results"), TINYLLAMA, { name: "ministral" })).rejects.toThrow(
      'adapter "ministral": tensor layers.0.q_proj.lora_A has shape [4,4096], base expects [4,2048] (trained for another base model?)',
    );
    const fewer = { ...QWEN05B, numLayers: 22 };
    await expect(
      readPeftAdapter(join(WEIGHTS, "MatthewZhang473__LoRA_Qwen0.5B__fine_tuned_models-20251017_101834_r6_alpha32"), fewer),
    ).rejects.toThrow(/tensor layers\.22\.q_proj\.lora_A is for layer 22, but the base model has 22 layers \(0–21\)/);
  });
});

/** A tiny Llama-shaped base: q 16→16, k/v 16→8, o 16→16, gate/up 16→24, down 24→16, lm_head 16→40. */
const TINY: BaseModelShape = { numLayers: 4, hiddenSize: 16, intermediateSize: 24, numHeads: 4, numKvHeads: 2, headDim: 4, vocabSize: 40 };

function moduleKey(layer: number, target: LoraTarget): string {
  if (target === "lm_head") return "lm_head";
  const block = ["gate_proj", "up_proj", "down_proj"].includes(target) ? "mlp" : "self_attn";
  return `model.layers.${layer}.${block}.${target}`;
}

interface LoraOpts {
  rank?: number;
  dtype?: Dtype;
  prefix?: string;
  adapterName?: string;
  transposed?: boolean;
  base?: BaseModelShape;
}

/** The A and B tensors of one module as PEFT saves them (A [rank, dIn], B [dOut, rank]), seeded contents. */
function lora(layer: number, target: LoraTarget, seed: number, o: LoraOpts = {}): TensorSpec[] {
  const rank = o.rank ?? 2;
  const { dIn, dOut } = targetDims(o.base ?? TINY, target);
  const key = (part: string) => `${o.prefix ?? "base_model.model."}${moduleKey(layer, target)}.${part}${o.adapterName ? `.${o.adapterName}` : ""}.weight`;
  const a = values(rank * dIn, seed);
  const b = values(dOut * rank, seed + 1000);
  if (o.transposed) {
    return [
      { name: key("lora_A"), dtype: o.dtype, shape: [dIn, rank], data: transpose(a, rank, dIn) },
      { name: key("lora_B"), dtype: o.dtype, shape: [rank, dOut], data: transpose(b, dOut, rank) },
    ];
  }
  return [
    { name: key("lora_A"), dtype: o.dtype, shape: [rank, dIn], data: a },
    { name: key("lora_B"), dtype: o.dtype, shape: [dOut, rank], data: b },
  ];
}

function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = x[i * cols + j];
  return out;
}

const CONFIG = { peft_type: "LORA", r: 2, lora_alpha: 8, target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"] };

async function read(config: object, tensors: TensorSpec[], base = TINY): Promise<PeftAdapter> {
  return readPeftAdapter(adapterDir({ "adapter_config.json": config, "adapter_model.safetensors": safetensors(tensors) }), base, { name: "t" });
}

async function refusal(files: Record<string, string | Buffer | object>, base = TINY): Promise<string> {
  try {
    await readPeftAdapter(adapterDir(files), base, { name: "sql-v2" });
  } catch (err) {
    expect(err).toBeInstanceOf(AdapterIncompatibleError);
    return (err as Error).message;
  }
  throw new Error("expected the adapter to be refused");
}

describe("readPeftAdapter: synthetic adapters", () => {
  it("reads A and B as saved, with scale alpha/r, sorted by layer then target, lm_head last", async () => {
    const adapter = await read(CONFIG, [...lora(1, "v_proj", 1), ...lora(0, "down_proj", 2), ...lora(-1, "lm_head", 3), ...lora(0, "q_proj", 4)]);
    expect(adapter.modules.map((m) => [m.layer, m.target])).toEqual([
      [0, "q_proj"],
      [0, "down_proj"],
      [1, "v_proj"],
      [-1, "lm_head"],
    ]);
    const q = adapter.modules[0];
    expect(q).toMatchObject({ rank: 2, scale: 4, dIn: 16, dOut: 16 });
    expect(Array.from(q.a)).toEqual(Array.from(values(32, 4)));
    expect(Array.from(q.b)).toEqual(Array.from(values(32, 1004)));
    expect(adapter.modules[3]).toMatchObject({ dIn: 16, dOut: 40 });
    expect(adapter.sizeBytes).toBe(4 * (2 * 16 + 16 * 2 + (2 * 24 + 16 * 2) + (2 * 16 + 8 * 2) + (2 * 16 + 40 * 2)));
    expect(adapter.maxRank).toBe(2);
    expect(adapter.config.loraAlpha).toBe(8);
    expect(adapter.warnings).toEqual([]);
  });

  it.each(["F16", "BF16"] as const)("decodes %s weights to the same float32 values", async (dtype) => {
    const specs = lora(0, "q_proj", 5, { dtype }).map((t) => ({ ...t, data: Array.from(t.data, (v) => Math.round(v * 64) / 64) }));
    const adapter = await read(CONFIG, specs);
    expect(Array.from(adapter.modules[0].a)).toEqual(specs[0].data);
  });

  it("accepts the adapter-name form (.lora_A.default.weight), no prefix, and a doubled prefix", async () => {
    for (const o of [{ adapterName: "default" }, { prefix: "" }, { prefix: "base_model.model.base_model.model." }]) {
      const adapter = await read(CONFIG, lora(2, "o_proj", 6, o));
      expect(adapter.modules).toHaveLength(1);
      expect(Array.from(adapter.modules[0].a)).toEqual(Array.from(values(32, 6)));
    }
  });

  it("refuses tensors of several adapters in one file, and two tensors for one factor", async () => {
    const mixed = [...lora(0, "q_proj", 1, { adapterName: "default" }), ...lora(1, "q_proj", 2, { adapterName: "other" })];
    expect(await refusal({ "adapter_config.json": CONFIG, "adapter_model.safetensors": safetensors(mixed) })).toMatch(
      /the file holds tensors of several adapters \(default, other\)/,
    );
    const twice = [...lora(0, "q_proj", 1), ...lora(0, "q_proj", 2, { adapterName: "default" })];
    expect(await refusal({ "adapter_config.json": CONFIG, "adapter_model.safetensors": safetensors(twice) })).toMatch(
      /two tensors for layers\.0\.q_proj\.lora_A: "base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight" and ".*lora_A\.default\.weight"/,
    );
  });

  it("fan_in_fan_out: accepts PEFT's layout as is and transposes the [in, r] / [r, out] layout back", async () => {
    const config = { ...CONFIG, fan_in_fan_out: true };
    const plain = await read(config, lora(0, "gate_proj", 7));
    const transposed = await read(config, lora(0, "gate_proj", 7, { transposed: true }));
    expect(Array.from(transposed.modules[0].a)).toEqual(Array.from(plain.modules[0].a));
    expect(Array.from(transposed.modules[0].b)).toEqual(Array.from(plain.modules[0].b));
    expect(Array.from(plain.modules[0].a)).toEqual(Array.from(values(2 * 16, 7)));
    const msg = await refusal({ "adapter_config.json": CONFIG, "adapter_model.safetensors": safetensors(lora(0, "gate_proj", 7, { transposed: true })) });
    expect(msg).toBe('adapter "sql-v2": tensor layers.0.gate_proj.lora_A has shape [16,2], base expects [2,16] (trained for another base model?)');
  });

  it("scales by alpha/sqrt(r) with rsLoRA, and applies rank_pattern / alpha_pattern per module", async () => {
    const rs = await read({ ...CONFIG, r: 4, lora_alpha: 8, use_rslora: true }, lora(0, "q_proj", 1, { rank: 4 }));
    expect(rs.modules[0].scale).toBe(4);
    const patterned = await read(
      { ...CONFIG, r: 2, lora_alpha: 8, rank_pattern: { "layers.1.self_attn.q_proj": 4 }, alpha_pattern: { v_proj: 2 } },
      [...lora(0, "q_proj", 1), ...lora(1, "q_proj", 2, { rank: 4 }), ...lora(1, "v_proj", 3)],
    );
    expect(patterned.modules.map((m) => [m.layer, m.target, m.rank, m.scale])).toEqual([
      [0, "q_proj", 2, 4],
      [1, "q_proj", 4, 2],
      [1, "v_proj", 2, 1],
    ]);
    expect(patterned.maxRank).toBe(4);
  });

  it("refuses a rank that disagrees with the config, saying so", async () => {
    const msg = await refusal({ "adapter_config.json": { ...CONFIG, r: 4 }, "adapter_model.safetensors": safetensors(lora(3, "k_proj", 1)) });
    expect(msg).toBe(
      'adapter "sql-v2": tensor layers.3.k_proj.lora_A has shape [2,16], expected [4,16]: adapter_config.json gives this module rank 4 (r / rank_pattern) — the config and weights disagree',
    );
  });

  it("honours layers_to_transform and target_modules: other tensors are skipped with a warning", async () => {
    const adapter = await read({ ...CONFIG, target_modules: ["q_proj"], layers_to_transform: [1] }, [
      ...lora(0, "q_proj", 1),
      ...lora(1, "q_proj", 2),
      ...lora(1, "k_proj", 3),
    ]);
    expect(adapter.modules.map((m) => [m.layer, m.target])).toEqual([[1, "q_proj"]]);
    expect(adapter.warnings).toEqual([
      'skipped 4 tensors of modules adapter_config.json does not target (target_modules / exclude_modules / layers_to_transform) (e.g. "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")',
    ]);
    const none = await refusal({
      "adapter_config.json": { ...CONFIG, target_modules: ["q_proj"], layers_to_transform: [3] },
      "adapter_model.safetensors": safetensors(lora(0, "q_proj", 1)),
    });
    expect(none).toMatch(/no tensors matched a module that adapter_config\.json targets .*all 2 LoRA tensors\), e\.g\. "base_model\.model\.model\.layers\.0/);
  });

  it("skips modules it cannot apply with a warning each kind, and keeps the rest", async () => {
    const extra: TensorSpec[] = [
      { name: "base_model.model.model.layers.0.self_attn.query_key_value.lora_A.weight", shape: [2, 16], data: values(32, 1) },
      { name: "base_model.model.model.layers.0.self_attn.query_key_value.lora_B.weight", shape: [48, 2], data: values(96, 2) },
      { name: "base_model.model.model.embed_tokens.lora_embedding_A", shape: [2, 40], data: values(80, 3) },
      { name: "base_model.model.score.weight", shape: [2, 16], data: values(32, 4) },
    ];
    const adapter = await read(CONFIG, [...lora(0, "q_proj", 5), ...extra]);
    expect(adapter.modules).toHaveLength(1);
    expect(adapter.warnings).toEqual([
      'skipped 2 tensors of module query_key_value (not one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head) (e.g. "base_model.model.model.layers.0.self_attn.query_key_value.lora_A.weight")',
      'skipped 1 tensor of embedding LoRA on model.embed_tokens (not a module this server adapts) (e.g. "base_model.model.model.embed_tokens.lora_embedding_A")',
      'skipped 1 tensor that are not LoRA factors (no lora_A/lora_B in the name) (e.g. "base_model.model.score.weight")',
    ]);
  });

  it("refuses an adapter none of whose tensors match the base model, with an example key", async () => {
    const gpt2: TensorSpec[] = [
      { name: "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight", shape: [2, 16], data: values(32, 1) },
      { name: "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight", shape: [48, 2], data: values(96, 2) },
    ];
    expect(await refusal({ "adapter_config.json": { ...CONFIG, target_modules: ["c_attn"] }, "adapter_model.safetensors": safetensors(gpt2) })).toBe(
      'adapter "sql-v2": no tensors matched a module of the base model (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head), ' +
        'e.g. "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"; trained for another architecture, or saved in a layout other than PEFT\'s?',
    );
    expect(await refusal({ "adapter_config.json": CONFIG, "adapter_model.safetensors": safetensors([]) })).toMatch(/adapter_model\.safetensors holds no tensors/);
  });

  it("refuses a wrong shape with the tensor, its shape and the base's", async () => {
    const big = lora(3, "q_proj", 1, { rank: 16, base: { ...TINY, hiddenSize: 32 } });
    const msg = await refusal({ "adapter_config.json": { ...CONFIG, r: 16 }, "adapter_model.safetensors": safetensors(big) });
    expect(msg).toBe('adapter "sql-v2": tensor layers.3.q_proj.lora_A has shape [16,32], base expects [16,16] (trained for another base model?)');
    const bOnly = lora(0, "v_proj", 1, { base: { ...TINY, numKvHeads: 4 } });
    const msgB = await refusal({ "adapter_config.json": CONFIG, "adapter_model.safetensors": safetensors(bOnly) });
    expect(msgB).toBe('adapter "sql-v2": tensor layers.0.v_proj.lora_B has shape [16,2], base expects [8,2] (trained for another base model?)');
  });

  it("refuses a lora_A without its lora_B and the reverse", async () => {
    const [a, b] = lora(2, "up_proj", 1);
    expect(await refusal({ "adapter_config.json": CONFIG, "adapter_model.safetensors": safetensors([a]) })).toMatch(
      /tensor layers\.2\.up_proj\.lora_A has no matching lora_B/,
    );
    expect(await refusal({ "adapter_config.json": CONFIG, "adapter_model.safetensors": safetensors([b]) })).toMatch(
      /tensor layers\.2\.up_proj\.lora_B has no matching lora_A/,
    );
  });

  it("refuses layers the base model does not have, naming the layer", async () => {
    expect(await refusal({ "adapter_config.json": CONFIG, "adapter_model.safetensors": safetensors(lora(7, "q_proj", 1)) })).toMatch(
      /tensor layers\.7\.q_proj\.lora_A is for layer 7, but the base model has 4 layers \(0–3\)/,
    );
  });

  it("refuses DoRA magnitude vectors and lora_B biases even when the config does not mention them", async () => {
    const dora: TensorSpec = { name: "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", shape: [16], data: values(16, 1) };
    expect(await refusal({ "adapter_config.json": CONFIG, "adapter_model.safetensors": safetensors([...lora(0, "q_proj", 1), dora]) })).toMatch(
      /is a DoRA magnitude vector; DoRA adapters are not supported/,
    );
    const bias: TensorSpec = { name: "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias", shape: [16], data: values(16, 1) };
    expect(await refusal({ "adapter_config.json": CONFIG, "adapter_model.safetensors": safetensors([...lora(0, "q_proj", 1), bias]) })).toMatch(
      /is a lora_B bias \(lora_bias\)/,
    );
  });
});

describe("readPeftAdapter: files", () => {
  it("prefers adapter_model.safetensors when both weight files exist, and reads a lone .bin", async () => {
    const st = lora(0, "q_proj", 1);
    const bin = lora(0, "q_proj", 2);
    const both = await readPeftAdapter(
      adapterDir({ "adapter_config.json": CONFIG, "adapter_model.safetensors": safetensors(st), "adapter_model.bin": torchArchive(bin) }),
      TINY,
    );
    expect(Array.from(both.modules[0].a)).toEqual(Array.from(st[0].data));
    const binOnly = await readPeftAdapter(adapterDir({ "adapter_config.json": CONFIG, "adapter_model.bin": torchArchive(bin) }), TINY);
    expect(Array.from(binOnly.modules[0].a)).toEqual(Array.from(bin[0].data));
    expect(Array.from(binOnly.modules[0].b)).toEqual(Array.from(bin[1].data));
  });

  it("refuses a missing config or missing weights, listing what is there", async () => {
    expect(await refusal({ "adapter_model.safetensors": safetensors(lora(0, "q_proj", 1)) })).toMatch(
      /^adapter "sql-v2": no adapter_config\.json in .* \(found: adapter_model\.safetensors\)$/,
    );
    expect(await refusal({ "adapter_config.json": CONFIG, "adapters.safetensors": Buffer.alloc(8) })).toMatch(
      /no adapter_model\.safetensors or adapter_model\.bin in .* \(found: .*adapters\.safetensors.*\); adapters\.safetensors is the MLX-LM layout, not PEFT/,
    );
  });

  it("refuses truncated weights with the reader's reason", async () => {
    const full = safetensors(lora(0, "q_proj", 1));
    expect(await refusal({ "adapter_config.json": CONFIG, "adapter_model.safetensors": full.subarray(0, full.length - 10) })).toMatch(
      /^adapter "sql-v2": adapter_model\.safetensors: tensor ".*lora_B\.weight": data_offsets \[128,256\] run past the data section \(246 bytes\)/,
    );
  });

  it("refuses a .bin whose pickle would run code, and runs nothing", async () => {
    const dir = adapterDir({ "adapter_config.json": CONFIG });
    const marker = join(dir, "ran");
    const pickle = new Pickle().global("posix", "system").str(`touch ${marker}`).op(0x85).op(0x52).bytes();
    const msg = await refusal({ "adapter_config.json": CONFIG, "adapter_model.bin": zip([{ name: "adapter_model/data.pkl", data: pickle }]) });
    expect(msg).toMatch(/adapter_model\.bin: data\.pkl: refused pickle global posix\.system/);
    expect(existsSync(marker)).toBe(false);
  });

  it("reports a missing directory as not found", async () => {
    await expect(readPeftAdapter("/nonexistent/loraserve/adapter", TINY, { name: "gone" })).rejects.toThrow(NotFoundError);
    await expect(readPeftAdapter("/nonexistent/loraserve/adapter", TINY, { name: "gone" })).rejects.toThrow(
      'adapter "gone": directory /nonexistent/loraserve/adapter does not exist',
    );
  });
});
