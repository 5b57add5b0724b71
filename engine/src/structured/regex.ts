// JSON Schema `pattern` → EBNF for the JSON string whose decoded text matches it (ECMAScript regex,
// "u" flag, search semantics as ajv applies it). It refuses features it cannot express; it does not
// combine patterns with lengths or formats (schema-to-ebnf.ts refuses those mixes).
import {
  alt,
  charSet,
  complement,
  type CharSet,
  anyCharThen,
  jsonCharAlternatives,
  jsonStringRest,
  MAX_LISTED_NON_ASCII,
  type RuleSet,
  union,
} from "./ebnf.js";

/** A pattern we cannot constrain; the caller turns it into a ValidationError with the schema path. */
export class PatternError extends Error {}

/** Largest count a quantifier may name: each unit compiles to grammar states for the whole vocabulary. */
export const MAX_PATTERN_REPEAT = 64;

type Node =
  | { kind: "chars"; set: CharSet }
  | { kind: "seq"; items: Node[] }
  | { kind: "alt"; alts: Node[] }
  | { kind: "repeat"; node: Node; min: number; max: number }
  | { kind: "anchor"; which: "start" | "end" };

const DIGITS = charSet([[0x30, 0x39]]);
const WORD = charSet([[0x30, 0x39], [0x41, 0x5a], [0x5f, 0x5f], [0x61, 0x7a]]);
const SPACE = charSet([
  [0x09, 0x0d], [0x20, 0x20], [0xa0, 0xa0], [0x1680, 0x1680], [0x2000, 0x200a],
  [0x2028, 0x2029], [0x202f, 0x202f], [0x205f, 0x205f], [0x3000, 0x3000], [0xfeff, 0xfeff],
]);
const DOT = complement(charSet([[0x0a, 0x0a], [0x0d, 0x0d], [0x2028, 0x2029]]));

const cp = (ch: string) => ch.codePointAt(0) ?? 0;

class Parser {
  private readonly chars: string[];
  private pos = 0;

  constructor(private readonly source: string) {
    this.chars = [...source];
  }

  parse(): Node {
    const node = this.parseAlt();
    if (this.pos < this.chars.length) this.fail(`unexpected "${this.chars[this.pos]}"`);
    return node;
  }

  private fail(what: string): never {
    throw new PatternError(`${what} at offset ${this.pos} of pattern ${JSON.stringify(this.source)}`);
  }

  private unsupported(what: string): never {
    throw new PatternError(
      `${what} is not supported in pattern ${JSON.stringify(this.source)} (supported: literals, classes, . \\d \\w \\s, groups, |, * + ? {m,n}, ^ and $ at the ends)`,
    );
  }

  private peek(offset = 0): string | undefined {
    return this.chars[this.pos + offset];
  }

  private next(): string {
    const ch = this.chars[this.pos++];
    if (ch === undefined) this.fail("unexpected end");
    return ch;
  }

  private parseAlt(): Node {
    const alts = [this.parseSeq()];
    while (this.peek() === "|") {
      this.pos++;
      alts.push(this.parseSeq());
    }
    return alts.length === 1 ? alts[0] : { kind: "alt", alts };
  }

  private parseSeq(): Node {
    const items: Node[] = [];
    while (this.pos < this.chars.length && this.peek() !== "|" && this.peek() !== ")") {
      items.push(this.parseQuantifier(this.parseAtom()));
    }
    return { kind: "seq", items };
  }

  private parseAtom(): Node {
    const ch = this.next();
    switch (ch) {
      case "(": {
        if (this.peek() === "?") {
          const kind = this.peek(1);
          if (kind === ":") this.pos += 2;
          else if (kind === "<" && this.peek(2) !== "=" && this.peek(2) !== "!") {
            while (this.peek() !== ">") this.next();
            this.pos++;
          } else this.unsupported("lookaround (?=, (?!, (?<=, (?<!");
        }
        const inner = this.parseAlt();
        if (this.next() !== ")") this.fail('expected ")"');
        return inner;
      }
      case "[":
        return { kind: "chars", set: this.parseClass() };
      case ".":
        return { kind: "chars", set: DOT };
      case "^":
        return { kind: "anchor", which: "start" };
      case "$":
        return { kind: "anchor", which: "end" };
      case "\\": {
        const atom = this.parseEscape(false);
        return { kind: "chars", set: atom };
      }
      default:
        return { kind: "chars", set: charSet([[cp(ch), cp(ch)]]) };
    }
  }

  private parseQuantifier(atom: Node): Node {
    const ch = this.peek();
    let min: number;
    let max: number;
    if (ch === "*") [min, max] = [0, Infinity];
    else if (ch === "+") [min, max] = [1, Infinity];
    else if (ch === "?") [min, max] = [0, 1];
    else if (ch === "{") {
      const m = /^\{(\d+)(,(\d*))?\}/.exec(this.chars.slice(this.pos).join(""));
      if (m === null) return atom;
      min = Number(m[1]);
      max = m[2] === undefined ? min : m[3] === "" ? Infinity : Number(m[3]);
      this.pos += [...m[0]].length - 1;
    } else return atom;
    this.pos++;
    if (this.peek() === "?") this.pos++;
    if (atom.kind === "anchor") this.unsupported("a quantifier on ^ or $");
    const largest = max === Infinity ? min : max;
    if (largest > MAX_PATTERN_REPEAT) {
      this.unsupported(`quantifier count ${largest} (at most ${MAX_PATTERN_REPEAT})`);
    }
    return { kind: "repeat", node: atom, min, max };
  }

  private parseClass(): CharSet {
    const negate = this.peek() === "^";
    if (negate) this.pos++;
    const parts: CharSet[] = [];
    while (this.peek() !== "]") {
      const first = this.parseClassAtom();
      if (this.peek() === "-" && this.peek(1) !== "]" && this.peek(1) !== undefined && typeof first === "number") {
        this.pos++;
        const last = this.parseClassAtom();
        if (typeof last !== "number") this.fail("class escape as a range end");
        parts.push(charSet([[first, last]]));
      } else parts.push(typeof first === "number" ? charSet([[first, first]]) : first);
    }
    this.pos++;
    const set = union(...parts);
    return negate ? complement(set) : set;
  }

  /** One class member: a code point, or a set for \d \w \s and their negations. */
  private parseClassAtom(): number | CharSet {
    const ch = this.next();
    if (ch !== "\\") return cp(ch);
    if (this.peek() === "b") {
      this.pos++;
      return 0x08;
    }
    if (this.peek() === "-") {
      this.pos++;
      return 0x2d;
    }
    const set = this.parseEscape(true);
    return set.length === 1 && set[0][0] === set[0][1] ? set[0][0] : set;
  }

  private parseEscape(inClass: boolean): CharSet {
    const ch = this.next();
    const one = (code: number) => charSet([[code, code]]);
    switch (ch) {
      case "d":
        return DIGITS;
      case "D":
        return complement(DIGITS);
      case "w":
        return WORD;
      case "W":
        return complement(WORD);
      case "s":
        return SPACE;
      case "S":
        return complement(SPACE);
      case "t":
        return one(0x09);
      case "n":
        return one(0x0a);
      case "v":
        return one(0x0b);
      case "f":
        return one(0x0c);
      case "r":
        return one(0x0d);
      case "0":
        return one(0);
      case "c":
        return one(cp(this.next()) % 32);
      case "x":
        return one(this.hex(2));
      case "u":
        return one(this.unicodeEscape());
      case "b":
      case "B":
        return this.unsupported(inClass ? "\\B" : "word boundary \\b / \\B");
      case "p":
      case "P":
        return this.unsupported("Unicode property escape \\p{...}");
      case "k":
        return this.unsupported("named backreference \\k<...>");
      default:
        if (/[1-9]/.test(ch)) this.unsupported(`backreference \\${ch}`);
        return one(cp(ch));
    }
  }

  private hex(count: number): number {
    let text = "";
    for (let i = 0; i < count; i++) text += this.next();
    if (!/^[0-9a-fA-F]+$/.test(text)) this.fail(`bad hex escape "${text}"`);
    return parseInt(text, 16);
  }

  private unicodeEscape(): number {
    if (this.peek() === "{") {
      this.pos++;
      let text = "";
      while (this.peek() !== "}") text += this.next();
      this.pos++;
      return parseInt(text, 16);
    }
    const unit = this.hex(4);
    if (unit >= 0xd800 && unit <= 0xdbff && this.peek() === "\\" && this.peek(1) === "u") {
      const save = this.pos;
      this.pos += 2;
      const low = /^[0-9a-fA-F]{4}$/.test(this.chars.slice(this.pos, this.pos + 4).join("")) ? this.hex(4) : -1;
      if (low >= 0xdc00 && low <= 0xdfff) return 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
      this.pos = save;
    }
    return unit;
  }
}

function nullable(node: Node): boolean {
  switch (node.kind) {
    case "chars":
      return false;
    case "seq":
      return node.items.every(nullable);
    case "alt":
      return node.alts.some(nullable);
    case "repeat":
      return node.min === 0 || nullable(node.node);
    case "anchor":
      return true;
  }
}

const SIMPLE = /^(?:[A-Za-z_][A-Za-z0-9_]*|"(?:[^"\\]|\\.)*")$/;

class Compiler {
  constructor(
    private readonly rules: RuleSet,
    private readonly hint: string,
  ) {}

  /** A rule name (or short literal) for `expr`, so it can be referenced from several places. */
  private share(expr: string): string {
    return SIMPLE.test(expr) ? expr : this.rules.rule(this.hint, expr);
  }

  /** `node` then `cont`; undefined when node can match nothing writable in a JSON string. */
  compile(node: Node, cont: string): string | undefined {
    switch (node.kind) {
      case "chars": {
        const alts = jsonCharAlternatives(node.set);
        if (alts.length <= 1) return alts.length === 0 ? undefined : `${alts[0]} ${cont}`;
        const shared = this.share(cont);
        return this.rules.rule(this.hint, alts.map((a) => `${a} ${shared}`).join(" | "));
      }
      case "seq": {
        let tail: string | undefined = cont;
        for (let i = node.items.length - 1; i >= 0 && tail !== undefined; i--) {
          tail = this.compile(node.items[i], tail);
          if (tail !== undefined && tail.length > 400) tail = this.share(tail);
        }
        return tail;
      }
      case "alt": {
        const shared = this.share(cont);
        const parts = node.alts.map((a) => this.compile(a, shared)).filter((p): p is string => p !== undefined);
        return parts.length === 0 ? undefined : alt(parts);
      }
      case "repeat":
        return this.repeat(node.node, node.min, node.max, cont);
      case "anchor":
        throw new PatternError(`^ and $ are supported only at the start and end of the pattern (or of a top-level alternative)`);
    }
  }

  private repeat(node: Node, min: number, max: number, cont: string): string | undefined {
    const shared = this.share(cont);
    let tail: string | undefined;
    if (max === Infinity) {
      if (nullable(node)) throw new PatternError("an unbounded quantifier on a group that can match the empty string");
      const loop = this.rules.reserve(`${this.hint}_loop`);
      const once = this.compile(node, loop);
      this.rules.define(loop, once === undefined ? shared : `${once} | ${shared}`);
      tail = loop;
    } else {
      tail = shared;
      for (let k = 1; k <= max - min; k++) {
        const once = this.compile(node, tail);
        if (once === undefined) break;
        tail = this.rules.rule(`${this.hint}_opt`, `${once} | ${shared}`);
      }
    }
    for (let i = 0; i < min && tail !== undefined; i++) {
      tail = this.compile(node, tail);
      if (tail !== undefined && tail.length > 400) tail = this.share(tail);
    }
    return tail;
  }
}

/** Check that `pattern` is a regex we can constrain; throws PatternError naming the problem. */
export function checkPattern(pattern: string): void {
  try {
    new RegExp(pattern, "u");
  } catch (err) {
    throw new PatternError(`invalid regular expression ${JSON.stringify(pattern)}: ${(err as Error).message}`);
  }
  splitAnchors(new Parser(pattern).parse());
}

function splitAnchors(root: Node): { items: Node[]; start: boolean; end: boolean }[] {
  const branches = root.kind === "alt" ? root.alts : [root];
  return branches.map((branch) => {
    const items = branch.kind === "seq" ? [...branch.items] : [branch];
    const start = items[0]?.kind === "anchor" && items[0].which === "start";
    if (start) items.shift();
    const last = items[items.length - 1];
    const end = last?.kind === "anchor" && last.which === "end";
    if (end) items.pop();
    const inner = (n: Node): boolean =>
      n.kind === "anchor" || (n.kind === "seq" && n.items.some(inner)) || (n.kind === "alt" && n.alts.some(inner)) || (n.kind === "repeat" && inner(n.node));
    if (items.some(inner)) {
      throw new PatternError(`^ and $ are supported only at the start and end of the pattern (or of a top-level alternative)`);
    }
    return { items, start, end };
  });
}

/** The rule for a JSON string (quotes included) whose decoded value matches `pattern` somewhere. */
export function patternString(rules: RuleSet, pattern: string, hint: string): string {
  checkPattern(pattern);
  return rules.memo(`pattern:${pattern}`, () => {
    const compiler = new Compiler(rules, hint);
    const rest = jsonStringRest(rules);
    const close = '"\\""';
    const branches: string[] = [];
    for (const { items, start, end } of splitAnchors(new Parser(pattern).parse())) {
      const body = compiler.compile({ kind: "seq", items }, end ? close : rest);
      if (body === undefined) continue;
      if (start) branches.push(body);
      else {
        const lead = rules.reserve(`${hint}_lead`);
        rules.define(lead, `${anyCharThen(rules, lead)} | ${body}`);
        branches.push(lead);
      }
    }
    if (branches.length === 0) {
      throw new PatternError(
        `pattern ${JSON.stringify(pattern)} cannot be generated (classes with more than ${MAX_LISTED_NON_ASCII} non-ASCII characters are narrowed to their ASCII part, which left nothing)`,
      );
    }
    return rules.rule(hint, `"\\"" ${alt(branches)}`);
  });
}
