// Test-only writers for the adapter formats: safetensors, stored/deflated zip, pickle protocol 2 torch state dicts.
// Independent of the readers under test (no imports from engine/src); they build bytes the way the real tools lay them out.

import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { crc32, deflateRawSync } from "node:zlib";

export type Dtype = "F32" | "F16" | "BF16" | "F64";

export interface TensorSpec {
  name: string;
  dtype?: Dtype;
  shape: number[];
  data: ArrayLike<number>;
}

/** float → IEEE half, round to nearest even (values used in tests are exactly representable anyway). */
export function floatToHalf(v: number): number {
  const f = new Float32Array([v]);
  const x = new Uint32Array(f.buffer)[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = ((x >>> 23) & 0xff) - 127 + 15;
  const mant = x & 0x7fffff;
  if (exp <= 0) return sign | Math.round((mant | 0x800000) / 2 ** (14 - exp));
  if (exp >= 31) return sign | 0x7c00;
  return sign | (exp << 10) | Math.round(mant / 8192);
}

export function encode(data: ArrayLike<number>, dtype: Dtype): Buffer {
  const n = data.length;
  const size = { F32: 4, F16: 2, BF16: 2, F64: 8 }[dtype];
  const out = Buffer.alloc(n * size);
  for (let i = 0; i < n; i++) {
    if (dtype === "F32") out.writeFloatLE(data[i], i * 4);
    else if (dtype === "F64") out.writeDoubleLE(data[i], i * 8);
    else if (dtype === "F16") out.writeUInt16LE(floatToHalf(data[i]), i * 2);
    else {
      const f = Buffer.alloc(4);
      f.writeFloatLE(data[i]);
      out.writeUInt16LE(f.readUInt16LE(2), i * 2);
    }
  }
  return out;
}

/** A safetensors file; `header` may be edited before it is written to build broken files. */
export function safetensors(
  tensors: TensorSpec[],
  edit?: (header: Record<string, unknown>) => void,
  trailing = Buffer.alloc(0),
): Buffer {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  const chunks: Buffer[] = [];
  let offset = 0;
  for (const t of tensors) {
    const bytes = encode(t.data, t.dtype ?? "F32");
    header[t.name] = { dtype: t.dtype ?? "F32", shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  edit?.(header);
  const json = Buffer.from(JSON.stringify(header), "utf8");
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, ...chunks, trailing]);
}

/** A zip archive; entries are stored unless `deflate` is set. */
export function zip(entries: Array<{ name: string; data: Buffer }>, deflate = false): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name, "utf8");
    const body = deflate ? deflateRawSync(e.data) : e.data;
    const crc = crc32(e.data) >>> 0;
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(deflate ? 8 : 0, 8);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(body.length, 18);
    local.writeUInt32LE(e.data.length, 22);
    local.writeUInt16LE(name.length, 26);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE(20, 4);
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(deflate ? 8 : 0, 10);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(body.length, 20);
    central.writeUInt32LE(e.data.length, 24);
    central.writeUInt16LE(name.length, 28);
    central.writeUInt32LE(offset, 42);
    locals.push(local, name, body);
    centrals.push(central, name);
    offset += 30 + name.length + body.length;
  }
  const cd = Buffer.concat(centrals);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(entries.length, 8);
  eocd.writeUInt16LE(entries.length, 10);
  eocd.writeUInt32LE(cd.length, 12);
  eocd.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cd, eocd]);
}

/** Pickle protocol 2 opcodes, spelled out by hand. */
export class Pickle {
  private readonly parts: Buffer[] = [Buffer.from([0x80, 2])];
  op(code: number): this {
    this.parts.push(Buffer.from([code]));
    return this;
  }
  mark(): this {
    return this.op(0x28);
  }
  tuple(): this {
    return this.op(0x74);
  }
  str(s: string): this {
    const b = Buffer.from(s, "utf8");
    const len = Buffer.alloc(4);
    len.writeUInt32LE(b.length);
    this.parts.push(Buffer.from([0x58]), len, b);
    return this;
  }
  int(n: number): this {
    const b = Buffer.alloc(5);
    b[0] = 0x4a;
    b.writeInt32LE(n, 1);
    this.parts.push(b);
    return this;
  }
  global(module: string, name: string): this {
    this.parts.push(Buffer.from(`c${module}\n${name}\n`, "latin1"));
    return this;
  }
  ints(values: number[]): this {
    this.mark();
    for (const v of values) this.int(v);
    return this.tuple();
  }
  bytes(): Buffer {
    return Buffer.concat([...this.parts, Buffer.from([0x2e])]);
  }
}

const STORAGE: Record<Dtype, string> = { F32: "FloatStorage", F16: "HalfStorage", BF16: "BFloat16Storage", F64: "DoubleStorage" };

export interface TorchTensorSpec extends TensorSpec {
  /** Elements before the tensor in its storage. */
  offset?: number;
  stride?: number[];
}

/** The pickle torch.save writes for a flat state dict, one storage per tensor. */
export function statePickle(tensors: TorchTensorSpec[]): Buffer {
  const p = new Pickle().op(0x7d).mark();
  tensors.forEach((t, key) => {
    const offset = t.offset ?? 0;
    const stride = t.stride ?? contiguousStride(t.shape);
    p.str(t.name).global("torch._utils", "_rebuild_tensor_v2").mark();
    p.mark().str("storage").global("torch", STORAGE[t.dtype ?? "F32"]).str(String(key)).str("cpu").int(offset + t.data.length).tuple();
    p.op(0x51).int(offset).ints(t.shape).ints(stride).op(0x89).global("collections", "OrderedDict").op(0x29).op(0x52);
    p.tuple().op(0x52);
  });
  return p.op(0x75).bytes();
}

export function contiguousStride(shape: number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/** An adapter_model.bin as torch.save writes it: `<root>/data.pkl`, `<root>/data/<key>`, `<root>/version`. */
export function torchArchive(tensors: TorchTensorSpec[], opts: { root?: string; pickle?: Buffer; deflate?: boolean } = {}): Buffer {
  const root = opts.root ?? "adapter_model";
  const entries = [{ name: `${root}/data.pkl`, data: opts.pickle ?? statePickle(tensors) }];
  tensors.forEach((t, key) => {
    const pad = new Array<number>(t.offset ?? 0).fill(0);
    entries.push({ name: `${root}/data/${key}`, data: encode([...pad, ...Array.from(t.data)], t.dtype ?? "F32") });
  });
  entries.push({ name: `${root}/version`, data: Buffer.from("3\n") });
  return zip(entries, opts.deflate ?? false);
}

const created: string[] = [];

export function tempDir(prefix = "loraserve-test-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  created.push(dir);
  return dir;
}

/** Removes every directory tempDir() made; call from afterAll. */
export function removeTempDirs(): void {
  for (const dir of created.splice(0)) rmSync(dir, { recursive: true, force: true });
}

/** Writes an adapter directory with the given files (strings or bytes) and returns its path. */
export function adapterDir(files: Record<string, string | Buffer | object>): string {
  const dir = tempDir("loraserve-adapter-");
  for (const [name, content] of Object.entries(files)) {
    const data = typeof content === "string" || Buffer.isBuffer(content) ? content : JSON.stringify(content, null, 2);
    writeFileSync(join(dir, name), data);
  }
  return dir;
}

/** Deterministic pseudo-random values in [-1, 1), for tensor contents. */
export function values(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = ((s >>> 0) / 2 ** 32) * 2 - 1;
  }
  return out;
}
