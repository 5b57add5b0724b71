// Reads a safetensors file held in memory: validates the header strictly and hands out lazily decoded tensors.
// Adapters only (small files); base-model weights are mapped by native code. Knows nothing of LoRA key names.

import { AdapterIncompatibleError } from "../../errors.js";
import {
  type TensorEntry,
  decodeFloats,
  formatShape,
  isFloatDtype,
  notAWeightFile,
  numelOf,
  readWholeFile,
} from "./tensor.js";

/** Element sizes of the byte-aligned dtypes of the safetensors format. */
const DTYPE_BYTES: Record<string, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  F8_E8M0: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
};

export interface SafetensorsFile {
  tensors: Map<string, TensorEntry>;
  /** The free-form `__metadata__` map, not interpreted. */
  metadata: Record<string, unknown> | null;
}

interface Range {
  name: string;
  begin: number;
  end: number;
}

/** Parses and validates `bytes` as a safetensors file; `label` (e.g. `adapter "x": adapter_model.safetensors`) starts every error. */
export function parseSafetensors(bytes: Uint8Array, label: string): SafetensorsFile {
  const fail = (why: string): never => {
    throw new AdapterIncompatibleError(`${label}: ${why}`);
  };
  const notWeights = notAWeightFile(bytes);
  if (notWeights !== null) fail(notWeights);
  if (bytes.byteLength < 8) {
    fail(`the file is ${bytes.byteLength} bytes, shorter than the 8-byte header length that starts a safetensors file`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = view.getBigUint64(0, true);
  if (headerLen > BigInt(bytes.byteLength - 8)) {
    fail(
      `the header length ${headerLen} runs past the end of the file (${bytes.byteLength} bytes); ` +
        "the file is truncated or not safetensors",
    );
  }
  const dataStart = 8 + Number(headerLen);
  const headerText = Buffer.from(bytes.buffer, bytes.byteOffset + 8, Number(headerLen)).toString("utf8");
  let header: unknown;
  try {
    header = JSON.parse(headerText);
  } catch (err) {
    fail(`the header is not JSON (${(err as Error).message}); the file is corrupt or not safetensors`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    fail(`the header is JSON but not an object (${headerText.slice(0, 40)})`);
  }
  const dataLen = bytes.byteLength - dataStart;
  const ranges: Range[] = [];
  const tensors = new Map<string, TensorEntry>();
  let metadata: Record<string, unknown> | null = null;
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      metadata = typeof raw === "object" && raw !== null ? (raw as Record<string, unknown>) : null;
      continue;
    }
    if (typeof raw !== "object" || raw === null) fail(`tensor "${name}": header entry is not an object`);
    const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
    if (typeof dtype !== "string" || !(dtype in DTYPE_BYTES)) {
      fail(`tensor "${name}" has unknown dtype ${JSON.stringify(dtype)} (known: ${Object.keys(DTYPE_BYTES).join(", ")})`);
    }
    const dt = dtype as string;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(`tensor "${name}" has shape ${JSON.stringify(shape)}; expected a list of non-negative integers`);
    }
    const dims = shape as number[];
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
      offsets[0] > offsets[1]
    ) {
      fail(`tensor "${name}" has data_offsets ${JSON.stringify(offsets)}; expected [begin, end] with 0 <= begin <= end`);
    }
    const [begin, end] = offsets as [number, number];
    const numel = numelOf(dims);
    const expected = numel * DTYPE_BYTES[dt];
    if (numel < 0 || end - begin !== expected) {
      fail(
        `tensor "${name}": shape ${formatShape(dims)} × ${dt} needs ${expected} bytes, ` +
          `but data_offsets [${begin},${end}] give ${end - begin}`,
      );
    }
    if (end > dataLen) {
      fail(`tensor "${name}": data_offsets [${begin},${end}] run past the data section (${dataLen} bytes); the file is truncated`);
    }
    ranges.push({ name, begin, end });
    tensors.set(name, {
      name,
      dtype: dt,
      shape: dims,
      read: () => {
        if (!isFloatDtype(dt)) {
          throw new AdapterIncompatibleError(
            `${label}: tensor "${name}" has dtype ${dt}; LoRA weights must be F32, F16, BF16 or F64`,
          );
        }
        return decodeFloats(bytes, dataStart + begin, numel, dt);
      },
    });
  }
  checkCoverage(ranges, dataLen, fail);
  return { tensors, metadata };
}

/** The tensors' byte ranges must tile the data section exactly: no overlap, no gap, nothing left over. */
function checkCoverage(ranges: Range[], dataLen: number, fail: (why: string) => never): void {
  const sorted = ranges.filter((r) => r.end > r.begin).sort((x, y) => x.begin - y.begin || x.end - y.end);
  let covered = 0;
  let last: Range | null = null;
  for (const r of sorted) {
    if (r.begin < covered && last !== null) {
      fail(`tensors "${last.name}" [${last.begin},${last.end}] and "${r.name}" [${r.begin},${r.end}] overlap`);
    }
    if (r.begin > covered) {
      fail(`bytes ${covered}..${r.begin} of the data section belong to no tensor (before "${r.name}")`);
    }
    covered = r.end;
    last = r;
  }
  if (covered !== dataLen) {
    fail(`the data section has ${dataLen} bytes but the tensors cover ${covered}; ${dataLen - covered} trailing bytes belong to no tensor`);
  }
}

/** Reads and parses a safetensors file from disk. */
export async function readSafetensorsFile(path: string, label = path): Promise<SafetensorsFile> {
  return parseSafetensors(await readWholeFile(path), label);
}

