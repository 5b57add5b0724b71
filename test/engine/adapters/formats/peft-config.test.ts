// Tests adapter_config.json parsing and PEFT's per-module rules, over all 80 real-world configs and synthetic ones.
// Weights are not read here (peft.test.ts); plannedTargets stands in for them on config-only fixtures.

import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  type PeftLoraConfig,
  isTargeted,
  moduleHyperparams,
  parsePeftConfig,
  plannedTargets,
  readPeftConfig,
} from "../../../../engine/src/adapters/formats/peft-config.js";
import type { BaseModelShape } from "../../../../engine/src/adapters/types.js";
import { AdapterIncompatibleError } from "../../../../engine/src/errors.js";

const CONFIGS = "/work/shared/fixtures/real-world/peft-configs";

/** The base model the real-world configs are planned against: Llama-2-7B dims (32 layers, hidden 4096). */
const LLAMA_7B: BaseModelShape = {
  numLayers: 32,
  hiddenSize: 4096,
  intermediateSize: 11008,
  numHeads: 32,
  numKvHeads: 32,
  headDim: 128,
  vocabSize: 32000,
};

type Verdict =
  | { plan: string; modules: number } // accepted; the Llama targets it adapts, space-separated, and how many modules
  | { noPlan: string } // parses, but adapts no module of a Llama base: refused naming its target_modules
  | { refuse: RegExp }; // refused by the parser with this reason

/** Every file of peft-configs/ (INDEX.md rows 1–80) → its verdict. */
const EXPECTED: Record<string, Verdict> = {
  "7SH7__trip_advisor__root": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 224 },
  "ABISHEAK-std__TinyLlama-structured-output-finetuned-using-Lora__root": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 224 },
  "Aakashkuragayala__AIT-st125050-Master-Research__llama3_finetuned": { plan: "q_proj k_proj v_proj o_proj", modules: 128 },
  "Abusheik008__gemma__model": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 224 },
  "AdelaCorbeanu__Fine-Tuning-Llama-3.2-3B-for-Romanian-Contextual-Question-Answering-via-LoRA__root": { plan: "q_proj v_proj", modules: 64 },
  "AdityaGupta832342__Tiny-Llama-Finetuned-for-text-summarization__lora_model": { refuse: /a feature this server cannot honour: modules_to_save \["lm_head","embed_tokens"\] \(the adapter replaces whole modules\)/ },
  "Ahsan-Asim__FineTune_GPT2_Math_Riddles__model": { noPlan: "[c_proj, c_attn]" },
  "AnHuanAo__qwythos-9b-math-sft__root": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 224 },
  "BK7195__deltacompression-poc__adapter": { noPlan: "[query_key_value]" },
  "BooniesFX__ChatGLM-Efficient-Tuning__output": { noPlan: "[query_key_value, dense, dense_h_to_4h, dense_4h_to_h]" },
  "ChisomOkwor__homework4-vlm__homework-clip": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 224 },
  "ChisomOkwor__homework4-vlm__root": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 224 },
  "CogniX-LTD__Cogni-OpenModel__root": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 224 },
  "DeveloperZeeshu__Nano_R1-model__root": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 224 },
  "DharmShah__SLM_PythonCode__adapters": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 224 },
  "DreamVu__Cosmos-Reason2-2B-Retail-Grocery-EgoExo__root": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 224 },
  "EPlus-LLM__Model__root": { noPlan: "[q, v]" },
  "Electrosquib__LLM-Based-Predictive-Text-Compression-Ham-Radio__root": { plan: "q_proj v_proj", modules: 64 },
  "EllaHxyz__LLama2_Finetuning__root": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 7 },
  "Elyorcode__SPEECH-TO-TEXT-MODEL__root": { plan: "q_proj v_proj", modules: 64 },
  "F1nnSBK__luna_hole__root": { noPlan: "[qkv, proj, fc2, fc1]" },
  "HCBlackFox__LLamaModel__root": { plan: "q_proj v_proj", modules: 64 },
  "Hareshjethani__BERT-GPT2-Multitask-Finetuning__root": { refuse: /a feature this server cannot honour: modules_to_save \["classifier","score"\]/ },
  "HashirDS__smart-tutor-phi2-model__root": { plan: "q_proj v_proj", modules: 64 },
  "Hastws__NVIDIA-Nemotron-Model-Reasoning-Challenge__adapter": { plan: "q_proj k_proj v_proj o_proj up_proj down_proj", modules: 192 },
  "HeavyMetalAlchemist__phi3-lora-structured-output__adapter": { plan: "o_proj down_proj", modules: 64 },
  "Inishpy__lerobot-libero__root": { refuse: /no peft_type: not a PEFT adapter config \(keys: base_model\)/ },
  "JOSASA__gpt2__root": { noPlan: "[c_attn]" },
  "Jr1407__SQL__root": { plan: "q_proj v_proj", modules: 64 },
  "KZ-Shi__LLaMA-E__root": { plan: "q_proj k_proj v_proj o_proj", modules: 128 },
  "KamilaTrinkenschuh__Minstral-Model__root": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj lm_head", modules: 225 },
  "Kimiko-AI__LoRa-traingcode__lora-alpaca": { noPlan: "[query_key_value, xxx]" },
  "Kuntya__Udacity__trainer_peft": { noPlan: "\"classifier\"" },
  "LTtt456c__InternLM_AdapterModel__root": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 224 },
  "MatthewZhang473__LoRA_Qwen0.5B__fine_tuned_models-20251017_101834_r6_alpha32": { plan: "q_proj v_proj", modules: 64 },
  "MountainAlpha__falcon-7b_lora_finetune__lora": { noPlan: "[W_pack]" },
  "Nabeegh-Ahmed__phi-2-coding-expert__results": { noPlan: "[fc2, Wqkv, fc1]" },
  "NandhiniMuralidharan__Gemma-Medical-LoRA-FineTuning__adapters": { plan: "q_proj k_proj v_proj o_proj", modules: 128 },
  "Navaneeth-45__LLM__root": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj lm_head", modules: 225 },
  "Ningguang826__LLM-gemma270m-svg-logo-lora__adapter": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 224 },
  "Pink7rousers__my-ai-agent-test__root": { plan: "q_proj k_proj v_proj o_proj", modules: 128 },
  "PrajwalAxRy__LoRA_Llama3.2-1b__BloombergTerminal__final_model": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 224 },
  "StarRing2022__ChatGPTX-Uni__lora-out": { refuse: /enable_lora \[true,false,true\] \(the pre-0\.3 PEFT MergedLinear layout/ },
  "TANGHULU6__Llama3-8B-Mob__lora_model": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 224 },
  "TING-lct__house_layout_qwenvl__lora_model__blob-73cbded": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 224 },
  "TING-lct__house_layout_qwenvl__lora_model__blob-cc56e77": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 196 },
  "TheSotti__Lightweight-Fine-Tuning-to-FM__gpt-lora": { noPlan: "[attn.c_attn, attn.c_proj]" },
  "Weng1002__ZH-TW-Reading-Comprehension-Test-for-LLMs__lora-alpaca": { plan: "q_proj k_proj v_proj o_proj", modules: 128 },
  "Yairama__alpaca-miner__root": { plan: "q_proj v_proj", modules: 64 },
  "ZieChan__ARC-with-Llama3.1__lora_model": { refuse: /\.json: the file is a Git LFS pointer, not the config; fetch the real file/ },
  "abdouelouatiki__flan-t5-large-qlora-chatbot__model": { noPlan: "[v, q]" },
  "amanchoudhary4717__car-info-model__root": { noPlan: "[c_proj, c_attn]" },
  "amirhnazerii__utils__spam_not_spam": { refuse: /a feature this server cannot honour: modules_to_save \["classifier","score"\]/ },
  "anirudh-ak__peft-gpt2__model-lora_model": { noPlan: "[c_attn]" },
  "chan4lk__mlx-fine-tune__lora_model": { refuse: /this is an MLX-LM adapter config \(fine_tune_type\/lora_parameters\), not a PEFT adapter_config\.json/ },
  "chetanreddyv__ChessGPT__model": { noPlan: "[c_attn]" },
  "davidjurgens__contextual-appropriateness__model": { refuse: /peft_type "PREFIX_TUNING" is not supported; only LoRA adapters/ },
  "erika0915__Speech-AI__models": { plan: "q_proj v_proj", modules: 64 },
  "gcarom114__IL_Hackathon__lora-out": { plan: "q_proj k_proj v_proj o_proj", modules: 128 },
  "george-m2__hansard-llama__lora_model": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 224 },
  "huggingface__peft__method_comparison-MetaMathQA-experiments-lora-llama-3.2-3B-rank14-target-mlp-bdlora": { refuse: /a feature this server cannot honour: use_bdlora \{"target_modules_bd_a":\["o_proj","down_proj"\].*\(block-diagonal LoRA factors\)/ },
  "huggingface__peft__method_comparison-MetaMathQA-experiments-lora-llama-3.2-3B-rank32-dora": { refuse: /a feature this server cannot honour: use_dora: true \(DoRA/ },
  "huggingface__peft__method_comparison-MetaMathQA-experiments-lora-llama-3.2-3B-rank64-rslora": { plan: "q_proj v_proj", modules: 64 },
  "mahmodKhaled__finetuning-Qwen2.5-qlora-Arabic__model": { plan: "q_proj v_proj", modules: 64 },
  "mkeoliya__axolotl__lora-out": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 224 },
  "mkeoliya__axolotl__phi-sft-out": { noPlan: "[out_proj, fc1, Wqkv, linear, fc2]" },
  "nihappy213__law_LLM__saves-llama3-8b-lora-sft": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 224 },
  "othorizedshogun__poem-generator__model": { plan: "q_proj v_proj", modules: 64 },
  "rohitamar__llamafinetuning__qwen2-sst2-lora-checkpoint-1000": { refuse: /a feature this server cannot honour: modules_to_save \["classifier","score"\]/ },
  "rohitamar__llamafinetuning__results": { plan: "q_proj v_proj", modules: 64 },
  "sanaear__tiny-LLM-Lora__lora-out__blob-07a0ea0": { noPlan: "[c_attn]" },
  "sanaear__tiny-LLM-Lora__lora-out__blob-da7ea9b": { noPlan: "[c_attn]" },
  "sherryxzhao__lora_alpaca__output": { plan: "q_proj v_proj", modules: 64 },
  "snehakumari1996__TinyLlama_LoRA_CLI_Copilot__lora_adapter": { plan: "q_proj v_proj", modules: 64 },
  "stathopoan__Apply-Lightweight-Fine-Tuning-to-a-Foundation-LLM-Model__lora_model": { noPlan: "[c_attn]" },
  "surfaceowl__lm-hackers__qlora-out": { refuse: /this is a model config\.json \(model_type "llama"\), not a PEFT adapter config/ },
  "syGOAT__Mistral-v0.2-Translator-bf16__root": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", modules: 224 },
  "tayutayufk__LLM-LoRAs__lora_model": { plan: "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj lm_head", modules: 225 },
  "wujindou__BLOOM-LORA__root": { refuse: /enable_lora \[true,false,true\] \(the pre-0\.3 PEFT MergedLinear layout/ },
  "zy-fun__peft-lora-flan__results": { noPlan: "[v, q]" },
};

function parse(c: Record<string, unknown> | string): PeftLoraConfig {
  return parsePeftConfig(typeof c === "string" ? c : JSON.stringify(c), "adapter_config.json");
}

function refusal(c: Record<string, unknown> | string): string {
  try {
    parse(c);
  } catch (err) {
    expect(err).toBeInstanceOf(AdapterIncompatibleError);
    return (err as Error).message;
  }
  throw new Error("expected the config to be refused");
}

const LORA = { peft_type: "LORA", r: 8, lora_alpha: 16, target_modules: ["q_proj", "v_proj"] };

describe("real-world adapter_config.json files", () => {
  const files = readdirSync(CONFIGS).filter((f) => f.endsWith(".json"));

  it("the table covers every fixture file and nothing else", () => {
    expect(files.map((f) => f.replace(/\.json$/, "")).sort()).toEqual(Object.keys(EXPECTED).sort());
    expect(files).toHaveLength(80);
  });

  it.each(files)("%s", (file) => {
    const expected = EXPECTED[file.replace(/\.json$/, "")];
    const text = readFileSync(join(CONFIGS, file), "utf8");
    if ("refuse" in expected) {
      expect(() => parsePeftConfig(text, file)).toThrow(AdapterIncompatibleError);
      expect(() => parsePeftConfig(text, file)).toThrow(expected.refuse);
      return;
    }
    const config = parsePeftConfig(text, file);
    expect(config.peftType).toBe("LORA");
    if ("noPlan" in expected) {
      expect(() => plannedTargets(config, LLAMA_7B, file)).toThrow(
        `no target module of the base model matches target_modules ${expected.noPlan}`,
      );
      return;
    }
    const plan = plannedTargets(config, LLAMA_7B, file);
    expect(plan.targets.join(" ")).toBe(expected.plan);
    expect(plan.modules).toHaveLength(expected.modules);
  });

  it("normalises what the files leave out or spell oddly", () => {
    const read = (name: string) => parsePeftConfig(readFileSync(join(CONFIGS, `${name}.json`), "utf8"), name);
    const rslora = read("huggingface__peft__method_comparison-MetaMathQA-experiments-lora-llama-3.2-3B-rank64-rslora");
    expect(rslora).toMatchObject({ useRslora: true, r: 64, loraAlpha: 64, targetModules: { kind: "default" }, baseModelNameOrPath: null });
    expect(moduleHyperparams(rslora, "model.layers.0.self_attn.q_proj").scale).toBe(64 / 8);
    const axolotl = read("mkeoliya__axolotl__lora-out");
    expect(axolotl.fanInFanOut).toBe(false);
    const old = read("sherryxzhao__lora_alpaca__output");
    expect(old).toMatchObject({ r: 8, loraAlpha: 32, useRslora: false, layersToTransform: null, rankPattern: [], peftVersion: null });
    const regex = read("TING-lct__house_layout_qwenvl__lora_model__blob-73cbded");
    expect(regex.targetModules.kind).toBe("regex");
    const dupes = read("CogniX-LTD__Cogni-OpenModel__root");
    expect(dupes.targetModules).toEqual({ kind: "names", names: expect.any(Array) });
    expect((dupes.targetModules as { names: string[] }).names).toHaveLength(7);
    const v19 = read("ABISHEAK-std__TinyLlama-structured-output-finetuned-using-Lora__root");
    expect(v19.peftVersion).toBe("0.19.1");
    const layer31 = plannedTargets(read("EllaHxyz__LLama2_Finetuning__root"), LLAMA_7B);
    expect(layer31.modules.every((m) => m.layer === 31)).toBe(true);
  });
});

describe("readPeftConfig", () => {
  it("reads a file, labelling errors with its path", async () => {
    const ok = join(CONFIGS, "othorizedshogun__poem-generator__model.json");
    expect((await readPeftConfig(ok)).r).toBe(4);
    const lfs = join(CONFIGS, "ZieChan__ARC-with-Llama3.1__lora_model.json");
    await expect(readPeftConfig(lfs)).rejects.toThrow(`${lfs}: the file is a Git LFS pointer`);
  });
});

describe("parsePeftConfig: defaults and types", () => {
  it("fills PEFT's defaults for missing keys", () => {
    expect(parse({ peft_type: "LORA" })).toEqual({
      peftType: "LORA",
      taskType: null,
      baseModelNameOrPath: null,
      peftVersion: null,
      r: 8,
      loraAlpha: 8,
      useRslora: false,
      targetModules: { kind: "default" },
      excludeModules: null,
      rankPattern: [],
      alphaPattern: [],
      fanInFanOut: false,
      layersToTransform: null,
      layersPattern: null,
    });
  });

  it("accepts keys that do not change the math, known or not", () => {
    const c = parse({
      ...LORA,
      lora_dropout: 0.1,
      inference_mode: false,
      init_lora_weights: "gaussian",
      megatron_config: null,
      loftq_config: {},
      some_future_bookkeeping: { a: 1 },
      use_future_thing: false,
      auto_mapping: { base_model_class: "LlamaForCausalLM", unsloth_fixed: true },
    });
    expect(c.r).toBe(8);
  });

  it("reads layers_to_transform as an int or a list, and layers_pattern as a string or a list", () => {
    expect(parse({ ...LORA, layers_to_transform: 3 }).layersToTransform).toEqual([3]);
    expect(parse({ ...LORA, layers_to_transform: [0, 2], layers_pattern: "layers" })).toMatchObject({
      layersToTransform: [0, 2],
      layersPattern: ["layers"],
    });
    expect(parse({ ...LORA, layers_to_transform: [] }).layersToTransform).toBeNull();
  });

  it.each([
    [{ r: "8" }, /r is "8", expected a positive integer/],
    [{ r: 0 }, /r is 0, expected a positive integer/],
    [{ lora_alpha: "16" }, /lora_alpha is "16", expected a number/],
    [{ target_modules: 5 }, /target_modules is 5, expected a list of module names, a regex string or null/],
    [{ target_modules: "q_proj(" }, /target_modules "q_proj\(" is not a regular expression this server can read/],
    [{ layers_to_transform: "1" }, /layers_to_transform is "1", expected an integer, a list of integers or null/],
    [{ layers_to_transform: [1, -2] }, /layers_to_transform\[1\] is -2, expected a non-negative integer/],
    [{ fan_in_fan_out: "yes" }, /fan_in_fan_out is "yes", expected true, false or null/],
    [{ rank_pattern: { q_proj: 0 } }, /rank_pattern\["q_proj"\] is 0, expected a positive integer/],
    [{ alpha_pattern: [1] }, /alpha_pattern is \[1\], expected an object of pattern → value/],
  ])("refuses a bad value %j", (patch, reason) => {
    expect(refusal({ ...LORA, ...patch })).toMatch(reason);
  });

  it("refuses text that is not a PEFT config, saying what it is", () => {
    expect(refusal("")).toMatch(/adapter_config\.json: the file is empty/);
    expect(refusal("{nope")).toMatch(/adapter_config\.json: not JSON \(/);
    expect(refusal("[1]")).toMatch(/JSON but not an object/);
    expect(refusal({ fine_tune_type: "lora", lora_parameters: {} })).toMatch(/MLX-LM adapter config/);
    expect(refusal({ model_type: "mistral", architectures: ["MistralForCausalLM"] })).toMatch(/model config\.json \(model_type "mistral"\)/);
    expect(refusal({ base_model: "x", foo: 1 })).toMatch(/no peft_type: not a PEFT adapter config \(keys: base_model, foo\)/);
    expect(refusal({ peft_type: "IA3" })).toMatch(/peft_type "IA3" is not supported/);
  });
});

describe("parsePeftConfig: features that would change the math are refused by name", () => {
  it.each([
    [{ use_dora: true }, /use_dora: true \(DoRA/],
    [{ modules_to_save: ["lm_head"] }, /modules_to_save \["lm_head"\]/],
    [{ bias: "all" }, /bias "all" \(trained bias vectors are not applied\)/],
    [{ bias: "lora_only" }, /bias "lora_only"/],
    [{ lora_bias: true }, /lora_bias: true/],
    [{ use_qalora: true }, /use_qalora: true/],
    [{ layer_replication: [[0, 4], [2, 5]] }, /layer_replication \[\[0,4\],\[2,5\]\]/],
    [{ target_parameters: ["experts.gate_up_proj"] }, /target_parameters \["experts\.gate_up_proj"\]/],
    [{ trainable_token_indices: [1, 2] }, /trainable_token_indices \[1,2\]/],
    [{ alora_invocation_tokens: [5, 6] }, /alora_invocation_tokens \[5,6\]/],
    [{ arrow_config: { top_k: 3 } }, /arrow_config \(Arrow/],
    [{ use_bdlora: { nblocks: 2 } }, /use_bdlora \{"nblocks":2\}/],
    [{ enable_lora: [true, false, true] }, /enable_lora \[true,false,true\]/],
    [{ init_lora_weights: "pissa_niter_4" }, /init_lora_weights "pissa_niter_4" \(this initialisation rewrites the base weights/],
    [{ init_lora_weights: "olora" }, /init_lora_weights "olora" \(this initialisation rewrites the base weights/],
    [{ init_lora_weights: "loftq" }, /init_lora_weights "loftq" \(this initialisation rewrites/],
    [{ init_lora_weights: "mystery" }, /init_lora_weights "mystery" \(an initialisation this server does not know\)/],
    [{ use_kasa: true }, /use_kasa true \(an option this server does not know; it may change how the adapter is applied\)/],
  ])("%j", (patch, reason) => {
    const msg = refusal({ ...LORA, ...patch });
    expect(msg).toMatch(/^adapter_config\.json: uses a feature this server cannot honour: /);
    expect(msg).toMatch(reason);
  });

  it("accepts the same keys when they are off or empty", () => {
    expect(() =>
      parse({
        ...LORA,
        use_dora: false,
        modules_to_save: [],
        bias: "none",
        lora_bias: false,
        use_qalora: false,
        layer_replication: null,
        target_parameters: [],
        trainable_token_indices: null,
        alora_invocation_tokens: null,
        arrow_config: null,
        use_bdlora: null,
        enable_lora: null,
        init_lora_weights: null,
      }),
    ).not.toThrow();
  });

  it("names every refused feature at once", () => {
    const msg = refusal({ ...LORA, use_dora: true, modules_to_save: ["score"] });
    expect(msg).toMatch(/uses features this server cannot honour: use_dora: true .*; modules_to_save \["score"\]/);
  });
});

describe("isTargeted: PEFT's check_target_module_exists", () => {
  const q3 = "model.layers.3.self_attn.q_proj";
  const down0 = "model.layers.0.mlp.down_proj";

  it("matches list entries as the exact name or a dotted suffix, never a bare substring", () => {
    const c = parse({ ...LORA, target_modules: ["self_attn.q_proj", "proj"] });
    expect(isTargeted(c, q3)).toBe(true);
    expect(isTargeted(c, "model.layers.3.self_attn.k_proj")).toBe(false);
    expect(isTargeted(parse({ ...LORA, target_modules: ["lm_head"] }), "lm_head")).toBe(true);
  });

  it("full-matches a regex string, translating Python's named groups", () => {
    const c = parse({ ...LORA, target_modules: "model\\.layers\\.(?P<n>[0-3])\\.self_attn\\.(q|v)_proj" });
    expect(isTargeted(c, q3)).toBe(true);
    expect(isTargeted(c, "model.layers.4.self_attn.q_proj")).toBe(false);
    expect(isTargeted(c, `${q3}.extra`)).toBe(false);
    expect(isTargeted(parse({ ...LORA, target_modules: "q_proj" }), q3)).toBe(false);
  });

  it("resolves all-linear to every projection but not lm_head, and null to q_proj and v_proj", () => {
    const all = parse({ ...LORA, target_modules: "all-linear" });
    expect(isTargeted(all, down0)).toBe(true);
    expect(isTargeted(all, "lm_head")).toBe(false);
    const dflt = parse({ ...LORA, target_modules: null });
    expect(plannedTargets(dflt, LLAMA_7B).targets).toEqual(["q_proj", "v_proj"]);
  });

  it("applies exclude_modules first, as a list or a regex", () => {
    const list = parse({ ...LORA, target_modules: "all-linear", exclude_modules: ["down_proj"] });
    expect(isTargeted(list, down0)).toBe(false);
    expect(isTargeted(list, q3)).toBe(true);
    const rx = parse({ ...LORA, target_modules: ["q_proj"], exclude_modules: "model\\.layers\\.3\\..*" });
    expect(isTargeted(rx, q3)).toBe(false);
    expect(isTargeted(rx, "model.layers.2.self_attn.q_proj")).toBe(true);
  });

  it("narrows suffix matches by layers_to_transform (and layers_pattern); an exact name such as lm_head is kept", () => {
    const c = parse({ ...LORA, target_modules: ["q_proj", "lm_head"], layers_to_transform: [1, 3] });
    expect(isTargeted(c, q3)).toBe(true);
    expect(isTargeted(c, "model.layers.2.self_attn.q_proj")).toBe(false);
    expect(isTargeted(c, "lm_head")).toBe(true);
    expect(plannedTargets(c, LLAMA_7B).modules.map((m) => m.layer)).toEqual([1, 3, -1]);
    const suffix = parse({ ...LORA, target_modules: ["q_proj", "model.lm_head"], layers_to_transform: [1] });
    expect(isTargeted(suffix, "model.lm_head")).toBe(true);
    expect(isTargeted(parse({ ...LORA, target_modules: ["lm_head"], layers_to_transform: [1] }), "model.lm_head")).toBe(false);
    expect(isTargeted(parse({ ...LORA, layers_to_transform: 3, layers_pattern: "layers" }), q3)).toBe(true);
    expect(isTargeted(parse({ ...LORA, layers_to_transform: 3, layers_pattern: ["h", "blocks"] }), q3)).toBe(false);
  });

  it("does not narrow exact names or regex matches by layers_to_transform", () => {
    expect(isTargeted(parse({ ...LORA, target_modules: [q3], layers_to_transform: [0] }), q3)).toBe(true);
    expect(isTargeted(parse({ ...LORA, target_modules: ".*q_proj", layers_to_transform: [0] }), q3)).toBe(true);
  });

  it("plannedTargets refuses a config that adapts nothing of a Llama base", () => {
    expect(() => plannedTargets(parse({ ...LORA, target_modules: ["c_attn"] }), LLAMA_7B, "x")).toThrow(
      /^x: no target module of the base model matches target_modules \[c_attn\]; this server adapts q_proj/,
    );
    expect(() => plannedTargets(parse({ ...LORA, layers_to_transform: [40] }), LLAMA_7B)).toThrow(/no target module/);
  });
});

describe("moduleHyperparams: rank, alpha and scale per module", () => {
  it("uses r and lora_alpha, with alpha/r or alpha/sqrt(r) under rsLoRA", () => {
    expect(moduleHyperparams(parse({ ...LORA, r: 16, lora_alpha: 32 }), "lm_head")).toEqual({ rank: 16, alpha: 32, scale: 2 });
    expect(moduleHyperparams(parse({ ...LORA, r: 16, lora_alpha: 32, use_rslora: true }), "lm_head").scale).toBe(8);
  });

  it("takes the first matching pattern in file order; a pattern matches the whole name or after a dot", () => {
    const c = parse({
      ...LORA,
      r: 8,
      lora_alpha: 16,
      rank_pattern: { "layers\\.[0-1]\\..*q_proj": 4, q_proj: 32, proj: 2 },
      alpha_pattern: { "model.layers.0.mlp.down_proj": 64, v_proj: 8 },
    });
    expect(moduleHyperparams(c, "model.layers.1.self_attn.q_proj")).toEqual({ rank: 4, alpha: 16, scale: 4 });
    expect(moduleHyperparams(c, "model.layers.5.self_attn.q_proj")).toEqual({ rank: 32, alpha: 16, scale: 0.5 });
    expect(moduleHyperparams(c, "model.layers.0.mlp.down_proj")).toEqual({ rank: 8, alpha: 64, scale: 8 });
    expect(moduleHyperparams(c, "model.layers.0.self_attn.v_proj")).toEqual({ rank: 8, alpha: 8, scale: 1 });
    expect(moduleHyperparams(c, "model.layers.0.self_attn.k_proj").rank).toBe(8);
  });

  it("applies rsLoRA to the pattern's rank", () => {
    const c = parse({ ...LORA, r: 8, lora_alpha: 16, use_rslora: true, rank_pattern: { v_proj: 64 } });
    expect(moduleHyperparams(c, "model.layers.0.self_attn.v_proj").scale).toBe(2);
  });
});
