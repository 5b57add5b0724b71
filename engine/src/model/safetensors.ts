// The safetensors container: header parsing with strict validation (for mapping by native code) and a small
// writer (fixtures, merged adapters). Tensor data is never read into the JavaScript heap here.
import fs from "node:fs";

export type DType = "F32" | "F16" | "BF16";
export const DTYPE_BYTES: Record<DType, number> = { F32: 4, F16: 2, BF16: 2 };
/** Codes shared with native/src/common.h. */
export const DTYPE_CODE: Record<DType, number> = { F32: 0, F16: 1, BF16: 2 };

export interface TensorEntry {
  name: string;
  dtype: DType;
  shape: number[];
  /** Absolute byte range of the data in the file. */
  offset: number;
  nbytes: number;
}

export class SafetensorsError extends Error {}

const MAX_HEADER = 100 * 1024 * 1024;

/** Reads and validates the header of one safetensors file; `file` names it in messages. */
export function readSafetensorsHeader(file: string): TensorEntry[] {
  const fd = openOrThrow(file);
  try {
    const size = fs.fstatSync(fd).size;
    if (size < 8) throw new SafetensorsError(`${file}: ${size} bytes is too short for a safetensors file (truncated?)`);
    const lenBuf = Buffer.alloc(8);
    fs.readSync(fd, lenBuf, 0, 8, 0);
    const headerLen = Number(lenBuf.readBigUInt64LE(0));
    if (headerLen > MAX_HEADER || 8 + headerLen > size)
      throw new SafetensorsError(`${file}: header length ${headerLen} goes beyond the file (${size} bytes): truncated or not safetensors`);
    const hb = Buffer.alloc(headerLen);
    fs.readSync(fd, hb, 0, headerLen, 8);
    return parseHeader(file, hb, 8 + headerLen, size);
  } finally {
    fs.closeSync(fd);
  }
}

function openOrThrow(file: string): number {
  try {
    return fs.openSync(file, "r");
  } catch (e) {
    throw new SafetensorsError(`cannot open ${file}: ${(e as Error).message}`);
  }
}

/** Validates a header: dtypes, shapes against byte ranges, ranges inside the data section, no overlap, no gap. */
export function parseHeader(file: string, header: Buffer, dataStart: number, fileSize: number): TensorEntry[] {
  let json: unknown;
  try {
    json = JSON.parse(header.toString("utf8"));
  } catch (e) {
    throw new SafetensorsError(`${file}: header is not JSON (${(e as Error).message})`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw new SafetensorsError(`${file}: header is not a JSON object`);
  const dataLen = fileSize - dataStart;
  const out: TensorEntry[] = [];
  for (const [name, v] of Object.entries(json as Record<string, unknown>)) {
    if (name === "__metadata__") continue;
    const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof e !== "object" || e === null) throw new SafetensorsError(`${file}: entry ${name} is not an object`);
    if (typeof e.dtype !== "string" || !(e.dtype in DTYPE_BYTES))
      throw new SafetensorsError(`${file}: tensor ${name} has dtype ${JSON.stringify(e.dtype)}; supported: F32, F16, BF16`);
    const dtype = e.dtype as DType;
    if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0))
      throw new SafetensorsError(`${file}: tensor ${name} has shape ${JSON.stringify(e.shape)}, expected a list of non-negative integers`);
    const shape = e.shape as number[];
    const offs = e.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => Number.isSafeInteger(d) && d >= 0) || offs[0] > offs[1])
      throw new SafetensorsError(`${file}: tensor ${name} has data_offsets ${JSON.stringify(offs)}, expected [begin, end]`);
    const [b, end] = offs as [number, number];
    if (end > dataLen)
      throw new SafetensorsError(`${file}: tensor ${name} data_offsets [${b}, ${end}] reach beyond the data section (${dataLen} bytes): truncated file?`);
    const numel = shape.reduce((a, d) => a * d, 1);
    if (numel * DTYPE_BYTES[dtype] !== end - b)
      throw new SafetensorsError(`${file}: tensor ${name} is ${dtype}${JSON.stringify(shape)} = ${numel * DTYPE_BYTES[dtype]} bytes but data_offsets span ${end - b}`);
    out.push({ name, dtype, shape, offset: dataStart + b, nbytes: end - b });
  }
  const sorted = [...out].sort((x, y) => x.offset - y.offset || x.nbytes - y.nbytes);
  let cursor = dataStart;
  for (const t of sorted) {
    if (t.offset < cursor) throw new SafetensorsError(`${file}: tensor ${t.name} overlaps the previous tensor's bytes`);
    if (t.offset > cursor) throw new SafetensorsError(`${file}: ${t.offset - cursor} unused bytes before tensor ${t.name} (corrupted offsets?)`);
    cursor = t.offset + t.nbytes;
  }
  if (cursor !== fileSize) throw new SafetensorsError(`${file}: ${fileSize - cursor} bytes after the last tensor are not covered by the header`);
  return out;
}

export interface TensorToWrite {
  name: string;
  dtype: DType;
  shape: number[];
  data: Float32Array; // converted to dtype on write
}

/** Writes a safetensors file (tensors in the given order, 8-byte aligned header). */
export function writeSafetensors(file: string, tensors: TensorToWrite[], metadata?: Record<string, string>): void {
  const byName = new Map(tensors.map((t) => [t.name, t.data]));
  writeSafetensorsStreaming(file, tensors, (name) => byName.get(name)!, metadata);
}

/**
 * Writes a safetensors file tensor by tensor: `data(name)` is asked for each tensor's float32 values in turn,
 * so files larger than memory can be written. Written to a temporary name, then renamed.
 */
export function writeSafetensorsStreaming(
  file: string,
  specs: { name: string; dtype: DType; shape: number[] }[],
  data: (name: string) => Float32Array,
  metadata?: Record<string, string>,
): void {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let off = 0;
  for (const t of specs) {
    const n = t.shape.reduce((a, d) => a * d, 1) * DTYPE_BYTES[t.dtype];
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + n] };
    off += n;
  }
  let hjson = JSON.stringify(header);
  hjson += " ".repeat((8 - (Buffer.byteLength(hjson) % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(hjson)));
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, "w");
  try {
    fs.writeSync(fd, len);
    fs.writeSync(fd, Buffer.from(hjson));
    for (const t of specs) {
      const buf = encodeTensor(data(t.name), t.dtype);
      if (buf.length !== t.shape.reduce((a, d) => a * d, 1) * DTYPE_BYTES[t.dtype]) throw new Error(`tensor ${t.name}: data does not match shape ${JSON.stringify(t.shape)}`);
      fs.writeSync(fd, buf);
    }
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}

export function encodeTensor(data: Float32Array, dtype: DType): Buffer {
  if (dtype === "F32") return Buffer.from(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
  const out = Buffer.alloc(data.length * 2);
  for (let i = 0; i < data.length; i++) out.writeUInt16LE(dtype === "BF16" ? f32ToBf16(data[i]) : f32ToF16(data[i]), i * 2);
  return out;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function f32ToBf16(v: number): number {
  f32[0] = v;
  const u = u32[0];
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bf16ToF32(h: number): number {
  u32[0] = h << 16;
  return f32[0];
}

export function f32ToF16(v: number): number {
  f32[0] = v;
  const u = u32[0];
  const sign = (u >>> 16) & 0x8000;
  const e = (u >>> 23) & 0xff;
  let man = u & 0x7fffff;
  if (e === 0xff) return sign | 0x7c00 | (man ? 0x200 : 0);
  const exp = e - 127 + 15;
  if (exp >= 31) return sign | 0x7c00;
  if (exp <= 0) {
    if (exp < -10) return sign;
    man |= 0x800000;
    const shift = 14 - exp;
    let half = man >>> shift;
    const rem = man & ((1 << shift) - 1), mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let h = sign | (exp << 10) | (man >>> 13);
  const rem = man & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
  return h;
}

export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const man = h & 0x3ff;
  if (exp === 0) return sign * man * 2 ** -24;
  if (exp === 31) return man ? NaN : sign * Infinity;
  return sign * (1 + man / 1024) * 2 ** (exp - 15);
}

/** Reads one tensor's data as float32 (for references and tests; serving maps tensors natively). */
export function readTensorF32(file: string, t: TensorEntry): Float32Array {
  const fd = fs.openSync(file, "r");
  try {
    const buf = Buffer.alloc(t.nbytes);
    fs.readSync(fd, buf, 0, t.nbytes, t.offset);
    const n = t.nbytes / DTYPE_BYTES[t.dtype];
    const out = new Float32Array(n);
    if (t.dtype === "F32") out.set(new Float32Array(buf.buffer, buf.byteOffset, n));
    else for (let i = 0; i < n; i++) out[i] = t.dtype === "BF16" ? bf16ToF32(buf.readUInt16LE(i * 2)) : f16ToF32(buf.readUInt16LE(i * 2));
    return out;
  } finally {
    fs.closeSync(fd);
  }
}
