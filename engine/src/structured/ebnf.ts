// EBNF text for xgrammar: escaped literals, character classes from code-point sets, named rules, and
// how one decoded character is written inside a JSON string. It does not know JSON Schema.
//
// xgrammar computes masks fastest for right-recursive rules whose continuation sits inside the rule
// (`s ::= "\"" | c s`), and slowly for `(...)*` or large `{m,n}` over broad classes; builders here
// and in the callers follow that shape.

/** Inclusive code-point ranges, sorted and disjoint. */
export type CharSet = readonly (readonly [number, number])[];

export const MAX_CODE_POINT = 0x10ffff;

export function charSet(ranges: readonly (readonly [number, number])[]): CharSet {
  const sorted = ranges.filter(([lo, hi]) => lo <= hi).map(([lo, hi]) => [lo, hi] as [number, number]);
  sorted.sort((a, b) => a[0] - b[0]);
  const out: [number, number][] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && r[0] <= last[1] + 1) last[1] = Math.max(last[1], r[1]);
    else out.push([r[0], r[1]]);
  }
  return out;
}

export function union(...sets: CharSet[]): CharSet {
  return charSet(sets.flat());
}

export function complement(set: CharSet): CharSet {
  const out: [number, number][] = [];
  let next = 0;
  for (const [lo, hi] of set) {
    if (lo > next) out.push([next, lo - 1]);
    next = hi + 1;
  }
  if (next <= MAX_CODE_POINT) out.push([next, MAX_CODE_POINT]);
  return out;
}

export function subtract(a: CharSet, b: CharSet): CharSet {
  return intersect(a, complement(b));
}

export function intersect(a: CharSet, b: CharSet): CharSet {
  const out: [number, number][] = [];
  for (const [alo, ahi] of a) {
    for (const [blo, bhi] of b) {
      const lo = Math.max(alo, blo);
      const hi = Math.min(ahi, bhi);
      if (lo <= hi) out.push([lo, hi]);
    }
  }
  return charSet(out);
}

export function isEmpty(set: CharSet): boolean {
  return set.length === 0;
}

function escapeCodePoint(cp: number): string {
  if (cp <= 0xffff) return `\\u${cp.toString(16).padStart(4, "0")}`;
  return `\\U${cp.toString(16).padStart(8, "0")}`;
}

/** An EBNF string literal matching exactly `text`. */
export function lit(text: string): string {
  let out = '"';
  for (const ch of text) {
    const cp = ch.codePointAt(0) ?? 0;
    if (ch === '"' || ch === "\\") out += `\\${ch}`;
    else if (cp >= 0x20 && cp < 0x7f) out += ch;
    else out += escapeCodePoint(cp);
  }
  return `${out}"`;
}

function classChar(cp: number): string {
  const ch = String.fromCodePoint(cp);
  if ("\\]-^[\"".includes(ch)) return `\\${ch}`;
  if (cp >= 0x20 && cp < 0x7f) return ch;
  return escapeCodePoint(cp);
}

function asciiClassBody(set: CharSet): string {
  let body = "";
  for (const [lo, hi] of set) {
    if (hi > 0x7f) throw new Error(`character class member U+${hi.toString(16)} is not ASCII; xgrammar mis-parses non-ASCII class ranges, list such characters as literals`);
    body += lo === hi ? classChar(lo) : `${classChar(lo)}-${classChar(hi)}`;
  }
  return body;
}

/** A character class `[...]` over ASCII code points. */
export function cls(set: CharSet): string {
  if (set.length === 0) throw new Error("cls: empty character set (a caller should have refused this schema)");
  return `[${asciiClassBody(set)}]`;
}

/** A negated class `[^...]` of ASCII code points: every other character, non-ASCII included. */
export function negCls(asciiSet: CharSet): string {
  return `[^${asciiClassBody(asciiSet)}]`;
}

export function alt(parts: readonly string[]): string {
  if (parts.length === 0) throw new Error("alt: no alternatives (a caller should have refused this schema)");
  return parts.length === 1 ? parts[0] : `(${parts.join(" | ")})`;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
/** What a JSON string may hold unescaped: everything from U+0020 except `"`, `\` and surrogates. */
export const RAW_JSON_CHARS: CharSet = charSet([
  [0x20, QUOTE - 1],
  [QUOTE + 1, BACKSLASH - 1],
  [BACKSLASH + 1, 0xd7ff],
  [0xe000, MAX_CODE_POINT],
]);
const SHORT_ESCAPES = new Map<number, string>([
  [0x08, "b"],
  [0x09, "t"],
  [0x0a, "n"],
  [0x0c, "f"],
  [0x0d, "r"],
  [QUOTE, '"'],
  [BACKSLASH, "\\"],
]);
const RAW_COMPLEMENT_ASCII: CharSet = [
  [0x00, 0x1f],
  [QUOTE, QUOTE],
  [BACKSLASH, BACKSLASH],
];

const ASCII: CharSet = [[0, 0x7f]];
const NON_ASCII: CharSet = intersect(RAW_JSON_CHARS, [[0x80, MAX_CODE_POINT]]);
/** Non-ASCII characters a class may list one by one; larger partial sets are narrowed to ASCII. */
export const MAX_LISTED_NON_ASCII = 128;

function size(set: CharSet): number {
  return set.reduce((n, [lo, hi]) => n + hi - lo + 1, 0);
}

function sameSet(a: CharSet, b: CharSet): boolean {
  return a.length === b.length && a.every(([lo, hi], i) => lo === b[i][0] && hi === b[i][1]);
}

/**
 * Alternatives that write one character of `set` inside a JSON string: the character itself where
 * JSON allows it raw, else its escape. Every alternative decodes to exactly one code point.
 *
 * xgrammar 0.1.27 (WASM) matches non-ASCII class ranges wrongly (it truncates code points to a
 * byte), so non-ASCII characters appear only as "all of them" (a negated ASCII class) or listed
 * one by one; a set holding a large part of non-ASCII is narrowed to its ASCII and listed part.
 */
export function jsonCharAlternatives(set: CharSet): string[] {
  const parts: string[] = [];
  const raw = intersect(set, RAW_JSON_CHARS);
  const asciiRaw = intersect(raw, ASCII);
  const nonAscii = intersect(raw, NON_ASCII);
  if (sameSet(nonAscii, NON_ASCII)) {
    parts.push(negCls(subtract(ASCII, asciiRaw)));
  } else {
    if (asciiRaw.length > 0) parts.push(cls(asciiRaw));
    if (size(nonAscii) <= MAX_LISTED_NON_ASCII) {
      for (const [lo, hi] of nonAscii) for (let cp = lo; cp <= hi; cp++) parts.push(lit(String.fromCodePoint(cp)));
    }
  }
  for (const [lo, hi] of intersect(set, charSet([[0, 0x1f], [QUOTE, QUOTE], [BACKSLASH, BACKSLASH]]))) {
    for (let cp = lo; cp <= hi; cp++) {
      const short = SHORT_ESCAPES.get(cp);
      parts.push(lit(short !== undefined ? `\\${short}` : `\\u${cp.toString(16).padStart(4, "0")}`));
    }
  }
  return parts;
}

/** Rule names an EBNF expression refers to (outside literals and classes). */
function ruleNames(expr: string): string[] {
  const names: string[] = [];
  for (let i = 0; i < expr.length; ) {
    const ch = expr[i];
    if (ch === '"' || ch === "[") {
      const close = ch === '"' ? '"' : "]";
      i++;
      while (i < expr.length && expr[i] !== close) i += expr[i] === "\\" ? 2 : 1;
      i++;
    } else if (/[A-Za-z_]/.test(ch)) {
      const start = i;
      while (i < expr.length && /[A-Za-z0-9_]/.test(expr[i])) i++;
      names.push(expr.slice(start, i));
    } else i++;
  }
  return names;
}

/** Rules of one grammar: names are unique, identical bodies share one rule. */
export class RuleSet {
  private readonly bodies = new Map<string, string>();
  private readonly byBody = new Map<string, string>();
  private readonly taken = new Set<string>(["root"]);
  private readonly memos = new Map<string, string>();

  /** The expression built once per grammar under `key` (shared rules: whitespace, any value, formats). */
  memo(key: string, build: () => string): string {
    let made = this.memos.get(key);
    if (made === undefined) {
      made = build();
      this.memos.set(key, made);
    }
    return made;
  }

  /** A fresh rule name for a rule defined later (recursion through $ref). */
  reserve(hint: string): string {
    const cleaned = hint.replace(/[^A-Za-z0-9_]/g, "_").replace(/^[^A-Za-z]/, "r$&").slice(0, 40);
    const base = cleaned === "" ? "r" : cleaned;
    let name = base;
    for (let i = 1; this.taken.has(name); i++) name = `${base}_${i}`;
    this.taken.add(name);
    return name;
  }

  define(name: string, body: string): string {
    this.bodies.set(name, body);
    if (!this.byBody.has(body)) this.byBody.set(body, name);
    return name;
  }

  /** The name of a rule with this body, creating it unless an identical one exists. */
  rule(hint: string, body: string): string {
    return this.byBody.get(body) ?? this.define(this.reserve(hint), body);
  }

  get size(): number {
    return this.bodies.size;
  }

  /** The grammar text with `root` as its start, leaving out rules it never reaches. */
  toString(root: string): string {
    const reached = new Set<string>();
    const queue = [...ruleNames(root)];
    while (queue.length > 0) {
      const name = queue.pop() as string;
      const body = this.bodies.get(name);
      if (body === undefined || reached.has(name)) continue;
      reached.add(name);
      queue.push(...ruleNames(body));
    }
    const lines = [`root ::= ${root}`];
    for (const [name, body] of this.bodies) if (reached.has(name)) lines.push(`${name} ::= ${body}`);
    return `${lines.join("\n")}\n`;
  }
}

function jsonEscape(rules: RuleSet): string {
  return rules.memo("json-escape", () =>
    rules.rule("json_escape", '["\\\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F]'),
  );
}

/**
 * The shared rule that ends a free JSON string: any characters (raw or escaped), then the closing
 * quote. A string value is `"\"" rest`.
 */
export function jsonStringRest(rules: RuleSet): string {
  return rules.memo("json-string-rest", () => {
    const esc = jsonEscape(rules);
    const rest = rules.reserve("json_string_rest");
    rules.define(rest, `"\\"" | ${negCls(RAW_COMPLEMENT_ASCII)} ${rest} | "\\\\" ${esc} ${rest}`);
    return rest;
  });
}

/**
 * Alternatives "one character then `next`", raw or escaped: the body of a right-recursive string
 * rule. Kept as top-level alternatives of the rule (not a shared char rule), which is the shape
 * xgrammar precomputes well; a char rule referenced from each state made masks ~50x slower.
 */
export function anyCharThen(rules: RuleSet, next: string, oneCodePoint = false): string {
  const esc = oneCodePoint
    ? rules.memo("json-escape-one-code-point", () =>
        rules.rule(
          "json_escape_bmp",
          '["\\\\/bfnrt] | "u" [0-9a-cA-CeEfF] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] | "u" [dD] [0-7] [0-9a-fA-F] [0-9a-fA-F]',
        ),
      )
    : jsonEscape(rules);
  return `${negCls(RAW_COMPLEMENT_ASCII)} ${next} | "\\\\" ${esc} ${next}`;
}
