// Loading refuses broken model directories with messages that name the problem, and native code rejects bad
// step input without crashing: truncated and corrupted safetensors, unsupported architectures, mismatched
// shapes, out-of-range tokens, KV indexes and block ids.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { Backend, type RowSampling } from "../../engine/src/backend.js";
import { NativeError } from "../../engine/src/errors.js";
import { tinyModels } from "../helpers/tiny.js";

const OPTS = { kvBytes: 1 << 20, blockSize: 8, maxStepTokens: 32, maxOutRows: 8, loraSlots: 0, loraMaxRank: 8 };
let tmp: string;
let src: string;

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "loraserve-load-"));
  src = tinyModels()["llama-f32"];
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A copy of the tiny llama whose model.safetensors is passed through `mutate`. */
function broken(name: string, mutate: (buf: Buffer) => Buffer, config?: (c: any) => void): string {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir);
  for (const f of fs.readdirSync(src)) fs.copyFileSync(path.join(src, f), path.join(dir, f));
  fs.writeFileSync(path.join(dir, "model.safetensors"), mutate(fs.readFileSync(path.join(src, "model.safetensors"))));
  if (config) {
    const c = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
    config(c);
    fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(c));
  }
  return dir;
}

/** Rewrites the JSON header of a safetensors buffer (keeping the data section as it is). */
function editHeader(buf: Buffer, edit: (h: any) => void): Buffer {
  const n = Number(buf.readBigUInt64LE(0));
  const h = JSON.parse(buf.subarray(8, 8 + n).toString());
  edit(h);
  let s = JSON.stringify(h);
  s += " ".repeat((8 - (s.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(s.length));
  return Buffer.concat([len, Buffer.from(s), buf.subarray(8 + n)]);
}

describe("model loading refuses broken files", () => {
  const cases: [string, (b: Buffer) => Buffer, RegExp][] = [
    ["truncated", (b) => b.subarray(0, b.length - 1000), /reach beyond the data section .*truncated/],
    ["too short", (b) => b.subarray(0, 5), /too short for a safetensors file/],
    ["header length beyond the file", (b) => { const c = Buffer.from(b); c.writeBigUInt64LE(BigInt(b.length * 2), 0); return c; }, /header length \d+ goes beyond the file/],
    ["header not JSON", (b) => { const c = Buffer.from(b); c.write("{{{{", 8); return c; }, /header is not JSON/],
    ["offsets out of range", (b) => editHeader(b, (h) => (h["model.norm.weight"].data_offsets = [10, 10 + 4 * 64 + 1e9])), /reach beyond the data section/],
    ["overlapping tensors", (b) => editHeader(b, (h) => {
      const a = h["model.norm.weight"], o = h["model.layers.0.input_layernorm.weight"];
      a.data_offsets = o.data_offsets.slice();
    }), /overlaps|unused bytes/],
    ["unknown dtype", (b) => editHeader(b, (h) => (h["model.norm.weight"].dtype = "I8")), /has dtype "I8"; supported: F32, F16, BF16/],
    ["shape and size disagree", (b) => editHeader(b, (h) => (h["model.norm.weight"].shape = [65])), /F32\[65\] = 260 bytes but data_offsets span 256/],
  ];
  it.each(cases)("%s", async (name, mutate, message) => {
    const dir = broken(name.replace(/ /g, "-"), mutate);
    await expect(Backend.load(dir, OPTS)).rejects.toThrow(message);
  });

  it("a missing weights file", async () => {
    const dir = path.join(tmp, "empty");
    fs.mkdirSync(dir);
    fs.copyFileSync(path.join(src, "config.json"), path.join(dir, "config.json"));
    fs.writeFileSync(path.join(dir, "pytorch_model.bin"), "x");
    await expect(Backend.load(dir, OPTS)).rejects.toThrow(/no model.safetensors .* pytorch_model.bin: PyTorch .bin base weights are not supported/);
  });

  it("an unsupported architecture, naming the supported ones", async () => {
    const dir = broken("gpt2", (b) => b, (c) => (c.architectures = ["GPT2LMHeadModel"]));
    await expect(Backend.load(dir, OPTS)).rejects.toThrow(/unsupported architecture \["GPT2LMHeadModel"\]; supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM/);
  });

  it("weights that do not match config.json (native shape check)", async () => {
    const dir = broken("shape", (b) => b, (c) => (c.intermediate_size = 100));
    const err = await Backend.load(dir, OPTS).catch((e) => e);
    expect(err).toBeInstanceOf(NativeError);
    expect(err.message).toMatch(/tensor model.layers.0.mlp.gate_proj.weight has shape \[160,64\], the config expects \[100,64\]/);
  });

  it("an unsupported rope_scaling type", async () => {
    const dir = broken("yarn", (b) => b, (c) => (c.rope_scaling = { type: "yarn", factor: 4 }));
    await expect(Backend.load(dir, OPTS)).rejects.toThrow(/rope_scaling type "yarn" is not supported \(supported: linear, llama3\)/);
  });
});

describe("native step refuses bad input and keeps working", () => {
  let be: Backend;
  beforeAll(async () => (be = await Backend.load(src, OPTS)));
  afterAll(() => be.close());
  const row: RowSampling = {
    sample: true, doSample: false, temperature: 1, topK: 0, topP: 1, typicalP: 1, minP: 0, repetitionPenalty: 1,
    presencePenalty: 0, frequencyPenalty: 0, seed: 0n, step: 0, nTop: 0, target: -1,
  };
  const step = (tokens: number[], blockTable = [0, 1], extra: { position?: number; kvIndex?: number; blockCopies?: [number, number][]; wantLogits?: boolean } = {}) =>
    be.step({
      tokens: tokens.map((t, i) => ({ token: t, position: (extra.position ?? 0) + i, seq: 0, adapterSlot: -1, kvIndex: extra.kvIndex })),
      sequences: [{ blockTable }],
      outRows: [tokens.length - 1],
      rows: [row],
      blockCopies: extra.blockCopies,
      wantLogits: extra.wantLogits,
    });

  it.each([
    ["a token id out of range", () => step([1, 99999]), /token id 99999 at row 1 is out of range \[0, 32000\)/],
    ["a negative token id", () => step([-3]), /token id -3 at row 0 is out of range/],
    ["a KV index beyond the block table", () => step([5], [0], { position: 8 }), /writes KV index 8 but its sequence holds 1 blocks of 8/],
    ["a block id out of range", () => step([5], [1000]), /block id 1000 out of range/],
    ["a block copy naming a block out of range", () => step([5], [0], { blockCopies: [[0, 5000]] }), /block copy names block 5000, outside \[0, \d+\)/],
    ["more tokens than the step buffers", () => step(new Array(40).fill(3), [0, 1, 2, 3, 4]), /step has 40 tokens, allowed 1..32/],
  ])("%s", async (_n, run, message) => {
    const err = await run().catch((e) => e);
    expect(err).toBeInstanceOf(NativeError);
    expect(err.kind).toBe("validation");
    expect(err.message).toMatch(message);
    const ok = await step([1, 2, 3]);
    expect(ok.tokens[0]).toBeGreaterThanOrEqual(0);
  });

  it("weights read into memory (the CPU default) and left in file mappings (mapWeights) give the same logits", async () => {
    const mapped = await Backend.load(src, { ...OPTS, mapWeights: true });
    try {
      const input = { tokens: [3, 1, 4, 1, 5].map((t, i) => ({ token: t, position: i, seq: 0, adapterSlot: -1 })), sequences: [{ blockTable: [0, 1] }], outRows: [4], rows: [row], wantLogits: true };
      const a = await be.step(input), b = await mapped.step(input);
      // A tiny model always fits the memory free here; mapping was asked for.
      expect([be.info().weightsInMemory, mapped.info().weightsInMemory]).toEqual([true, false]);
      expect(Array.from(b.logits!)).toEqual(Array.from(a.logits!));
      expect(b.logits!.some((v) => v !== 0)).toBe(true);
    } finally {
      mapped.close();
    }
  });

  it("copies whole KV blocks before the step: a decode over the copies equals one over the originals", async () => {
    const prompt = [5, 9, 13, 17, 21, 25, 29, 33, 37, 41]; // blocks of 8: the second holds two tokens
    await step(prompt, [0, 1]);
    const onOriginals = await step([7], [0, 1], { position: prompt.length, wantLogits: true });
    // Copy both blocks elsewhere, then decode the same token over the copies at the same position.
    const onCopies = await step([7], [4, 5], { position: prompt.length, wantLogits: true, blockCopies: [[0, 4], [1, 5]] });
    expect(Array.from(onCopies.logits!)).toEqual(Array.from(onOriginals.logits!));
    // Without the copies those blocks hold something else, and the logits differ.
    await step([3, 3, 3, 3, 3, 3, 3, 3, 3, 3], [6, 7]);
    const unrelated = await step([7], [6, 7], { position: prompt.length, wantLogits: true });
    expect(Array.from(unrelated.logits!)).not.toEqual(Array.from(onOriginals.logits!));
  });
});
