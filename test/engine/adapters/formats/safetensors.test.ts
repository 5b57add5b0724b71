// Tests the strict safetensors reader: dtype decoding and every header inconsistency it must refuse.
// Files are built in memory by writers.ts; real-world files are covered by peft.test.ts.

import { truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { AdapterIncompatibleError } from "../../../../engine/src/errors.js";
import { parseSafetensors, readSafetensorsFile } from "../../../../engine/src/adapters/formats/safetensors.js";
import { readWholeFile } from "../../../../engine/src/adapters/formats/tensor.js";
import { removeTempDirs, safetensors, tempDir } from "./writers.js";

afterAll(removeTempDirs);

const L = "adapter_model.safetensors";

function refuse(bytes: Buffer, reason: RegExp): void {
  let caught: unknown;
  try {
    parseSafetensors(bytes, L);
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(AdapterIncompatibleError);
  expect((caught as Error).message).toMatch(new RegExp(`^${L}: `));
  expect((caught as Error).message).toMatch(reason);
}

describe("parseSafetensors", () => {
  it("decodes F32, F16, BF16 and F64 to float32, and ignores __metadata__", () => {
    const data = [1, -2, 0.5, -0.25, 1024, 0, 3.5, -0.0009765625];
    const file = parseSafetensors(
      safetensors([
        { name: "f32", dtype: "F32", shape: [2, 4], data },
        { name: "f16", dtype: "F16", shape: [8], data },
        { name: "bf16", dtype: "BF16", shape: [4, 2], data },
        { name: "f64", dtype: "F64", shape: [1, 8], data },
      ]),
      L,
    );
    expect(file.metadata).toEqual({ format: "pt" });
    for (const name of ["f32", "f16", "bf16", "f64"]) {
      expect(Array.from(file.tensors.get(name)?.read() ?? [])).toEqual(data);
    }
    expect(file.tensors.get("bf16")?.shape).toEqual([4, 2]);
  });

  it("decodes F16 subnormals and infinities exactly as the bit patterns say", () => {
    const raw = safetensors([{ name: "h", dtype: "F16", shape: [4], data: [0, 0, 0, 0] }]);
    const start = raw.length - 8;
    [0x0001, 0x7c00, 0xfc00, 0x3c00].forEach((bits, i) => raw.writeUInt16LE(bits, start + 2 * i));
    const out = parseSafetensors(raw, L).tensors.get("h")?.read();
    expect(Array.from(out ?? [])).toEqual([2 ** -24, Infinity, -Infinity, 1]);
  });

  it("accepts zero-sized tensors and an empty file of tensors", () => {
    const file = parseSafetensors(safetensors([{ name: "empty", shape: [0, 16], data: [] }]), L);
    expect(file.tensors.get("empty")?.read().length).toBe(0);
    expect(parseSafetensors(safetensors([]), L).tensors.size).toBe(0);
  });

  it("refuses a non-float tensor only when it is read", () => {
    const bytes = safetensors([{ name: "ids", shape: [2], data: [1, 2] }], (h) => {
      (h.ids as { dtype: string }).dtype = "I32";
    });
    const t = parseSafetensors(bytes, L).tensors.get("ids");
    expect(t?.dtype).toBe("I32");
    expect(() => t?.read()).toThrow(/tensor "ids" has dtype I32; LoRA weights must be F32, F16, BF16 or F64/);
  });

  it("refuses empty, too-short and Git LFS pointer files", () => {
    refuse(Buffer.alloc(0), /the file is empty \(0 bytes\)/);
    refuse(Buffer.from("\r\n"), /the file is 2 bytes, shorter than the 8-byte header length/);
    refuse(Buffer.from("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"), /Git LFS pointer/);
  });

  it("refuses a header length beyond the file", () => {
    const good = safetensors([{ name: "a", shape: [2], data: [1, 2] }]);
    const bad = Buffer.from(good);
    bad.writeBigUInt64LE(BigInt(good.length), 0);
    refuse(bad, new RegExp(`header length ${good.length} runs past the end of the file \\(${good.length} bytes\\)`));
  });

  it("refuses a header that is not JSON, or JSON but not an object", () => {
    const text = Buffer.from("{not json");
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(text.length));
    refuse(Buffer.concat([len, text]), /the header is not JSON/);
    const arr = Buffer.from("[1,2]");
    len.writeBigUInt64LE(BigInt(arr.length));
    refuse(Buffer.concat([len, arr]), /the header is JSON but not an object/);
  });

  it("refuses an unknown dtype, naming it", () => {
    refuse(
      safetensors([{ name: "a", shape: [2], data: [1, 2] }], (h) => ((h.a as { dtype: string }).dtype = "F12")),
      /tensor "a" has unknown dtype "F12"/,
    );
  });

  it("refuses malformed shapes and offsets", () => {
    refuse(
      safetensors([{ name: "a", shape: [2], data: [1, 2] }], (h) => ((h.a as { shape: unknown }).shape = [2, -1])),
      /tensor "a" has shape \[2,-1\]; expected a list of non-negative integers/,
    );
    refuse(
      safetensors([{ name: "a", shape: [2], data: [1, 2] }], (h) => ((h.a as { data_offsets: unknown }).data_offsets = [8, 0])),
      /tensor "a" has data_offsets \[8,0\]; expected \[begin, end\]/,
    );
  });

  it("refuses a shape that does not fit its byte range", () => {
    refuse(
      safetensors([{ name: "a", shape: [2, 2], data: [1, 2, 3, 4] }], (h) => ((h.a as { shape: number[] }).shape = [2, 3])),
      /tensor "a": shape \[2,3\] × F32 needs 24 bytes, but data_offsets \[0,16\] give 16/,
    );
  });

  it("refuses offsets past the data section", () => {
    refuse(
      safetensors([{ name: "a", shape: [2], data: [1, 2] }], (h) => {
        (h.a as { shape: number[]; data_offsets: number[] }).shape = [4];
        (h.a as { shape: number[]; data_offsets: number[] }).data_offsets = [0, 16];
      }),
      /tensor "a": data_offsets \[0,16\] run past the data section \(8 bytes\)/,
    );
  });

  it("refuses overlapping ranges, naming both tensors", () => {
    refuse(
      safetensors(
        [
          { name: "a", shape: [2], data: [1, 2] },
          { name: "b", shape: [2], data: [3, 4] },
        ],
        (h) => ((h.b as { data_offsets: number[] }).data_offsets = [4, 12]),
      ),
      /tensors "a" \[0,8\] and "b" \[4,12\] overlap/,
    );
  });

  it("refuses gaps and trailing bytes: the ranges must cover the data section exactly", () => {
    refuse(
      safetensors([{ name: "a", shape: [1], data: [1] }], (h) => ((h.a as { data_offsets: number[] }).data_offsets = [4, 8]), Buffer.alloc(4)),
      /bytes 0\.\.4 of the data section belong to no tensor \(before "a"\)/,
    );
    refuse(
      safetensors([{ name: "a", shape: [1], data: [1] }], undefined, Buffer.alloc(6)),
      /the data section has 10 bytes but the tensors cover 4; 6 trailing bytes belong to no tensor/,
    );
  });

  it("reads from a path, using the path in messages unless given a label", async () => {
    const path = join(tempDir(), "w.safetensors");
    writeFileSync(path, safetensors([{ name: "a", shape: [2], data: [1, 2] }]));
    expect(Array.from((await readSafetensorsFile(path)).tensors.get("a")?.read() ?? [])).toEqual([1, 2]);
    writeFileSync(path, Buffer.alloc(3));
    await expect(readSafetensorsFile(path)).rejects.toThrow(`${path}: the file is 3 bytes`);
  });
});

describe("readWholeFile (the addon's file read)", () => {
  it("returns every byte of files of several sizes: empty, not page-sized, and large enough to read in two halves", async () => {
    for (const size of [0, 1, 4095, 4096, 4097, 3 << 20, (9 << 20) + 4097]) {
      const path = join(tempDir(), `f${size}.bin`);
      const want = Buffer.alloc(size);
      for (let i = 0; i < size; i++) want[i] = (i * 131 + (i >> 11)) & 255;
      writeFileSync(path, want);
      const got = await readWholeFile(path);
      expect(got.length).toBe(size);
      expect(got.equals(want)).toBe(true);
    }
  });

  it("refuses a file too large to hold (a sparse 5 GiB one) without reading it", async () => {
    const path = join(tempDir(), "huge.safetensors");
    writeFileSync(path, "");
    truncateSync(path, 5 * 2 ** 30); // sparse: no disk space, no read
    await expect(readWholeFile(path)).rejects.toThrow(`${path} is ${5 * 2 ** 30} bytes, more than the`);
  });

  it("rejects a missing file or a directory with the path and the OS reason", async () => {
    const dir = tempDir();
    await expect(readWholeFile(join(dir, "nope.safetensors"))).rejects.toThrow(/no such file or directory.*nope\.safetensors/i);
    await expect(readWholeFile(dir)).rejects.toThrow(`cannot read ${dir}: Is a directory`);
  });
});
