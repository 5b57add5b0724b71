// Tests the torch zip archive reader and its tensor-only unpickler: round trips, layout checks, hostile pickles.
// Archives are built by writers.ts (hand-written protocol 2 opcodes) or taken from the real-world fixtures.

import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parseTorchArchive, readTorchArchiveFile } from "../../../../engine/src/adapters/formats/safe-pickle.js";
import { AdapterIncompatibleError } from "../../../../engine/src/errors.js";
import { Pickle, encode, removeTempDirs, statePickle, tempDir, torchArchive, values, zip } from "./writers.js";

const L = "adapter_model.bin";

afterAll(removeTempDirs);
const FIXTURES = "/work/shared/fixtures/real-world/peft-weights";

function refusal(bytes: Buffer): string {
  try {
    parseTorchArchive(bytes, L);
  } catch (err) {
    expect(err).toBeInstanceOf(AdapterIncompatibleError);
    return (err as Error).message;
  }
  throw new Error("expected the archive to be refused");
}

function hasPython(): boolean {
  try {
    execFileSync("python3", ["-c", "import pickle"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

describe("parseTorchArchive: round trips", () => {
  it("rebuilds F32, F16, BF16 and F64 tensors with their shapes", () => {
    const data = [0.5, -1, 2, -0.125, 8, 0];
    const tensors = parseTorchArchive(
      torchArchive([
        { name: "x.f32", dtype: "F32", shape: [2, 3], data },
        { name: "x.f16", dtype: "F16", shape: [3, 2], data },
        { name: "x.bf16", dtype: "BF16", shape: [6], data },
        { name: "x.f64", dtype: "F64", shape: [1, 2, 3], data },
      ]),
      L,
    );
    expect([...tensors.keys()]).toEqual(["x.f32", "x.f16", "x.bf16", "x.f64"]);
    for (const t of tensors.values()) expect(Array.from(t.read())).toEqual(data);
    expect(tensors.get("x.f64")?.shape).toEqual([1, 2, 3]);
    expect(tensors.get("x.f16")?.dtype).toBe("F16");
  });

  it("honours the storage offset, and reads deflated entries under any archive root", () => {
    const data = Array.from(values(12, 7));
    const tensors = parseTorchArchive(
      torchArchive([{ name: "w", shape: [3, 4], data, offset: 5 }], { root: "some_other_root", deflate: true }),
      L,
    );
    expect(Array.from(tensors.get("w")?.read() ?? [])).toEqual(Array.from(new Float32Array(data)));
  });

  it("accepts any stride on dimensions of extent 1 (torch writes such views)", () => {
    const tensors = parseTorchArchive(torchArchive([{ name: "w", shape: [1, 4], data: [1, 2, 3, 4], stride: [99, 1] }]), L);
    expect(Array.from(tensors.get("w")?.read() ?? [])).toEqual([1, 2, 3, 4]);
  });
});

describe("parseTorchArchive: layout errors", () => {
  it("refuses a non-contiguous tensor with a clear hint", () => {
    expect(refusal(torchArchive([{ name: "w", shape: [2, 3], data: [1, 2, 3, 4, 5, 6], stride: [1, 2] }]))).toMatch(
      /tensor "w" is not contiguous \(size \[2,3\], stride \[1,2\]\); re-save it after \.contiguous\(\)/,
    );
  });

  it("refuses a tensor running past its storage, and a storage entry shorter than announced", () => {
    const pickle = statePickle([{ name: "w", shape: [2, 2], data: [1, 2, 3, 4] }]);
    const short = zip([
      { name: "a/data.pkl", data: pickle },
      { name: "a/data/0", data: encode([1, 2, 3], "F32") },
    ]);
    expect(refusal(short)).toMatch(/storage "0" holds 12 bytes, 4 × F32 needs 16/);
    const missing = zip([{ name: "a/data.pkl", data: pickle }]);
    expect(refusal(missing)).toMatch(/storage "0" named by the pickle has no entry a\/data\/0/);
  });

  it("refuses the legacy torch.save format, non-zip bytes, truncated and corrupt archives", () => {
    expect(refusal(Buffer.from([0x80, 0x02, 0x8a, 0x0a]))).toMatch(/legacy \(PyTorch < 1\.6\) torch\.save format/);
    expect(refusal(Buffer.from("hello world"))).toMatch(/not a PyTorch zip archive \(it starts with bytes 68656c6c/);
    const good = torchArchive([{ name: "w", shape: [4], data: [1, 2, 3, 4] }]);
    expect(refusal(good.subarray(0, good.length - 30))).toMatch(/no end-of-central-directory record/);
    const corrupt = Buffer.from(good);
    const at = corrupt.indexOf(encode([1, 2, 3, 4], "F32"));
    corrupt[at] ^= 0xff;
    expect(refusal(corrupt)).toMatch(/entry "adapter_model\/data\/0" fails its CRC-32 check/);
  });

  it("refuses big-endian archives and archives with no or several data.pkl", () => {
    const pickle = statePickle([{ name: "w", shape: [1], data: [1] }]);
    const be = zip([
      { name: "r/data.pkl", data: pickle },
      { name: "r/byteorder", data: Buffer.from("big") },
      { name: "r/data/0", data: encode([1], "F32") },
    ]);
    expect(refusal(be)).toMatch(/written big-endian; only little-endian archives are read/);
    expect(refusal(zip([{ name: "r/version", data: Buffer.from("3") }]))).toMatch(/expected exactly one data\.pkl in the archive, found 0/);
  });

  it("refuses a pickle that holds something other than a dict of tensors", () => {
    const list = new Pickle().op(0x5d).bytes();
    expect(refusal(zip([{ name: "r/data.pkl", data: list }]))).toMatch(/the pickle holds a PyList, not a state dict/);
    const notTensor = new Pickle().op(0x7d).str("step").int(3).op(0x73).bytes();
    expect(refusal(zip([{ name: "r/data.pkl", data: notTensor }]))).toMatch(/state dict entry "step" is a number, not a tensor/);
  });

  it("refuses non-float storages by name (lerobot's scalars use torch.LongStorage)", () => {
    const bytes = readFileSync(join(FIXTURES, "_not-peft__Inishpy__lerobot-libero__root/adapter_model.bin"));
    expect(refusal(bytes)).toMatch(/tensor storage torch\.LongStorage does not hold float32\/float16\/bfloat16 values/);
  });
});

describe("parseTorchArchive: hostile pickles never run", () => {
  const hostile = (pickle: Buffer) => zip([{ name: "archive/data.pkl", data: pickle }]);

  it("refuses GLOBAL os.system + REDUCE, naming the global, and nothing is executed", () => {
    const dir = tempDir();
    const marker = join(dir, "pwned");
    const pickle = new Pickle().global("os", "system").str(`touch ${marker}`).op(0x85).op(0x52).bytes();
    expect(refusal(hostile(pickle))).toMatch(/refused pickle global os\.system: this reader only rebuilds tensors/);
    expect(existsSync(marker)).toBe(false);
    if (hasPython()) {
      const file = join(dir, "payload.pkl");
      writeFileSync(file, pickle);
      execFileSync("python3", ["-c", "import pickle,sys; pickle.loads(open(sys.argv[1],'rb').read())", file]);
      expect(existsSync(marker)).toBe(true);
    }
  });

  it.each([
    ["builtins", "eval"],
    ["posix", "system"],
    ["subprocess", "Popen"],
    ["torch", "load"],
    ["torch._utils", "_rebuild_parameter"],
  ])("refuses GLOBAL %s.%s", (module, name) => {
    const pickle = new Pickle().global(module, name).str("1+1").op(0x85).op(0x52).bytes();
    expect(refusal(hostile(pickle))).toContain(`refused pickle global ${module}.${name}`);
  });

  it("refuses a hostile global hidden inside a tensor's arguments", () => {
    const p = new Pickle().op(0x7d).str("w").global("torch._utils", "_rebuild_tensor_v2").mark();
    p.global("os", "system").str("id").op(0x85).op(0x52).tuple().op(0x52).op(0x73);
    expect(refusal(hostile(p.bytes()))).toMatch(/refused pickle global os\.system/);
  });

  it("refuses STACK_GLOBAL (protocol 4) the same way", () => {
    const raw = Buffer.concat([
      Buffer.from([0x80, 4, 0x8c, 2]),
      Buffer.from("os"),
      Buffer.from([0x8c, 6]),
      Buffer.from("system"),
      Buffer.from([0x93, 0x8c, 2]),
      Buffer.from("id"),
      Buffer.from([0x85, 0x52, 0x2e]),
    ]);
    expect(refusal(hostile(raw))).toMatch(/refused pickle global os\.system/);
  });

  it("refuses INST, OBJ and NEWOBJ opcodes, naming them", () => {
    const inst = Buffer.concat([new Pickle().mark().str("id").bytes().subarray(0, -1), Buffer.from("ios\nsystem\n.", "latin1")]);
    expect(refusal(hostile(inst))).toMatch(/refused pickle INST of os\.system/);
    expect(refusal(hostile(new Pickle().mark().op(0x6f).bytes()))).toMatch(/unsupported pickle opcode 0x6f \(OBJ\)/);
    expect(refusal(hostile(new Pickle().op(0x29).op(0x29).op(0x81).bytes()))).toMatch(/unsupported pickle opcode 0x81 \(NEWOBJ\)/);
  });

  it("refuses REDUCE on a whitelisted class that is not a callable here (a storage class)", () => {
    const pickle = new Pickle().global("torch", "FloatStorage").op(0x29).op(0x52).bytes();
    expect(refusal(hostile(pickle))).toMatch(/REDUCE calls torch\.FloatStorage, which is not callable here/);
  });

  it("refuses rebuilding a tensor with backward hooks, and truncated pickles", () => {
    const p = new Pickle().op(0x7d).str("w").global("torch._utils", "_rebuild_tensor_v2").mark();
    p.mark().str("storage").global("torch", "FloatStorage").str("0").str("cpu").int(1).tuple().op(0x51);
    p.int(0).ints([1]).ints([1]).op(0x89).op(0x7d).str("h").int(1).op(0x73).tuple().op(0x52).op(0x73);
    const withHooks = zip([
      { name: "r/data.pkl", data: p.bytes() },
      { name: "r/data/0", data: encode([1], "F32") },
    ]);
    expect(refusal(withHooks)).toMatch(/tensors with backward hooks are not read/);
    const cut = statePickle([{ name: "w", shape: [1], data: [1] }]).subarray(0, 40);
    expect(refusal(zip([{ name: "r/data.pkl", data: cut }]))).toMatch(/data\.pkl: the pickle ends (early|inside a text line)/);
  });
});

describe("parseTorchArchive: real adapter_model.bin files", () => {
  it("reads TinyLlama q/v (PEFT 0.6, storages on cuda:0) with the shapes tensors.tsv lists", () => {
    const tensors = parseTorchArchive(readFileSync(join(FIXTURES, "othorizedshogun__poem-generator__model/adapter_model.bin")), L);
    expect(tensors.size).toBe(88);
    expect(tensors.get("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")?.shape).toEqual([4, 2048]);
    expect(tensors.get("base_model.model.model.layers.21.self_attn.v_proj.lora_B.weight")?.shape).toEqual([256, 4]);
    const a = tensors.get("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")?.read();
    expect(a?.[0]).toBeCloseTo(-0.0003008994390256703, 12);
    expect(a?.[1]).toBeCloseTo(0.016157763078808784, 12);
  });

  it("reads BLOOM's 3-D MergedLinear lora_B and the newer torch layout with a byteorder entry", () => {
    const bloom = parseTorchArchive(readFileSync(join(FIXTURES, "wujindou__BLOOM-LORA__root/adapter_model.bin")), L);
    expect(bloom.get("base_model.model.transformer.h.0.self_attention.query_key_value.lora_B.weight")?.shape).toEqual([2048, 8, 1]);
    const bert = parseTorchArchive(readFileSync(join(FIXTURES, "Pseudo-CS__Intel-Proj__model/adapter_model.bin")), L);
    expect(bert.size).toBe(50);
    expect([...bert.keys()].some((k) => k.endsWith("classifier.bias"))).toBe(true);
  });

  it("reads from a path, labelled with it", async () => {
    const path = join(FIXTURES, "othorizedshogun__poem-generator__model/adapter_model.bin");
    expect((await readTorchArchiveFile(path)).size).toBe(88);
    await expect(readTorchArchiveFile(join(FIXTURES, "_broken__Yairama__alpaca-miner__root/adapter_model.bin"), "x.bin")).rejects.toThrow(
      "x.bin: the file is a Git LFS pointer",
    );
  });
});
