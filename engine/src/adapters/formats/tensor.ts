// Tensors as the adapter file readers hand them over: dtype, shape and a lazy float32 decode of little-endian bytes;
// and the whole-file read they share.

// Does not parse any file format (safetensors.ts, safe-pickle.ts) nor know what a LoRA tensor means (peft.ts).

import { constants as bufferConstants } from "node:buffer";
import { stat } from "node:fs/promises";
import { totalmem } from "node:os";

import { AdapterIncompatibleError } from "../../errors.js";
import { native } from "../../native.js";

/** Element types a LoRA tensor may be stored in; all decode to float32. */
export const FLOAT_DTYPES = ["F32", "F16", "BF16", "F64"] as const;
export type FloatDtype = (typeof FLOAT_DTYPES)[number];

/**
 * One tensor of a weight file. `read()` decodes it (once per call) into a Float32Array in row-major order; for
 * aligned F32 data that is a view of the file's bytes, so readers treat it as read-only.
 */
export interface TensorEntry {
  name: string;
  /** Element type in safetensors spelling: F32, F16, BF16, F64, or (safetensors only) I64, U8, ... */
  dtype: string;
  shape: number[];
  read(): Float32Array;
}

export function isFloatDtype(dtype: string): dtype is FloatDtype {
  return (FLOAT_DTYPES as readonly string[]).includes(dtype);
}

export const FLOAT_DTYPE_BYTES: Record<FloatDtype, number> = { F32: 4, F16: 2, BF16: 2, F64: 8 };

/** Number of elements of a shape; -1 when it is not a safe integer (a hostile header). */
export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return Number.isSafeInteger(n) ? n : -1;
}

export function formatShape(shape: readonly number[]): string {
  return `[${shape.join(",")}]`;
}

/** IEEE 754 half → float. */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac === 0 ? sign * Infinity : NaN;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/**
 * Decodes `numel` little-endian elements of `dtype` starting at `byteOffset` of `bytes`. Aligned F32 comes back
 * as a view of `bytes` (no copy: a cold adapter load is bound by the memory it touches); anything else is fresh.
 */
export function decodeFloats(bytes: Uint8Array, byteOffset: number, numel: number, dtype: FloatDtype): Float32Array {
  const size = FLOAT_DTYPE_BYTES[dtype];
  if (byteOffset < 0 || byteOffset + numel * size > bytes.byteLength) {
    throw new RangeError(`decode of ${numel} ${dtype} elements at byte ${byteOffset} runs past ${bytes.byteLength} bytes`);
  }
  if (dtype === "F32" && (bytes.byteOffset + byteOffset) % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset + byteOffset, numel);
  // Little-endian hosts (every one we build for): copy the bytes into aligned memory and convert in bulk.
  const raw = new Uint8Array(numel * size);
  raw.set(bytes.subarray(byteOffset, byteOffset + numel * size));
  let out: Float32Array;
  switch (dtype) {
    case "F32":
      out = new Float32Array(raw.buffer);
      break;
    case "F64":
      out = Float32Array.from(new Float64Array(raw.buffer));
      break;
    case "F16": {
      const h = new Uint16Array(raw.buffer);
      out = new Float32Array(numel);
      for (let i = 0; i < numel; i++) out[i] = halfToFloat(h[i]);
      break;
    }
    case "BF16": {
      const h = new Uint16Array(raw.buffer);
      out = new Float32Array(numel);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < numel; i++) bits[i] = h[i] << 16;
      break;
    }
  }
  return out;
}

const LFS_POINTER_PREFIX = "version https://git-lfs.github.com/spec/";

/** A reason when `bytes` are plainly not a weight file (empty, a Git LFS pointer); null otherwise. */
export function notAWeightFile(bytes: Uint8Array): string | null {
  if (bytes.byteLength === 0) return "the file is empty (0 bytes); the upload or download did not complete";
  const head = Buffer.from(bytes.buffer, bytes.byteOffset, Math.min(bytes.byteLength, 200)).toString("latin1");
  if (head.startsWith(LFS_POINTER_PREFIX)) {
    return "the file is a Git LFS pointer, not the weights; fetch the real file (git lfs pull) and try again";
  }
  return null;
}

/**
 * A weight file's bytes, read by the addon on a worker thread in one positioned read into memory it populates in
 * one call (a Node Buffer takes a page fault per 4 KiB as the read fills it, and fs.promises.readFile a
 * thread-pool round trip per 512 KiB). A cold rank-16 adapter of the bench model, 28.7 MB: 15-18 ms, where a
 * Buffer took 18-29.
 */
export async function readWholeFile(path: string): Promise<Buffer> {
  // A hostile or mistaken file (a sparse 100 GB "adapter") must not be read into memory: the process would be
  // killed for lack of it rather than refuse the request.
  const { size } = await stat(path);
  const limit = Math.min(bufferConstants.MAX_LENGTH, Math.floor(totalmem() / 2));
  if (size > limit)
    throw new AdapterIncompatibleError(`${path} is ${size} bytes, more than the ${limit} this server reads as one weight file (half its memory, at most 4 GiB)`);
  return Buffer.from(await native().readFile(path));
}
