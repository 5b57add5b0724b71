// EBNF for JSON numbers and integers inside numeric bounds, exact on the values JSON.parse yields.
// It does not read schemas: schema-to-ebnf.ts turns minimum/maximum/exclusive* into Bounds.
//
// To keep bounds exact after parsing into doubles, generated numbers carry at most 15 significant
// digits (integer part up to 15 digits; fractions up to 6 digits and only while the total stays
// within 15), and bounds with longer decimal forms are rounded inward first.

export interface Bound {
  value: number;
  exclusive: boolean;
}

/** Largest magnitude of a bounded number's integer part, and of any integer. */
export const MAX_INTEGER = 999_999_999_999_999;
const MAX_DIGITS = 15;
const MAX_FRACTION_DIGITS = 6;
/** Below this, an integer part plus 6 fraction digits stays within 15 significant digits. */
const FRACTION_SAFE_LIMIT = 999_999_999;

const DIGIT = "[0-9]";

function digits(n: number): string {
  return n.toFixed(0);
}

function anyDigits(count: number): string[] {
  return Array.from({ length: count }, () => DIGIT);
}

function seq(parts: readonly string[]): string {
  const kept = parts.filter((p) => p !== "" && p !== '""');
  return kept.length === 0 ? '""' : kept.join(" ");
}

function group(alts: readonly string[]): string {
  return alts.length === 1 ? alts[0] : `(${alts.join(" | ")})`;
}

function digitClass(lo: number, hi: number): string {
  return lo === hi ? `"${lo}"` : `[${lo}-${hi}]`;
}

/** Digit strings of one length between a and b inclusive (a <= b, same length). */
function sameLength(a: string, b: string): string[] {
  if (a === b) return [`"${a}"`];
  let i = 0;
  while (a[i] === b[i]) i++;
  const prefix = a.slice(0, i);
  const head = prefix === "" ? [] : [`"${prefix}"`];
  const restLength = a.length - i - 1;
  const da = Number(a[i]);
  const db = Number(b[i]);
  const aRest = a.slice(i + 1);
  const bRest = b.slice(i + 1);
  const aLow = /^0*$/.test(aRest);
  const bHigh = /^9*$/.test(bRest);
  const out: string[] = [];
  const midLo = aLow ? da : da + 1;
  const midHi = bHigh ? db : db - 1;
  if (!aLow) out.push(seq([...head, `"${da}"`, group(atLeast(aRest))]));
  if (midLo <= midHi) out.push(seq([...head, digitClass(midLo, midHi), ...anyDigits(restLength)]));
  if (!bHigh) out.push(seq([...head, `"${db}"`, group(atMost(bRest))]));
  return out;
}

/** Digit strings of s's length that are >= s. */
function atLeast(s: string): string[] {
  if (/^0*$/.test(s)) return [seq(anyDigits(s.length))];
  const d = Number(s[0]);
  const out = [seq([`"${d}"`, group(atLeast(s.slice(1)))])];
  if (d < 9) out.push(seq([digitClass(d + 1, 9), ...anyDigits(s.length - 1)]));
  return out;
}

/** Digit strings of s's length that are <= s. */
function atMost(s: string): string[] {
  if (/^9*$/.test(s)) return [seq(anyDigits(s.length))];
  const d = Number(s[0]);
  const out = [seq([`"${d}"`, group(atMost(s.slice(1)))])];
  if (d > 0) out.push(seq([digitClass(0, d - 1), ...anyDigits(s.length - 1)]));
  return out;
}

/** Alternatives for the decimal integers p..q, 0 <= p <= q <= MAX_INTEGER, without leading zeros. */
export function naturalRange(p: number, q: number): string[] {
  const out: string[] = [];
  const lenP = digits(p).length;
  const lenQ = digits(q).length;
  let fullFrom = 0;
  const flushFull = (upTo: number) => {
    if (fullFrom === 0) return;
    out.push(fullFrom === upTo ? seq(["[1-9]", ...anyDigits(upTo - 1)]) : seq(["[1-9]", `${DIGIT}{${fullFrom - 1},${upTo - 1}}`]));
    fullFrom = 0;
  };
  for (let len = lenP; len <= lenQ; len++) {
    const lo = len === lenP ? digits(p) : `1${"0".repeat(len - 1)}`;
    const hi = len === lenQ ? digits(q) : "9".repeat(len);
    if (lo === `1${"0".repeat(len - 1)}` && hi === "9".repeat(len)) {
      if (fullFrom === 0) fullFrom = len;
      continue;
    }
    flushFull(len - 1);
    out.push(...sameLength(lo, hi));
  }
  flushFull(lenQ);
  return out;
}

/** An integer in [lo, hi] (inclusive, already integral, within ±MAX_INTEGER), never "-0". */
export function integerRange(lo: number, hi: number): string {
  const out: string[] = [];
  if (lo < 0) {
    const magLo = hi < 0 ? -hi : 1;
    out.push(seq(['"-"', group(naturalRange(magLo, -lo))]));
  }
  if (hi >= 0) out.push(...naturalRange(Math.max(lo, 0), hi));
  return group(out);
}

/** Integer bounds → inclusive integer range, or undefined when nothing fits. */
export function integerBounds(min: Bound | undefined, max: Bound | undefined): [number, number] | undefined {
  let lo = -MAX_INTEGER;
  let hi = MAX_INTEGER;
  if (min !== undefined) lo = Math.max(lo, min.exclusive ? Math.floor(min.value) + 1 : Math.ceil(min.value));
  if (max !== undefined) hi = Math.min(hi, max.exclusive ? Math.ceil(max.value) - 1 : Math.floor(max.value));
  return lo <= hi ? [lo, hi] : undefined;
}

/** A non-negative decimal as integer part and fraction digits without trailing zeros. */
interface Dec {
  int: bigint;
  frac: string;
}

interface DecBound {
  dec: Dec;
  inclusive: boolean;
}

function compareDec(a: Dec, b: Dec): number {
  if (a.int !== b.int) return a.int < b.int ? -1 : 1;
  const len = Math.max(a.frac.length, b.frac.length);
  const fa = a.frac.padEnd(len, "0");
  const fb = b.frac.padEnd(len, "0");
  return fa === fb ? 0 : fa < fb ? -1 : 1;
}

const ZERO: Dec = { int: 0n, frac: "" };

/** |v| as an exact decimal, rounded away from or toward zero to 15 significant digits when longer. */
function magnitude(v: number, awayFromZero: boolean): { dec: Dec; rounded: boolean } {
  const [mantissa, expPart] = Math.abs(v).toExponential().split("e");
  let sig = mantissa.replace(".", "");
  let exp = Number(expPart);
  let rounded = false;
  if (sig.length > MAX_DIGITS) {
    rounded = true;
    const kept = BigInt(sig.slice(0, MAX_DIGITS)) + (awayFromZero ? 1n : 0n);
    const keptText = kept.toString();
    if (keptText.length > MAX_DIGITS) exp += 1;
    sig = keptText.slice(0, MAX_DIGITS);
  }
  const pointAt = exp + 1;
  let intText: string;
  let fracText: string;
  if (pointAt <= 0) {
    intText = "0";
    fracText = "0".repeat(-pointAt) + sig;
  } else if (pointAt >= sig.length) {
    intText = sig + "0".repeat(pointAt - sig.length);
    fracText = "";
  } else {
    intText = sig.slice(0, pointAt);
    fracText = sig.slice(pointAt);
  }
  return { dec: { int: BigInt(intText), frac: fracText.replace(/0+$/, "") }, rounded };
}

/**
 * Fraction digit strings F (1..maxLen digits) with lo <= 0.F <= hi (each side optional, strict
 * where not inclusive), lo/hi given as fraction digit strings.
 */
function fractionRange(lo: string | undefined, loInc: boolean, hi: string | undefined, hiInc: boolean, maxLen: number): string | undefined {
  const allZero = (s: string | undefined, from: number) => s === undefined || /^0*$/.test(s.slice(from));
  const digitAt = (s: string | undefined, i: number) => Number(s?.[i] ?? "0");
  const walk = (i: number, tightLo: boolean, tightHi: boolean): string[] => {
    const loOk = !tightLo || (allZero(lo, i) && loInc);
    const hiOk = !tightHi || !allZero(hi, i) || hiInc;
    const out: string[] = [];
    if (i > 0 && loOk && hiOk) out.push('""');
    if (i === maxLen) return out;
    if (!tightLo && !tightHi) {
      out.push(seq([DIGIT, maxLen - i - 1 > 0 ? `${DIGIT}{0,${maxLen - i - 1}}` : ""]));
      return out;
    }
    const dLo = tightLo ? digitAt(lo, i) : 0;
    const dHi = tightHi ? digitAt(hi, i) : 9;
    if (dLo > dHi) return out;
    const branch = (lowDigit: number, highDigit: number, tl: boolean, th: boolean) => {
      const rest = walk(i + 1, tl, th);
      if (rest.length > 0) out.push(seq([digitClass(lowDigit, highDigit), rest.length === 1 && rest[0] === '""' ? "" : group(rest)]));
    };
    if (dLo === dHi) {
      branch(dLo, dLo, tightLo, tightHi);
      return out;
    }
    const midLo = tightLo ? dLo + 1 : dLo;
    const midHi = tightHi ? dHi - 1 : dHi;
    if (tightLo) branch(dLo, dLo, true, false);
    if (midLo <= midHi) branch(midLo, midHi, false, false);
    if (tightHi) branch(dHi, dHi, false, true);
    return out;
  };
  const alts = walk(0, lo !== undefined, hi !== undefined);
  return alts.length === 0 ? undefined : group(alts);
}

function fractionDigitsFor(intPart: bigint): number {
  return Math.max(0, Math.min(MAX_FRACTION_DIGITS, MAX_DIGITS - intPart.toString().length));
}

function withFraction(intExpr: string, frac: string | undefined): string | undefined {
  return frac === undefined ? undefined : seq([intExpr, '"."', frac]);
}

/** Non-negative decimals in [a, b] (inclusive flags apply), written I or I.F. */
function positiveDecimals(a: DecBound, b: DecBound): string[] {
  const order = compareDec(a.dec, b.dec);
  if (order > 0 || (order === 0 && !(a.inclusive && b.inclusive))) return [];
  const out: string[] = [];
  const push = (x: string | undefined) => {
    if (x !== undefined) out.push(x);
  };
  const { int: ai, frac: af } = a.dec;
  const { int: bi, frac: bf } = b.dec;
  if (ai === bi) {
    const intLit = `"${ai}"`;
    if (af === "" && a.inclusive && (bf !== "" || b.inclusive)) out.push(intLit);
    push(withFraction(intLit, fractionRange(af, a.inclusive, bf, b.inclusive, fractionDigitsFor(ai))));
    return out;
  }
  const aLit = `"${ai}"`;
  if (af === "" && a.inclusive) out.push(aLit);
  push(withFraction(aLit, fractionRange(af, a.inclusive, undefined, true, fractionDigitsFor(ai))));
  const m1 = ai + 1n;
  const m2 = bi - 1n;
  if (m1 <= m2) {
    const safeHi = m2 < BigInt(FRACTION_SAFE_LIMIT) ? m2 : BigInt(FRACTION_SAFE_LIMIT);
    if (m1 <= safeHi) {
      const ints = group(naturalRange(Number(m1), Number(safeHi)));
      out.push(seq([ints, `("." ${anyDigits(1).join(" ")} [0-9]{0,${MAX_FRACTION_DIGITS - 1}})?`]));
    }
    const bigLo = m1 > BigInt(FRACTION_SAFE_LIMIT) ? m1 : BigInt(FRACTION_SAFE_LIMIT) + 1n;
    if (bigLo <= m2) out.push(...naturalRange(Number(bigLo), Number(m2)));
  }
  const bLit = `"${bi}"`;
  if (bf !== "" || b.inclusive) out.push(bLit);
  push(withFraction(bLit, fractionRange(undefined, true, bf, b.inclusive, fractionDigitsFor(bi))));
  return out;
}

const CAP: Dec = { int: BigInt(MAX_INTEGER), frac: "" };

/** A signed bound as the magnitude the generated text compares against, rounded inward. */
function toSide(bound: Bound | undefined, side: "min" | "max"): { negative: boolean; at: DecBound } | undefined {
  if (bound === undefined) return undefined;
  const negative = bound.value < 0;
  // Inward means up for a minimum and down for a maximum; for negatives that flips on the magnitude.
  const awayFromZero = side === "min" ? !negative : negative;
  const { dec, rounded } = magnitude(bound.value, awayFromZero);
  return { negative: negative && compareDec(dec, ZERO) !== 0, at: { dec, inclusive: rounded || !bound.exclusive } };
}

function minDec(a: DecBound, b: DecBound): DecBound {
  return compareDec(a.dec, b.dec) <= 0 ? a : b;
}

/** A JSON number with optional bounds; undefined when no number within ±1e15 satisfies them. */
export function numberGrammar(min: Bound | undefined, max: Bound | undefined): string | undefined {
  if (min === undefined && max === undefined) {
    return '"-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9] [0-9]{0,15})? ([eE] [+\\-]? [0-9] [0-9]?)?';
  }
  const lo = toSide(min, "min");
  const hi = toSide(max, "max");
  const capBound: DecBound = { dec: CAP, inclusive: true };
  const zeroExcl: DecBound = { dec: ZERO, inclusive: false };
  const zeroIncl: DecBound = { dec: ZERO, inclusive: true };
  const out: string[] = [];
  // Negative values x in [lo, min(hi, 0)): written "-" y with y = -x.
  if (lo === undefined || lo.negative) {
    const yHi = lo === undefined ? capBound : minDec(lo.at, capBound);
    const yLo = hi === undefined || !hi.negative ? zeroExcl : hi.at;
    const mags = positiveDecimals(yLo, yHi);
    if (mags.length > 0) out.push(`"-" ${group(mags)}`);
  }
  // Non-negative values x in [max(lo, 0), hi].
  if (hi === undefined || !hi.negative) {
    const xLo = lo === undefined || lo.negative ? zeroIncl : lo.at;
    const xHi = hi === undefined ? capBound : minDec(hi.at, capBound);
    out.push(...positiveDecimals(xLo, xHi));
  }
  return out.length === 0 ? undefined : group(out);
}
