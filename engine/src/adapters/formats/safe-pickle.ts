// Reads PyTorch `torch.save` zip archives (adapter_model.bin) with a restricted unpickler that only rebuilds tensors.
// Never executes anything: every global outside a short whitelist is refused by name. Knows nothing of LoRA key names.
//
// Written here rather than on the `pickleparser` package: that parser turns unknown globals into callable stubs, lets
// REDUCE call them and assigns dict keys onto plain objects (`__proto__`), so safety would rest on hooks around it.
// This one accepts only the opcodes torch state dicts use and names the offending global or opcode when it refuses.

import { AdapterIncompatibleError } from "../../errors.js";
import {
  FLOAT_DTYPE_BYTES,
  type FloatDtype,
  type TensorEntry,
  decodeFloats,
  formatShape,
  notAWeightFile,
  numelOf,
  readWholeFile,
} from "./tensor.js";
import { openZip } from "./zip.js";

/** Torch storage classes whose elements decode to float32. */
const FLOAT_STORAGES: Record<string, FloatDtype> = {
  FloatStorage: "F32",
  HalfStorage: "F16",
  BFloat16Storage: "BF16",
  DoubleStorage: "F64",
};

const CALLABLES = {
  "collections.OrderedDict": "ordered_dict",
  "torch._utils._rebuild_tensor_v2": "rebuild_tensor_v2",
  "torch._utils._rebuild_tensor": "rebuild_tensor",
} as const;
type CallableKind = (typeof CALLABLES)[keyof typeof CALLABLES];

const ALLOWED_GLOBALS = [...Object.keys(CALLABLES), ...Object.keys(FLOAT_STORAGES).map((s) => `torch.${s}`)].join(", ");

/** Values the unpickler builds. Python ints, floats, str, bool and None map to JS primitives. */
export type PyValue =
  | null
  | boolean
  | number
  | string
  | Uint8Array
  | PyTuple
  | PyList
  | PyDict
  | PyCallable
  | PyStorageClass
  | StorageRef
  | TensorRef;

export class PyTuple {
  constructor(readonly items: PyValue[]) {}
}
export class PyList {
  constructor(readonly items: PyValue[]) {}
}
export class PyDict {
  readonly map = new Map<string | number | boolean | null, PyValue>();
}
export class PyCallable {
  constructor(
    readonly qualname: string,
    readonly kind: CallableKind,
  ) {}
}
export class PyStorageClass {
  constructor(
    readonly qualname: string,
    readonly dtype: FloatDtype,
  ) {}
}
/** A storage named by a persistent id: `('storage', torch.FloatStorage, key, location, numel)`. */
export class StorageRef {
  constructor(
    readonly key: string,
    readonly dtype: FloatDtype,
    readonly numel: number,
    readonly location: string,
  ) {}
}
export class TensorRef {
  constructor(
    readonly storage: StorageRef,
    readonly offset: number,
    readonly size: number[],
    readonly stride: number[],
  ) {}
}

function typeName(v: PyValue): string {
  if (v === null) return "None";
  if (typeof v !== "object") return typeof v;
  if (v instanceof Uint8Array) return "bytes";
  if (v instanceof PyCallable || v instanceof PyStorageClass) return v.qualname;
  return v.constructor.name;
}

/** Resolves a global to one of the few things a tensor pickle may name; anything else is refused by name. */
function resolveGlobal(module: string, name: string, fail: (why: string) => never): PyValue {
  const qualname = `${module}.${name}`;
  if (qualname in CALLABLES) return new PyCallable(qualname, CALLABLES[qualname as keyof typeof CALLABLES]);
  if ((module === "torch" || module === "torch.storage") && name in FLOAT_STORAGES) {
    return new PyStorageClass(qualname, FLOAT_STORAGES[name]);
  }
  if (module.startsWith("torch") && name.endsWith("Storage")) {
    return fail(`tensor storage ${qualname} does not hold float32/float16/bfloat16 values; LoRA weights must be float tensors`);
  }
  return fail(
    `refused pickle global ${qualname}: this reader only rebuilds tensors (allowed: ${ALLOWED_GLOBALS}); ` +
      "nothing was executed — the file is not a plain state dict and may be malicious",
  );
}

const OPCODE_NAMES: Record<number, string> = {
  0x69: "INST",
  0x6f: "OBJ",
  0x81: "NEWOBJ",
  0x92: "NEWOBJ_EX",
  0x82: "EXT1",
  0x83: "EXT2",
  0x84: "EXT4",
  0x50: "PERSID",
};

/**
 * Unpickles `pkl` (protocols 2–4, the opcodes a torch state dict uses). `persistentLoad` resolves BINPERSID ids.
 * Errors start with `label`.
 */
export function unpickle(pkl: Uint8Array, label: string, persistentLoad: (pid: PyValue) => PyValue): PyValue {
  const fail = (why: string): never => {
    throw new AdapterIncompatibleError(`${label}: ${why}`);
  };
  const view = new DataView(pkl.buffer, pkl.byteOffset, pkl.byteLength);
  let pos = 0;
  const need = (n: number) => {
    if (pos + n > pkl.byteLength) fail(`the pickle ends early (needs ${n} more bytes at byte ${pos} of ${pkl.byteLength})`);
  };
  const advance = (n: number): number => {
    need(n);
    pos += n;
    return pos - n;
  };
  const u8 = () => pkl[advance(1)];
  const u16 = () => view.getUint16(advance(2), true);
  const u32 = () => view.getUint32(advance(4), true);
  const i32 = () => view.getInt32(advance(4), true);
  const u64 = () => {
    need(8);
    const v = view.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(pkl.byteLength)) fail(`a length of ${v} at byte ${pos - 8} runs past the pickle`);
    return Number(v);
  };
  const bytes = (n: number) => {
    const start = advance(n);
    return pkl.subarray(start, start + n);
  };
  const text = (n: number, enc: "utf8" | "latin1") => Buffer.from(bytes(n)).toString(enc);
  const line = () => {
    const end = pkl.indexOf(0x0a, pos);
    if (end < 0) fail(`the pickle ends inside a text line at byte ${pos}`);
    const s = Buffer.from(pkl.subarray(pos, end)).toString("latin1");
    pos = end + 1;
    return s;
  };

  let stack: PyValue[] = [];
  const marks: PyValue[][] = [];
  const memo = new Map<number, PyValue>();
  const pop = (): PyValue => {
    if (stack.length === 0) fail(`stack underflow at byte ${pos}`);
    return stack.pop() as PyValue;
  };
  const top = (): PyValue => {
    if (stack.length === 0) fail(`stack underflow at byte ${pos}`);
    return stack[stack.length - 1];
  };
  const popMark = (): PyValue[] => {
    const items = stack;
    const outer = marks.pop();
    if (outer === undefined) fail(`no MARK before byte ${pos}`);
    stack = outer as PyValue[];
    return items;
  };
  const dictKey = (k: PyValue): string | number | boolean | null => {
    if (k === null || typeof k === "string" || typeof k === "number" || typeof k === "boolean") return k;
    return fail(`a dict key of type ${typeName(k)} is not supported`);
  };
  const asDict = (v: PyValue, op: string): PyDict => {
    if (!(v instanceof PyDict)) fail(`${op} on a ${typeName(v)}, not a dict`);
    return v as PyDict;
  };
  const asList = (v: PyValue, op: string): PyList => {
    if (!(v instanceof PyList)) fail(`${op} on a ${typeName(v)}, not a list`);
    return v as PyList;
  };

  while (true) {
    const at = pos;
    const op = u8();
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) fail(`pickle protocol ${pkl[pos - 1]} is newer than any this reader knows`);
        break;
      case 0x95: // FRAME
        u64();
        break;
      case 0x2e: // STOP
        return pop();
      case 0x28: // MARK
        marks.push(stack);
        stack = [];
        break;
      case 0x30: // POP
        pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: {
        // LONG_BINGET
        const idx = op === 0x68 ? u8() : u32();
        if (!memo.has(idx)) fail(`memo entry ${idx} read before it was written (byte ${at})`);
        stack.push(memo.get(idx) as PyValue);
        break;
      }
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x4a: // BININT
        stack.push(i32());
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: {
        // LONG1: little-endian two's complement
        const b = bytes(u8());
        let v = 0n;
        for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
        if (b.length > 0 && b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
        if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) fail(`integer ${v} at byte ${at} is too large`);
        stack.push(Number(v));
        break;
      }
      case 0x47: // BINFLOAT (big-endian)
        stack.push(view.getFloat64(advance(8), false));
        break;
      case 0x58: // BINUNICODE
        stack.push(text(u32(), "utf8"));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(text(u8(), "utf8"));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(text(u64(), "utf8"));
        break;
      case 0x54: // BINSTRING
        stack.push(text(u32(), "latin1"));
        break;
      case 0x55: // SHORT_BINSTRING
        stack.push(text(u8(), "latin1"));
        break;
      case 0x42: // BINBYTES
        stack.push(bytes(u32()));
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(bytes(u8()));
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(new PyTuple([]));
        break;
      case 0x74: {
        // TUPLE (popMark swaps `stack`, so take the items before touching it)
        const items = popMark();
        stack.push(new PyTuple(items));
        break;
      }
      case 0x85: // TUPLE1
        stack.push(new PyTuple([pop()]));
        break;
      case 0x86: {
        // TUPLE2
        const b = pop();
        stack.push(new PyTuple([pop(), b]));
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop();
        const b = pop();
        stack.push(new PyTuple([pop(), b, c]));
        break;
      }
      case 0x5d: // EMPTY_LIST
        stack.push(new PyList([]));
        break;
      case 0x6c: {
        // LIST
        const items = popMark();
        stack.push(new PyList(items));
        break;
      }
      case 0x61: {
        // APPEND
        const v = pop();
        asList(top(), "APPEND").items.push(v);
        break;
      }
      case 0x65: {
        // APPENDS
        const items = popMark();
        asList(top(), "APPENDS").items.push(...items);
        break;
      }
      case 0x7d: // EMPTY_DICT
        stack.push(new PyDict());
        break;
      case 0x64: {
        // DICT
        const items = popMark();
        const d = new PyDict();
        for (let i = 0; i + 1 < items.length; i += 2) d.map.set(dictKey(items[i]), items[i + 1]);
        stack.push(d);
        break;
      }
      case 0x73: {
        // SETITEM
        const v = pop();
        const k = pop();
        asDict(top(), "SETITEM").map.set(dictKey(k), v);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark();
        const d = asDict(top(), "SETITEMS");
        for (let i = 0; i + 1 < items.length; i += 2) d.map.set(dictKey(items[i]), items[i + 1]);
        break;
      }
      case 0x63: {
        // GLOBAL
        const module = line();
        stack.push(resolveGlobal(module, line(), fail));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== "string" || typeof name !== "string") fail(`STACK_GLOBAL with non-string names at byte ${at}`);
        stack.push(resolveGlobal(module as string, name as string, fail));
        break;
      }
      case 0x51: // BINPERSID
        stack.push(persistentLoad(pop()));
        break;
      case 0x52: {
        // REDUCE
        const args = pop();
        const fn = pop();
        if (!(fn instanceof PyCallable)) fail(`REDUCE calls ${typeName(fn)}, which is not callable here`);
        if (!(args instanceof PyTuple)) fail(`REDUCE of ${typeName(fn)} with ${typeName(args)} arguments`);
        stack.push(call(fn as PyCallable, (args as PyTuple).items, fail));
        break;
      }
      case 0x62: {
        // BUILD: only an OrderedDict's instance attributes (torch's `_metadata`), which carry no tensor data
        const state = pop();
        asDict(top(), "BUILD");
        if (state !== null && !(state instanceof PyDict)) fail(`BUILD with ${typeName(state)} state at byte ${at}`);
        break;
      }
      case 0x69: // INST names its class inline
        return fail(`refused pickle INST of ${line()}.${line()}: this reader only rebuilds tensors; nothing was executed`);
      default: {
        const name = OPCODE_NAMES[op] ?? `'${String.fromCharCode(op)}'`;
        fail(`unsupported pickle opcode 0x${op.toString(16).padStart(2, "0")} (${name}) at byte ${at}; only tensor state dicts are read`);
      }
    }
  }
}

function call(fn: PyCallable, args: PyValue[], fail: (why: string) => never): PyValue {
  const ints = (v: PyValue, what: string): number[] => {
    if (!(v instanceof PyTuple) || !v.items.every((x) => typeof x === "number" && Number.isSafeInteger(x) && x >= 0)) {
      return fail(`${fn.qualname}: ${what} is ${typeName(v)}, expected a tuple of non-negative integers`);
    }
    return v.items as number[];
  };
  switch (fn.kind) {
    case "ordered_dict":
      if (args.length !== 0) fail(`collections.OrderedDict called with ${args.length} arguments; only the empty form is read`);
      return new PyDict();
    case "rebuild_tensor":
    case "rebuild_tensor_v2": {
      const want = fn.kind === "rebuild_tensor" ? [4] : [6, 7];
      if (!want.includes(args.length)) fail(`${fn.qualname} called with ${args.length} arguments, expected ${want.join(" or ")}`);
      const [storage, offset, size, stride] = args;
      if (!(storage instanceof StorageRef)) return fail(`${fn.qualname}: first argument is ${typeName(storage)}, not a storage`);
      if (typeof offset !== "number" || !Number.isSafeInteger(offset) || offset < 0) {
        return fail(`${fn.qualname}: storage offset ${String(offset)} is not a non-negative integer`);
      }
      if (fn.kind === "rebuild_tensor_v2") {
        const hooks = args[5];
        if (!(hooks instanceof PyDict) || hooks.map.size !== 0) fail(`${fn.qualname}: tensors with backward hooks are not read`);
      }
      return new TensorRef(storage, offset, ints(size, "size"), ints(stride, "stride"));
    }
  }
}

/** Row-major strides of a contiguous tensor; dimensions of extent 1 may carry any stride. */
function isContiguous(size: number[], stride: number[]): boolean {
  let expect = 1;
  for (let i = size.length - 1; i >= 0; i--) {
    if (size[i] !== 1 && stride[i] !== expect) return false;
    expect *= size[i];
  }
  return true;
}

/** Parses a torch.save zip archive held in memory into its tensors; `label` starts every error. */
export function parseTorchArchive(bytes: Uint8Array, label: string): Map<string, TensorEntry> {
  const fail = (why: string): never => {
    throw new AdapterIncompatibleError(`${label}: ${why}`);
  };
  const notWeights = notAWeightFile(bytes);
  if (notWeights !== null) fail(notWeights);
  if (bytes[0] === 0x80) {
    fail("this is the legacy (PyTorch < 1.6) torch.save format, which is not read; re-save it with a recent torch or as safetensors");
  }
  if (!(bytes[0] === 0x50 && bytes[1] === 0x4b)) {
    fail(`not a PyTorch zip archive (it starts with bytes ${Buffer.from(bytes.subarray(0, 4)).toString("hex")}, not "PK")`);
  }
  const zip = openZip(bytes, label);
  const pkls = [...zip.entries.keys()].filter((n) => n === "data.pkl" || n.endsWith("/data.pkl"));
  if (pkls.length !== 1) {
    fail(`expected exactly one data.pkl in the archive, found ${pkls.length} (${[...zip.entries.keys()].slice(0, 5).join(", ")})`);
  }
  const root = pkls[0].slice(0, -"data.pkl".length);
  const byteorder = zip.entries.has(`${root}byteorder`) ? Buffer.from(zip.read(`${root}byteorder`)).toString("latin1") : "little";
  if (byteorder !== "little") fail(`the archive was written ${byteorder}-endian; only little-endian archives are read`);

  /** Storage bytes, read (and CRC-checked) as the pickle names them. */
  const storageBytes = new Map<string, Uint8Array>();
  const persistentLoad = (pid: PyValue): PyValue => {
    const items = pid instanceof PyTuple ? pid.items : [];
    const [tag, cls, key, location, numel] = items;
    if (items.length !== 5 || tag !== "storage") fail(`unexpected persistent id ${typeName(pid)} (expected ('storage', type, key, location, numel))`);
    if (!(cls instanceof PyStorageClass)) return fail(`persistent id names ${typeName(cls)}, not a float storage class`);
    if (typeof key !== "string" || typeof location !== "string" || typeof numel !== "number" || !Number.isSafeInteger(numel) || numel < 0) {
      return fail(`malformed storage persistent id (key ${String(key)}, location ${String(location)}, numel ${String(numel)})`);
    }
    const entry = zip.entries.get(`${root}data/${key}`);
    if (entry === undefined) return fail(`storage "${key}" named by the pickle has no entry ${root}data/${key} in the archive`);
    const need = numel * FLOAT_DTYPE_BYTES[cls.dtype];
    if (entry.size < need) fail(`storage "${key}" holds ${entry.size} bytes, ${numel} × ${cls.dtype} needs ${need}`);
    if (!storageBytes.has(key)) storageBytes.set(key, zip.read(entry.name));
    return new StorageRef(key, cls.dtype, numel, location);
  };

  const state = unpickle(zip.read(`${root}data.pkl`), `${label}: data.pkl`, persistentLoad);
  if (!(state instanceof PyDict)) return fail(`the pickle holds a ${typeName(state)}, not a state dict`);

  const tensors = new Map<string, TensorEntry>();
  for (const [name, value] of state.map) {
    if (typeof name !== "string") fail(`state dict key ${String(name)} is not a string`);
    if (!(value instanceof TensorRef)) fail(`state dict entry "${String(name)}" is a ${typeName(value)}, not a tensor`);
    const t = value as TensorRef;
    const key = name as string;
    if (t.size.length !== t.stride.length) fail(`tensor "${key}": size ${formatShape(t.size)} and stride ${formatShape(t.stride)} differ in rank`);
    const numel = numelOf(t.size);
    if (numel < 0) fail(`tensor "${key}": size ${formatShape(t.size)} is too large`);
    if (numel > 0 && !isContiguous(t.size, t.stride)) {
      fail(`tensor "${key}" is not contiguous (size ${formatShape(t.size)}, stride ${formatShape(t.stride)}); re-save it after .contiguous()`);
    }
    if (t.offset + numel > t.storage.numel) {
      fail(`tensor "${key}": elements [${t.offset}, ${t.offset + numel}) run past its storage of ${t.storage.numel}`);
    }
    tensors.set(key, {
      name: key,
      dtype: t.storage.dtype,
      shape: t.size,
      read: () => decodeFloats(storageBytes.get(t.storage.key) as Uint8Array, t.offset * FLOAT_DTYPE_BYTES[t.storage.dtype], numel, t.storage.dtype),
    });
  }
  return tensors;
}

/** Reads and parses a torch.save zip archive from disk. */
export async function readTorchArchiveFile(path: string, label = path): Promise<Map<string, TensorEntry>> {
  return parseTorchArchive(await readWholeFile(path), label);
}
