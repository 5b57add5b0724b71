// A small reader for the zip archives torch.save writes: central directory (with ZIP64), stored or deflated entries, CRC check.
// Reads archives held in memory only; knows nothing of pickles or tensors (safe-pickle.ts does).

import { crc32, inflateRawSync } from "node:zlib";
import { AdapterIncompatibleError } from "../../errors.js";

export interface ZipEntry {
  name: string;
  method: number; // 0 stored, 8 deflate
  crc: number;
  compressedSize: number;
  size: number;
  localHeaderOffset: number;
}

export interface ZipArchive {
  entries: Map<string, ZipEntry>;
  /** The bytes of one entry, inflated if needed and checked against its CRC-32. */
  read(name: string): Uint8Array;
}

const SIG_EOCD = 0x06054b50;
const SIG_EOCD64 = 0x06064b50;
const SIG_EOCD64_LOCATOR = 0x07064b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_LOCAL = 0x04034b50;

/** Opens `bytes` as a zip archive; `label` starts every error. */
export function openZip(bytes: Uint8Array, label: string): ZipArchive {
  const fail = (why: string): never => {
    throw new AdapterIncompatibleError(`${label}: ${why}`);
  };
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const u16 = (at: number) => view.getUint16(at, true);
  const u32 = (at: number) => view.getUint32(at, true);
  const u64 = (at: number) => {
    const v = view.getBigUint64(at, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`a ZIP64 field at byte ${at} holds ${v}, larger than any file this reader takes`);
    return Number(v);
  };

  const eocd = findEndOfCentralDirectory(view);
  if (eocd < 0) {
    fail(
      `not a complete zip archive: no end-of-central-directory record in its ${bytes.byteLength} bytes ` +
        "(a truncated download or upload?)",
    );
  }
  let count = u16(eocd + 10);
  let cdSize = u32(eocd + 12);
  let cdOffset = u32(eocd + 16);
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    const locator = eocd - 20;
    if (locator < 0 || u32(locator) !== SIG_EOCD64_LOCATOR) fail("ZIP64 sizes announced but no ZIP64 locator found");
    const rec = u64(locator + 8);
    if (rec + 56 > bytes.byteLength || u32(rec) !== SIG_EOCD64) fail(`no ZIP64 end-of-central-directory record at byte ${rec}`);
    count = u64(rec + 32);
    cdSize = u64(rec + 40);
    cdOffset = u64(rec + 48);
  }
  if (cdOffset + cdSize > bytes.byteLength) {
    fail(`the central directory [${cdOffset}, ${cdOffset + cdSize}) runs past the end of the file (${bytes.byteLength} bytes)`);
  }

  const entries = new Map<string, ZipEntry>();
  let at = cdOffset;
  for (let i = 0; i < count; i++) {
    if (at + 46 > cdOffset + cdSize || u32(at) !== SIG_CENTRAL) fail(`central directory entry ${i} at byte ${at} is damaged`);
    const flags = u16(at + 8);
    const method = u16(at + 10);
    const crc = u32(at + 16);
    let compressedSize = u32(at + 20);
    let size = u32(at + 24);
    const nameLen = u16(at + 28);
    const extraLen = u16(at + 30);
    const commentLen = u16(at + 32);
    let localHeaderOffset = u32(at + 42);
    const name = Buffer.from(bytes.buffer, bytes.byteOffset + at + 46, nameLen).toString("utf8");
    let extra = at + 46 + nameLen;
    const extraEnd = extra + extraLen;
    while (extra + 4 <= extraEnd) {
      const id = u16(extra);
      const len = u16(extra + 2);
      if (id === 0x0001) {
        let field = extra + 4;
        if (size === 0xffffffff) {
          size = u64(field);
          field += 8;
        }
        if (compressedSize === 0xffffffff) {
          compressedSize = u64(field);
          field += 8;
        }
        if (localHeaderOffset === 0xffffffff) localHeaderOffset = u64(field);
      }
      extra += 4 + len;
    }
    if (flags & 0x1) fail(`entry "${name}" is encrypted`);
    if (method !== 0 && method !== 8) fail(`entry "${name}" uses compression method ${method}; only stored (0) and deflate (8) are read`);
    entries.set(name, { name, method, crc, compressedSize, size, localHeaderOffset });
    at = extraEnd + commentLen;
  }

  return {
    entries,
    read(name: string): Uint8Array {
      const e = entries.get(name);
      if (e === undefined) return fail(`no entry "${name}" in the archive`);
      const h = e.localHeaderOffset;
      if (h + 30 > bytes.byteLength || u32(h) !== SIG_LOCAL) fail(`entry "${name}": no local header at byte ${h}`);
      const start = h + 30 + u16(h + 26) + u16(h + 28);
      if (start + e.compressedSize > bytes.byteLength) {
        fail(`entry "${name}": its ${e.compressedSize} bytes at ${start} run past the end of the file (${bytes.byteLength} bytes)`);
      }
      const raw = bytes.subarray(start, start + e.compressedSize);
      const data = e.method === 8 ? new Uint8Array(inflateRawSync(raw)) : raw;
      if (data.byteLength !== e.size) fail(`entry "${name}" has ${data.byteLength} bytes, its directory says ${e.size}`);
      if (crc32(data) >>> 0 !== e.crc) fail(`entry "${name}" fails its CRC-32 check; the archive is corrupt`);
      return data;
    },
  };
}

/** Offset of the end-of-central-directory record, searched backwards over the longest possible comment; -1 if absent. */
function findEndOfCentralDirectory(view: DataView): number {
  const last = view.byteLength - 22;
  const first = Math.max(0, last - 0xffff);
  for (let at = last; at >= first; at--) {
    if (view.getUint32(at, true) === SIG_EOCD && at + 22 + view.getUint16(at + 20, true) <= view.byteLength) return at;
  }
  return -1;
}
