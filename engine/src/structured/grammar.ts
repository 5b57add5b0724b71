// Structured output's entry points: a tokenizer's vocabulary prepared for xgrammar, response formats
// compiled (and cached) into grammars, and per-sequence matchers that fill allowed-token masks.
// It does not parse HTTP bodies, sample tokens or decide when to stop; the engine and server do.
import { ValidationError } from "../errors.js";
import { canonical, jsonObjectEbnf, schemaToEbnf } from "./schema-to-ebnf.js";
import { byteLevelAlphabet, forbiddenAfterLead, neverValidUtf8, nextTail, pendingLead, type TokenBytes, tokenBytes } from "./utf8.js";
import { loadXgrammar, type WasmMatcher, type XgCompiledGrammar, type XgGrammar, type XgGrammarCompiler, type Xgrammar, type XgTokenizerInfo } from "./xgrammar.js";

/** How a vocabulary spells bytes: GPT-2 byte-to-unicode, SentencePiece ▁ and <0xNN>, or plain text. */
export type VocabType = "byte_level" | "sentencepiece" | "raw";

export interface GrammarVocabInput {
  /** id → token string as tokenizer.json spells it (model vocab encoding; added tokens as their content). */
  tokens: readonly (string | undefined)[];
  vocabType: VocabType;
  /** Tokens that end a sequence; allowed only where the output is complete. */
  eosIds: readonly number[];
  /** Control tokens that are never part of structured output. */
  specialIds: readonly number[];
  /** Non-special added tokens, whose string is literal text rather than vocab-encoded. */
  addedIds?: readonly number[];
  /** Logit width when the model pads its vocabulary beyond tokens.length; extra ids are never allowed. */
  vocabSize?: number;
}

export interface GrammarVocabOptions {
  /** Compiled grammars kept per vocabulary (least recently used go first). */
  cacheSize?: number;
  /**
   * Most whitespace characters allowed between JSON tokens. Default 0: compact JSON, which keeps
   * masks cheap (any whitespace makes them several times slower on 128k vocabularies).
   */
  maxWhitespace?: number;
}

export type ResponseFormat =
  | { type: "json_object" }
  | { type: "json_schema"; schema: unknown; strict?: boolean };

export interface CompileOptions {
  /** Where the schema sits in the request, for error messages. */
  path?: string;
  /** The request field errors name (OpenAI's `param`). */
  param?: string;
}

const VOCAB_TYPES: Record<VocabType, string> = { byte_level: "byte_level", sentencepiece: "byte_fallback", raw: "raw" };

/**
 * The vocabulary as xgrammar reads it, "" marking a token structured output never allows: special
 * tokens, and tokens that can never be valid UTF-8. Literal added tokens are respelled in the
 * vocabulary's byte encoding (or refused when it cannot spell them). Padding ids up to the logit
 * width are spelled "" too (xgrammar's own padding path corrupted its heap in our tests).
 */
function encodeVocab(input: GrammarVocabInput, bytes: TokenBytes, vocabSize: number): string[] {
  const never = new Set(input.specialIds);
  const literal = new Set(input.addedIds ?? []);
  const alphabet = input.vocabType === "byte_level" ? byteLevelAlphabet() : [];
  const padded = [...input.tokens, ...new Array<undefined>(vocabSize - input.tokens.length)];
  return Array.from(padded, (token, id) => {
    if (token === undefined || never.has(id)) return "";
    if (neverValidUtf8(bytes.bytes.subarray(bytes.offsets[id], bytes.offsets[id + 1]))) return "";
    if (!literal.has(id)) return token;
    if (input.vocabType === "byte_level") return Array.from(bytes.bytes.subarray(bytes.offsets[id], bytes.offsets[id + 1]), (b) => alphabet[b]).join("");
    if (input.vocabType === "sentencepiece" && (token.includes("\u2581") || /^<0x[0-9A-F]{2}>$/.test(token))) return "";
    return token;
  });
}

/** Masks of compiled grammars and matchers live in WASM memory; free them when JS lets go. */
const wasmObjects = new FinalizationRegistry<{ delete(): void }>((handle) => handle.delete());

/** One tokenizer's vocabulary prepared for grammar compilation; build once per tokenizer. */
export class GrammarVocab {
  /** Number of token ids a mask covers (the logit width). */
  readonly vocabSize: number;
  /** Uint32 words per mask row: ceil(vocabSize / 32). */
  readonly maskWords: number;
  readonly eosIds: readonly number[];
  readonly maxWhitespace: number;
  /** What each token spells, for UTF-8 checks across token boundaries. */
  readonly bytes: TokenBytes;
  /** Per UTF-8 lead byte with a narrow next-byte range: the tokens it forbids next. */
  readonly forbiddenAfter: ReadonlyMap<number, Uint32Array>;
  /** Tokens no grammar ever allows (special, padding, invalid UTF-8); EOS is not among them. */
  readonly never: Uint32Array;
  private readonly cache = new Map<string, Promise<CompiledGrammar>>();
  private readonly cacheSize: number;

  private constructor(
    readonly xg: Xgrammar,
    private readonly info: XgTokenizerInfo,
    readonly compiler: XgGrammarCompiler,
    input: GrammarVocabInput,
    options: GrammarVocabOptions,
    bytes: TokenBytes,
    encoded: readonly string[],
  ) {
    this.vocabSize = info.getVocabSize();
    this.maskWords = Math.ceil(this.vocabSize / 32);
    this.bytes = bytes;
    this.forbiddenAfter = forbiddenAfterLead(bytes, this.maskWords);
    this.never = new Uint32Array(this.maskWords);
    const eos = new Set(input.eosIds);
    encoded.forEach((token, id) => {
      if (token === "" && !eos.has(id)) this.never[id >>> 5] |= 1 << (id & 31);
    });
    this.eosIds = [...input.eosIds];
    this.cacheSize = options.cacheSize ?? 64;
    this.maxWhitespace = options.maxWhitespace ?? 0;
  }

  static async create(input: GrammarVocabInput, options: GrammarVocabOptions = {}): Promise<GrammarVocab> {
    const vocabSize = input.vocabSize ?? input.tokens.length;
    if (vocabSize < input.tokens.length) {
      throw new Error(`GrammarVocab: vocabSize ${vocabSize} is below the ${input.tokens.length} tokens given (pass the logit width)`);
    }
    if (input.eosIds.length === 0) throw new Error("GrammarVocab: eosIds is empty (structured output needs a token that ends the output)");
    const badEos = input.eosIds.find((id) => !Number.isInteger(id) || id < 0 || id >= vocabSize);
    if (badEos !== undefined) throw new Error(`GrammarVocab: eos id ${badEos} is outside the vocabulary 0..${vocabSize - 1}`);
    const xg = await loadXgrammar();
    const bytes = tokenBytes(input.tokens, input.vocabType, new Set(input.addedIds ?? []));
    const encoded = encodeVocab(input, bytes, vocabSize);
    const info = await xg.TokenizerInfo.createTokenizerInfo(encoded, VOCAB_TYPES[input.vocabType], false, vocabSize, [...input.eosIds]);
    const compiler = await xg.GrammarCompiler.createGrammarCompiler(info, false);
    return new GrammarVocab(xg, info, compiler, input, options, bytes, encoded);
  }

  /** A zeroed mask buffer of `rows` rows. */
  allocateMask(rows = 1): Uint32Array {
    return new Uint32Array(rows * this.maskWords);
  }

  /** The cached compilation for `key`, building it with `build` on a miss. */
  cached(key: string, build: () => Promise<CompiledGrammar>): Promise<CompiledGrammar> {
    const hit = this.cache.get(key);
    if (hit !== undefined) {
      this.cache.delete(key);
      this.cache.set(key, hit);
      return hit;
    }
    const made = build();
    this.cache.set(key, made);
    made.catch(() => this.cache.delete(key));
    while (this.cache.size > this.cacheSize) {
      const oldest = this.cache.keys().next().value as string;
      this.cache.delete(oldest);
    }
    return made;
  }

  get cachedGrammars(): number {
    return this.cache.size;
  }

  dispose(): void {
    this.cache.clear();
    this.compiler.dispose();
    this.info.dispose();
  }
}

/** A grammar compiled against one vocabulary; shared by every request with the same format. */
export class CompiledGrammar {
  constructor(
    readonly vocab: GrammarVocab,
    /** The EBNF it was compiled from (for debugging and tests). */
    readonly ebnf: string,
    private readonly compiled: XgCompiledGrammar,
  ) {
    wasmObjects.register(this, { delete: () => compiled.dispose() });
  }

  /** A fresh matcher at the start of the output; one per sequence. */
  matcher(): GrammarMatcher {
    return new GrammarMatcher(this.vocab, new this.vocab.xg.binding.GrammarMatcher(this.compiled.handle, undefined, false, -1), this);
  }
}

/**
 * The grammar state of one sequence. Per step: fillMask → sample under the mask → accept. Masks are
 * Uint32 words with bit (id % 32) of word (id >> 5) set when token id may come next. EOS is allowed
 * only where the output is a complete value; a sequence cut by max_tokens before isComplete() ends
 * mid-value and reports finish_reason "length" (its text need not parse). Speculative drafts:
 * fillMasks() gives the mask at every draft position; accept() refuses a token outside the mask.
 */
export class GrammarMatcher {
  private disposed = false;
  /** Unfinished UTF-8 bytes at the end of the output, and what it was before each accepted token. */
  private tail: number[] = [];
  private readonly tails: number[][] = [];

  constructor(
    private readonly vocab: GrammarVocab,
    private readonly handle: WasmMatcher,
    /** Held so the compiled grammar outlives every matcher built from it. */
    readonly grammar: CompiledGrammar,
  ) {
    wasmObjects.register(this, handle, this);
  }

  private live(): WasmMatcher {
    if (this.disposed) throw new Error("GrammarMatcher used after dispose() (the sequence already finished)");
    return this.handle;
  }

  /** Writes the allowed-token mask for the next token into out[0 .. maskWords). */
  fillMask(out: Uint32Array): void {
    const words = this.vocab.maskWords;
    if (out.length < words) throw new Error(`fillMask: buffer has ${out.length} words, the vocabulary needs ${words} (allocate with vocab.allocateMask())`);
    const handle = this.live();
    if (handle.IsTerminated()) {
      out.fill(0, 0, words);
      return;
    }
    const vector = handle.GetNextTokenBitmask(this.vocab.vocabSize);
    try {
      new Int32Array(out.buffer, out.byteOffset, words).set(this.vocab.xg.binding.vecIntToView(vector));
    } finally {
      vector.delete();
    }
    const forbidden = this.forbiddenNow();
    if (forbidden !== undefined) for (let w = 0; w < words; w++) out[w] &= ~forbidden[w];
  }

  /** Tokens the UTF-8 sequence in progress rules out, which xgrammar 0.1.27 would let through. */
  private forbiddenNow(): Uint32Array | undefined {
    const lead = pendingLead(this.tail);
    return lead === undefined ? undefined : this.vocab.forbiddenAfter.get(lead);
  }

  /** Advances past `tokenId`; false (and no change) when the grammar does not allow it here. */
  accept(tokenId: number): boolean {
    const handle = this.live();
    if (!Number.isInteger(tokenId) || tokenId < 0 || tokenId >= this.vocab.vocabSize) return false;
    // After EOS nothing is allowed; asked anyway (a draft that runs on past EOS), xgrammar would log a warning.
    if (handle.IsTerminated()) return false;
    if (((this.vocab.never[tokenId >>> 5] >>> (tokenId & 31)) & 1) === 1) return false;
    const forbidden = this.forbiddenNow();
    if (forbidden !== undefined && ((forbidden[tokenId >>> 5] >>> (tokenId & 31)) & 1) === 1) return false;
    if (!handle.AcceptToken(tokenId, false)) return false;
    this.tails.push(this.tail);
    const { bytes, offsets } = this.vocab.bytes;
    if (tokenId + 1 < offsets.length) this.tail = nextTail(this.tail, bytes.subarray(offsets[tokenId], offsets[tokenId + 1]));
    return true;
  }

  /** Undoes the last `count` accepted tokens (rejected speculative drafts). */
  rollback(count: number): void {
    const handle = this.live();
    if (!Number.isInteger(count) || count < 0 || count > this.tails.length) {
      throw new Error(`rollback(${count}): only ${this.tails.length} tokens were accepted`);
    }
    if (count === 0) return;
    handle.Rollback(count);
    this.tail = this.tails[this.tails.length - count];
    this.tails.length -= count;
  }

  /** True when the output so far is a complete value, so an EOS token is allowed now (or was taken). */
  isComplete(): boolean {
    const handle = this.live();
    if (handle.IsTerminated()) return true;
    if (!handle.AcceptToken(this.vocab.eosIds[0], false)) return false;
    handle.Rollback(1);
    return true;
  }

  /** True once an EOS token was accepted; nothing more is allowed. */
  isTerminated(): boolean {
    return this.live().IsTerminated();
  }

  /**
   * Masks for verifying speculative drafts: row i of `out` (maskWords words each) is the mask before
   * draft[i], for i = 0..k, where k is how many leading draft tokens the grammar accepts (returned).
   * The matcher's state is unchanged afterwards.
   */
  fillMasks(draft: readonly number[], out: Uint32Array): number {
    const words = this.vocab.maskWords;
    if (out.length < (draft.length + 1) * words) {
      throw new Error(`fillMasks: buffer has ${out.length} words, ${draft.length} drafts need ${(draft.length + 1) * words}`);
    }
    let k = 0;
    this.fillMask(out.subarray(0, words));
    while (k < draft.length && this.accept(draft[k])) {
      k++;
      this.fillMask(out.subarray(k * words, (k + 1) * words));
    }
    this.rollback(k);
    return k;
  }

  /** Frees the WASM state; call when the sequence finishes. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    wasmObjects.unregister(this);
    this.handle.delete();
  }
}

const DEFAULT_PATH = "response_format.json_schema.schema";

/** EBNF → xgrammar's compiled grammar for this vocabulary (the parsed grammar is freed after). */
async function compileEbnf(vocab: GrammarVocab, ebnf: string, what: string): Promise<XgCompiledGrammar> {
  let grammar: XgGrammar | undefined;
  try {
    grammar = await vocab.xg.Grammar.fromEBNF(ebnf);
    return await vocab.compiler.compileGrammar(grammar);
  } catch (err) {
    throw new Error(`xgrammar refused the grammar built for ${what.slice(0, 200)}: ${String((err as Error).message ?? err)} (a bug in schema-to-ebnf)`);
  } finally {
    grammar?.dispose();
  }
}

/**
 * The grammar for a response format, compiled once per distinct format and vocabulary (LRU cache).
 * Rejects with ValidationError naming any schema keyword the grammar cannot enforce.
 */
export async function compileResponseFormat(vocab: GrammarVocab, format: ResponseFormat, options: CompileOptions = {}): Promise<CompiledGrammar> {
  const param = options.param ?? "response_format";
  let key: string;
  let makeEbnf: () => string;
  if (format.type === "json_object") {
    key = "json_object";
    makeEbnf = () => jsonObjectEbnf(vocab.maxWhitespace);
  } else if (format.type === "json_schema") {
    const path = options.path ?? DEFAULT_PATH;
    if (format.schema === undefined) throw new ValidationError(`${path}: missing; json_schema needs a schema`, param);
    key = `json_schema:${JSON.stringify(canonical(format.schema))}`;
    makeEbnf = () => schemaToEbnf(format.schema, { path, param, maxWhitespace: vocab.maxWhitespace });
  } else {
    const type = (format as { type?: unknown }).type;
    throw new ValidationError(`response_format.type ${JSON.stringify(type)} has no grammar (use "json_object" or "json_schema")`, param);
  }
  return vocab.cached(key, async () => {
    const ebnf = makeEbnf();
    return new CompiledGrammar(vocab, ebnf, await compileEbnf(vocab, ebnf, key));
  });
}

interface TokenizerJson {
  model?: { vocab?: Record<string, number> | [string, number][] };
  added_tokens?: { id: number; content: string; special?: boolean }[];
  decoder?: unknown;
}

function decoderTypes(decoder: unknown): string[] {
  if (typeof decoder !== "object" || decoder === null) return [];
  const d = decoder as { type?: string; decoders?: unknown[]; pattern?: { String?: string } };
  const own = d.type === "Replace" && d.pattern?.String === "\u2581" ? ["Metaspace"] : d.type !== undefined ? [d.type] : [];
  return [...own, ...(d.decoders ?? []).flatMap(decoderTypes)];
}

/** GrammarVocab input from a Hugging Face tokenizer.json; eos ids come from the model's generation config. */
export function vocabInputFromTokenizerJson(tokenizerJson: unknown, eosIds: readonly number[], vocabSize?: number): GrammarVocabInput {
  const json = tokenizerJson as TokenizerJson;
  const tokens: (string | undefined)[] = [];
  const vocab = json.model?.vocab;
  if (Array.isArray(vocab)) vocab.forEach(([piece], id) => (tokens[id] = piece));
  else if (vocab !== undefined) for (const [piece, id] of Object.entries(vocab)) tokens[id] = piece;
  else throw new Error("tokenizer.json has no model.vocab (is it a Hugging Face tokenizers file?)");
  const specialIds: number[] = [];
  const addedIds: number[] = [];
  for (const added of json.added_tokens ?? []) {
    tokens[added.id] = added.content;
    (added.special === true ? specialIds : addedIds).push(added.id);
  }
  const types = decoderTypes(json.decoder);
  const vocabType: VocabType = types.includes("ByteLevel")
    ? "byte_level"
    : types.includes("ByteFallback") || types.includes("Metaspace")
      ? "sentencepiece"
      : "raw";
  return { tokens, vocabType, eosIds, specialIds, addedIds, vocabSize };
}
