// GrammarMatcher and GrammarVocab behaviour on a real SentencePiece vocabulary (llama2): masks and
// accept() agree, EOS only where the output is complete, rollback and speculative drafts, disposal,
// the compile cache, padded vocabularies and literal added tokens.
import { beforeAll, describe, expect, it } from "vitest";
import { ValidationError } from "../../../engine/src/errors.js";
import { compileResponseFormat, type CompiledGrammar, GrammarVocab, vocabInputFromTokenizerJson } from "../../../engine/src/structured/grammar.js";
import { decode, isAllowed, type LoadedTokenizer, loadTokenizer, rng, sample, samplerSets } from "./helpers.js";

let t: LoadedTokenizer;
let grammar: CompiledGrammar;
const schema = {
  type: "object",
  properties: { name: { type: "string", maxLength: 6 }, tags: { type: "array", items: { enum: ["a", "b"] }, maxItems: 2 }, ok: { type: "boolean" } },
  required: ["name", "tags", "ok"],
  additionalProperties: false,
};

beforeAll(async () => {
  t = await loadTokenizer("llama2");
  grammar = await compileResponseFormat(t.vocab, { type: "json_schema", schema });
});

function ids(text: string): number[] {
  return t.tokenizer.encode(text, { add_special_tokens: false }).ids;
}

function setBits(mask: Uint32Array, vocabSize: number): number[] {
  const out: number[] = [];
  for (let id = 0; id < vocabSize; id++) if (isAllowed(mask, id)) out.push(id);
  return out;
}

describe("GrammarMatcher", () => {
  it("allows exactly the tokens accept() takes, and never special tokens", () => {
    const matcher = grammar.matcher();
    const mask = t.vocab.allocateMask();
    const random = rng(42);
    const prefix = ids('{"name":"ab","tags":["a"');
    for (let step = 0; step <= prefix.length; step++) {
      matcher.fillMask(mask);
      for (const special of [0, 1]) expect(isAllowed(mask, special), `special token ${special}`).toBe(false);
      for (let probe = 0; probe < 300; probe++) {
        const id = Math.floor(random() * t.vocab.vocabSize);
        const allowed = isAllowed(mask, id);
        const took = matcher.accept(id);
        expect(took, `token ${id} ${JSON.stringify(t.text[id])} allowed=${allowed}`).toBe(allowed);
        if (took) matcher.rollback(1);
      }
      if (step < prefix.length) expect(matcher.accept(prefix[step])).toBe(true);
    }
    matcher.dispose();
  });

  it("allows EOS only once the value is complete, then nothing", () => {
    const matcher = grammar.matcher();
    const mask = t.vocab.allocateMask();
    const text = '{"name":"x","tags":[],"ok":true}';
    for (const id of ids(text)) {
      matcher.fillMask(mask);
      expect(isAllowed(mask, t.eosId)).toBe(false);
      expect(matcher.isComplete()).toBe(false);
      expect(matcher.accept(t.eosId)).toBe(false);
      expect(matcher.accept(id)).toBe(true);
    }
    expect(matcher.isComplete()).toBe(true);
    matcher.fillMask(mask);
    expect(setBits(mask, t.vocab.vocabSize)).toEqual([t.eosId]);
    expect(matcher.isTerminated()).toBe(false);
    expect(matcher.accept(t.eosId)).toBe(true);
    expect(matcher.isTerminated()).toBe(true);
    matcher.fillMask(mask);
    expect(setBits(mask, t.vocab.vocabSize)).toEqual([]);
    matcher.dispose();
  });

  it("rolls back accepted tokens, and refuses to roll back more than were accepted", () => {
    const matcher = grammar.matcher();
    const before = t.vocab.allocateMask();
    const after = t.vocab.allocateMask();
    matcher.fillMask(before);
    const prefix = ids('{"name":"');
    for (const id of prefix) expect(matcher.accept(id)).toBe(true);
    matcher.rollback(prefix.length);
    matcher.fillMask(after);
    expect(after).toEqual(before);
    expect(() => matcher.rollback(1)).toThrow(/only 0 tokens were accepted/);
    matcher.dispose();
  });

  it("fills one mask row per draft position, stops at the first token the grammar refuses, and leaves the state alone", () => {
    const matcher = grammar.matcher();
    const words = t.vocab.maskWords;
    const good = ids('{"name":"q');
    const rawNewline = t.tokenizer.token_to_id("<0x0A>") as number;
    const draft = [...good, rawNewline, ...ids('"')];
    const rows = t.vocab.allocateMask(draft.length + 1);
    const k = matcher.fillMasks(draft, rows);
    expect(k).toBe(good.length);
    const expected = t.vocab.allocateMask();
    for (let i = 0; i <= k; i++) {
      matcher.fillMask(expected);
      expect(rows.subarray(i * words, (i + 1) * words), `row ${i}`).toEqual(expected);
      if (i < k) matcher.accept(draft[i]);
    }
    matcher.rollback(k);
    const fresh = grammar.matcher();
    const a = t.vocab.allocateMask();
    const b = t.vocab.allocateMask();
    matcher.fillMask(a);
    fresh.fillMask(b);
    expect(a).toEqual(b);
    matcher.dispose();
    fresh.dispose();
  });

  it("writes only its own row of a batch mask (free rows stay as they were)", () => {
    const words = t.vocab.maskWords;
    const batch = t.vocab.allocateMask(3).fill(0xffffffff);
    const matcher = grammar.matcher();
    matcher.fillMask(batch.subarray(words, 2 * words));
    expect(batch.subarray(0, words).every((w) => w === 0xffffffff)).toBe(true);
    expect(batch.subarray(2 * words).every((w) => w === 0xffffffff)).toBe(true);
    expect(setBits(batch.subarray(words, 2 * words), t.vocab.vocabSize).length).toBeLessThan(t.vocab.vocabSize);
    expect(() => matcher.fillMask(new Uint32Array(words - 1))).toThrow(/needs \d+/);
    matcher.dispose();
  });

  it("keeps sequences independent", () => {
    const a = grammar.matcher();
    const b = grammar.matcher();
    const sets = samplerSets(t);
    const first = sample(a, t, sets, rng(7));
    const mask = t.vocab.allocateMask();
    b.fillMask(mask);
    const fresh = t.vocab.allocateMask();
    const c = grammar.matcher();
    c.fillMask(fresh);
    expect(mask).toEqual(fresh);
    expect(JSON.parse(decode(t, first.ids))).toHaveProperty("ok");
    for (const m of [a, b, c]) m.dispose();
  });

  it("keeps strings valid UTF-8 across byte tokens (no overlongs, surrogates or bytes UTF-8 never uses)", () => {
    const byte = (b: number) => t.tokenizer.token_to_id(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`) as number;
    const matcher = grammar.matcher();
    const mask = t.vocab.allocateMask();
    for (const id of ids('{"name":"')) expect(matcher.accept(id)).toBe(true);
    matcher.fillMask(mask);
    for (const never of [0xc0, 0xc1, 0xf5, 0xff, 0x80]) expect(isAllowed(mask, byte(never)), `byte ${never.toString(16)}`).toBe(false);
    const cases: [number, number, number][] = [
      [0xe0, 0x9f, 0xa0],
      [0xed, 0xa0, 0x9f],
      [0xf0, 0x8f, 0x90],
      [0xf4, 0x90, 0x8f],
    ];
    for (const [lead, refused, allowed] of cases) {
      expect(matcher.accept(byte(lead))).toBe(true);
      matcher.fillMask(mask);
      expect(isAllowed(mask, byte(refused)), `${lead.toString(16)} ${refused.toString(16)}`).toBe(false);
      expect(matcher.accept(byte(refused))).toBe(false);
      expect(isAllowed(mask, byte(allowed)), `${lead.toString(16)} ${allowed.toString(16)}`).toBe(true);
      expect(matcher.accept(byte(allowed))).toBe(true);
      matcher.rollback(2);
    }
    expect(matcher.accept(byte(0xe0))).toBe(true);
    expect(matcher.accept(byte(0xa0))).toBe(true);
    matcher.rollback(1);
    matcher.fillMask(mask);
    expect(isAllowed(mask, byte(0x9f))).toBe(false);
    matcher.dispose();
  });

  it("refuses use after dispose", () => {
    const matcher = grammar.matcher();
    matcher.dispose();
    matcher.dispose();
    expect(() => matcher.accept(1)).toThrow(/after dispose/);
  });
});

describe("compileResponseFormat", () => {
  it("caches by canonical schema and bounds the cache", async () => {
    const reordered = { additionalProperties: false, required: ["name", "tags", "ok"], properties: schema.properties, type: "object" };
    expect(await compileResponseFormat(t.vocab, { type: "json_schema", schema: reordered })).toBe(grammar);
    const small = await GrammarVocab.create({ tokens: t.vocab.vocabSize > 0 ? ["a", "b", "{", "}", '"', "</s>"] : [], vocabType: "raw", eosIds: [5], specialIds: [] }, { cacheSize: 2 });
    const first = await compileResponseFormat(small, { type: "json_schema", schema: { const: "a" } });
    await compileResponseFormat(small, { type: "json_schema", schema: { const: "b" } });
    await compileResponseFormat(small, { type: "json_object" });
    expect(small.cachedGrammars).toBe(2);
    const matcher = first.matcher();
    expect(matcher.accept(4)).toBe(true);
    expect(matcher.accept(0)).toBe(true);
    expect(matcher.accept(4)).toBe(true);
    expect(matcher.isComplete()).toBe(true);
    matcher.dispose();
  });

  it("rejects formats without a grammar and missing schemas with ValidationError", async () => {
    await expect(compileResponseFormat(t.vocab, { type: "text" } as never)).rejects.toThrow(ValidationError);
    await expect(compileResponseFormat(t.vocab, { type: "json_schema" } as never)).rejects.toThrow(/json_schema needs a schema/);
    await expect(compileResponseFormat(t.vocab, { type: "json_schema", schema: { type: "string", format: "ipv4" } }, { path: "parameters.response_format.schema" })).rejects.toThrow(
      /^parameters\.response_format\.schema\.format: unsupported format "ipv4"/,
    );
  });
});

describe("GrammarVocab", () => {
  it("masks padded ids beyond the tokenizer, and sizes masks by the logit width", async () => {
    const padded = await GrammarVocab.create({ tokens: ["{", "}", "</s>"], vocabType: "raw", eosIds: [2], specialIds: [], vocabSize: 70 });
    expect(padded.vocabSize).toBe(70);
    expect(padded.maskWords).toBe(3);
    const g = await compileResponseFormat(padded, { type: "json_object" });
    const matcher = g.matcher();
    const mask = padded.allocateMask();
    matcher.fillMask(mask);
    expect(setBits(mask, 70)).toEqual([0]);
    expect(matcher.accept(69)).toBe(false);
    matcher.dispose();
  });

  it("reads byte-level vocabularies and literal added tokens", async () => {
    // "Ġ" is the byte-level spelling of a space; "x y" is an added (literal) token with a real space.
    const input = vocabInputFromTokenizerJson(
      {
        model: { vocab: { '"': 0, a: 1, "Ġb": 2 } },
        added_tokens: [
          { id: 3, content: "x y", special: false },
          { id: 4, content: "<|eot|>", special: true },
        ],
        decoder: { type: "ByteLevel" },
      },
      [4],
    );
    expect(input.vocabType).toBe("byte_level");
    expect(input.specialIds).toEqual([4]);
    const vocab = await GrammarVocab.create(input);
    const g = await compileResponseFormat(vocab, { type: "json_schema", schema: { type: "string", pattern: "^(a b|x y)$" } });
    for (const seq of [[0, 1, 2, 0], [0, 3, 0]]) {
      const matcher = g.matcher();
      for (const id of seq) expect(matcher.accept(id), `${seq} at ${id}`).toBe(true);
      expect(matcher.accept(4)).toBe(true);
      matcher.dispose();
    }
    expect(vocabInputFromTokenizerJson({ model: { vocab: { a: 0 } }, decoder: { type: "Sequence", decoders: [{ type: "Replace", pattern: { String: "\u2581" } }, { type: "ByteFallback" }] } }, [0]).vocabType).toBe("sentencepiece");
  });

  it("refuses an empty or out-of-range EOS list", async () => {
    await expect(GrammarVocab.create({ tokens: ["a"], vocabType: "raw", eosIds: [], specialIds: [] })).rejects.toThrow(/eosIds is empty/);
    await expect(GrammarVocab.create({ tokens: ["a"], vocabType: "raw", eosIds: [5], specialIds: [] })).rejects.toThrow(/outside the vocabulary/);
  });
});
