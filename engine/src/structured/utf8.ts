// The bytes each vocabulary token stands for, and UTF-8 validity across token boundaries. xgrammar
// 0.1.27 accepts overlong, surrogate and out-of-range sequences inside strings; this closes that gap.
// It does not know grammars; grammar.ts applies these checks around xgrammar's masks.

/** Token i's bytes are bytes[offsets[i] .. offsets[i + 1]). */
export interface TokenBytes {
  bytes: Uint8Array;
  offsets: Uint32Array;
}

export type ByteSpelling = "byte_level" | "sentencepiece" | "raw";

/** GPT-2's byte → printable character table, which byte-level vocabularies are written in. */
export function byteLevelAlphabet(): string[] {
  const direct = new Set<number>();
  for (let b = 0x21; b <= 0x7e; b++) direct.add(b);
  for (let b = 0xa1; b <= 0xac; b++) direct.add(b);
  for (let b = 0xae; b <= 0xff; b++) direct.add(b);
  const table: string[] = new Array(256);
  let shifted = 0;
  for (let b = 0; b < 256; b++) table[b] = String.fromCodePoint(direct.has(b) ? b : 256 + shifted++);
  return table;
}

const utf8 = new TextEncoder();

/** Decodes tokens the way xgrammar does: GPT-2 characters to bytes, ▁ and <0xNN> for SentencePiece. */
export function tokenBytes(tokens: readonly (string | undefined)[], spelling: ByteSpelling, literal: ReadonlySet<number>): TokenBytes {
  const inverse = new Map<string, number>();
  byteLevelAlphabet().forEach((ch, b) => inverse.set(ch, b));
  const parts: Uint8Array[] = [];
  let total = 0;
  for (let id = 0; id < tokens.length; id++) {
    const token = tokens[id] ?? "";
    let bytes: Uint8Array;
    if (literal.has(id) || spelling === "raw") bytes = utf8.encode(token);
    else if (spelling === "byte_level") {
      const mapped = [...token].map((ch) => inverse.get(ch));
      bytes = mapped.every((b) => b !== undefined) ? Uint8Array.from(mapped as number[]) : utf8.encode(token);
    } else {
      const byte = /^<0x([0-9A-F]{2})>$/.exec(token);
      bytes = byte !== null ? Uint8Array.of(parseInt(byte[1], 16)) : utf8.encode(token.replace(/\u2581/g, " "));
    }
    parts.push(bytes);
    total += bytes.length;
  }
  const out: TokenBytes = { bytes: new Uint8Array(total), offsets: new Uint32Array(tokens.length + 1) };
  let at = 0;
  parts.forEach((bytes, id) => {
    out.bytes.set(bytes, at);
    at += bytes.length;
    out.offsets[id + 1] = at;
  });
  return out;
}

/** Lead bytes whose next byte has a narrower range than 80-BF (overlongs, surrogates, > U+10FFFF). */
export const SPECIAL_LEADS: ReadonlyMap<number, readonly [number, number]> = new Map([
  [0xe0, [0xa0, 0xbf]],
  [0xed, [0x80, 0x9f]],
  [0xf0, [0x90, 0xbf]],
  [0xf4, [0x80, 0x8f]],
]);

/** True when the bytes can never be part of valid UTF-8 text, wherever they appear. */
export function neverValidUtf8(bytes: Uint8Array): boolean {
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    if (b === 0xc0 || b === 0xc1 || b >= 0xf5) return true;
    const range = SPECIAL_LEADS.get(b);
    const next = bytes[i + 1];
    if (range !== undefined && next !== undefined && next >= 0x80 && next <= 0xbf && (next < range[0] || next > range[1])) return true;
  }
  return false;
}

function sequenceLength(lead: number): number {
  return lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
}

/** The unfinished UTF-8 sequence after `bytes` follow an unfinished `tail` (empty: on a boundary). */
export function nextTail(tail: readonly number[], bytes: Uint8Array): number[] {
  let out = [...tail];
  for (const b of bytes) {
    if (out.length === 0) {
      if (b >= 0xc0) out = [b];
    } else {
      out.push(b);
      if (out.length === sequenceLength(out[0])) out = [];
    }
  }
  return out;
}

/** The lead byte that restricts the next byte, when the text ends right after one. */
export function pendingLead(tail: readonly number[]): number | undefined {
  return tail.length === 1 && SPECIAL_LEADS.has(tail[0]) ? tail[0] : undefined;
}

/** Per special lead: a mask of the tokens whose first byte that lead forbids. */
export function forbiddenAfterLead(tb: TokenBytes, maskWords: number): Map<number, Uint32Array> {
  const out = new Map<number, Uint32Array>();
  for (const [lead, [lo, hi]] of SPECIAL_LEADS) {
    const mask = new Uint32Array(maskWords);
    for (let id = 0; id + 1 < tb.offsets.length; id++) {
      if (tb.offsets[id] === tb.offsets[id + 1]) continue;
      const first = tb.bytes[tb.offsets[id]];
      if (first >= 0x80 && first <= 0xbf && (first < lo || first > hi)) mask[id >>> 5] |= 1 << (id & 31);
    }
    out.set(lead, mask);
  }
  return out;
}
