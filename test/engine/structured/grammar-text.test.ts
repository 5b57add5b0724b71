// What the generated grammars accept, character by character: a vocabulary of one token per
// character lets us feed exact strings. Soundness (accepted ⇒ parses and validates) on many
// candidates near every bound, and the expected acceptances so grammars are not vacuous.
import { beforeAll, describe, expect, it } from "vitest";
import { compileResponseFormat, type CompiledGrammar, GrammarVocab } from "../../../engine/src/structured/grammar.js";
import { makeAjv, rng } from "./helpers.js";

const EXTRA = ["é", "ü", "中", "😀", "\u2028", "\u00a0"];
const CHARS = [...Array.from({ length: 128 }, (_, i) => String.fromCharCode(i)), ...EXTRA];
const EOS = CHARS.length;
let vocab: GrammarVocab;

beforeAll(async () => {
  vocab = await GrammarVocab.create({ tokens: [...CHARS, "<eos>"], vocabType: "raw", eosIds: [EOS], specialIds: [] });
});

function accepts(grammar: CompiledGrammar, text: string): boolean {
  const matcher = grammar.matcher();
  try {
    for (const ch of text) {
      const id = CHARS.indexOf(ch);
      if (id < 0 || !matcher.accept(id)) return false;
    }
    return matcher.accept(EOS);
  } finally {
    matcher.dispose();
  }
}

const ajv = makeAjv();

async function check(schema: Record<string, unknown>, good: string[], bad: string[], candidates: string[] = []): Promise<void> {
  const grammar = await compileResponseFormat(vocab, { type: "json_schema", schema });
  const validate = ajv.compile(schema);
  for (const text of good) expect(accepts(grammar, text), `should accept ${text}`).toBe(true);
  for (const text of bad) expect(accepts(grammar, text), `should refuse ${text}`).toBe(false);
  for (const text of [...good, ...bad, ...candidates]) {
    if (!accepts(grammar, text)) continue;
    const value: unknown = JSON.parse(text);
    expect(validate(value), `${text} was accepted but fails the schema: ${JSON.stringify(validate.errors)}`).toBe(true);
  }
}

/** Number spellings around the given values: neighbours, fractions, exponents, signs. */
function numberCandidates(values: number[], seed: number): string[] {
  const out = new Set<string>(["0", "-0", "1", "-1", "0.5", "-0.5", "1e3", "1E-2", "00", "01", "1.", ".5", "-", "+1", "1.0000001"]);
  const random = rng(seed);
  for (const v of values) {
    for (const d of [0, 1e-7, 1e-6, 1e-3, 0.01, 0.5, 1, 2, 10]) {
      for (const x of [v - d, v + d]) {
        out.add(String(x));
        out.add(x.toFixed(1));
        out.add(x.toFixed(6));
        out.add(x.toFixed(0));
      }
    }
    for (let i = 0; i < 20; i++) out.add((v + (random() - 0.5) * 4).toFixed(Math.floor(random() * 8)));
  }
  return [...out].filter((s) => s !== "NaN");
}

describe("grammar text", () => {
  it("integers inside bounds, never -0 or leading zeros", async () => {
    const schema = { type: "integer", minimum: -12, exclusiveMaximum: 120 };
    await check(schema, ["-12", "0", "7", "119"], ["-13", "120", "-0", "007", "1.0", "1e2"], numberCandidates([-12, 0, 120], 1));
    await check({ type: "integer", exclusiveMinimum: 0, exclusiveMaximum: 10 }, ["1", "9"], ["0", "10"], numberCandidates([0, 10], 2));
    await check({ type: "integer", minimum: 1.5, maximum: 4.5 }, ["2", "4"], ["1", "5"], numberCandidates([1.5, 4.5], 3));
    await check({ type: "integer" }, ["-999999999999999", "999999999999999"], ["9999999999999999"], numberCandidates([0, 1e15], 4));
  });

  it("numbers inside fractional and exclusive bounds", async () => {
    await check({ type: "number", minimum: -1.5, exclusiveMaximum: 10 }, ["-1.5", "-1", "0", "9.999999", "3.25"], ["-1.6", "10", "10.0", "-1.50001", "1e1"], numberCandidates([-1.5, 10], 5));
    await check({ type: "number", exclusiveMinimum: -273.15, maximum: 1e4 }, ["-273.14", "-273.149", "10000", "0"], ["-273.15", "-273.150", "10000.1"], numberCandidates([-273.15, 1e4], 6));
    await check({ type: "number", minimum: 0, maximum: 1 }, ["0", "1", "0.5", "1.0", "0.000001"], ["1.000001", "-0.1"], numberCandidates([0, 1], 7));
    await check({ type: "number", minimum: 0.1, maximum: 0.25 }, ["0.1", "0.25", "0.2"], ["0.09", "0.26", "0.250001"], numberCandidates([0.1, 0.25], 8));
    await check({ type: "number", exclusiveMinimum: 0, exclusiveMaximum: 0.001 }, ["0.0005"], ["0", "0.001", "0.0010"], numberCandidates([0, 0.001], 9));
    await check({ type: "number", maximum: -2.5 }, ["-2.5", "-3", "-100.25"], ["-2.4", "0"], numberCandidates([-2.5], 10));
    await check({ type: "number", minimum: 0.30000000000000004 }, ["0.300001", "1"], ["0.3"], numberCandidates([0.3], 11));
    await check({ type: "number" }, ["-0.5e-10", "12345.678", "1E+99", "0"], ["1e100", "01", ".5", "NaN"], numberCandidates([0], 12));
  });

  it("strings: length in code points, escapes, raw control characters refused", async () => {
    await check({ type: "string", minLength: 2, maxLength: 4 }, ['"ab"', '"a\\"b"', '"😀中"', '"\\u00e9é"', '"a\\n"'], ['"a"', '"abcde"', '"a\tb"', '"\\ud83d\\ude00"'], ['"\\ud83d\\ude00x"', '"ab\\u0000"']);
    await check({ type: "string" }, ['""', '"a\\\\b"', '"\\ud83d\\ude00"', '"\u2028"'], ['"a\nb"', '"\\x41"', '"a']);
    await check({ type: "string", minLength: 3 }, ['"abc"', '"abcdefgh"'], ['"ab"']);
  });

  it("formats agree with ajv-formats, day of month and leap years included", async () => {
    await check(
      { type: "string", format: "date-time" },
      ['"2024-02-29T23:59:59Z"', '"1999-12-31T00:00:00.123+05:30"', '"0000-02-29T12:00:00-23:59"'],
      ['"2023-02-29T00:00:00Z"', '"1900-02-29T00:00:00Z"', '"2024-04-31T00:00:00Z"', '"2024-13-01T00:00:00Z"', '"2024-01-01T24:00:00Z"', '"2024-01-01T00:60:00Z"', '"2024-01-01T00:00:00"', '"2024-01-01 00:00:00Z"'],
    );
    await check({ type: "string", format: "date" }, ['"2000-02-29"', '"2023-11-30"'], ['"2100-02-29"', '"2023-11-31"', '"2023-1-01"']);
    await check({ type: "string", format: "time" }, ['"23:59:59Z"', '"00:00:00.5+01:00"'], ['"23:59:60Z"', '"12:00:00"']);
    await check({ type: "string", format: "uuid" }, ['"123e4567-e89b-12d3-a456-426614174000"', '"ABCDEF00-0000-0000-0000-000000000000"'], ['"123e4567e89b12d3a456426614174000"', '"123e4567-e89b-12d3-a456-42661417400g"']);
    await check(
      { type: "string", format: "email" },
      ['"a@b.co"', '"first.last+tag@sub.example-domain.org"', "\"o'brien@x-y.io\""],
      ['"a@b"', '"a..b@c.de"', '".a@b.co"', '"a@-b.co"', '"a@b-.co"', '"a b@c.de"', '"a@b.c_d"'],
    );
  });

  it("patterns: anchors, search semantics and characters that JSON must escape", async () => {
    await check({ type: "string", pattern: "^[A-Z]{2}-\\d{3}$" }, ['"AB-123"'], ['"AB-12"', '"ab-123"', '"AB-1234"']);
    await check({ type: "string", pattern: "\\d{3}" }, ['"abc123def"', '"123"', '"x\\n999"'], ['"12a3"']);
    await check({ type: "string", pattern: "^ID-" }, ['"ID-"', '"ID-anything"'], ['"xID-"']);
    await check({ type: "string", pattern: "[0-9]$" }, ['"abc1"', '"9"'], ['"1a"']);
    await check({ type: "string", pattern: '^"[a-z]+"$' }, ['"\\"abc\\""'], ['""abc""', '"abc"']);
    await check({ type: "string", pattern: "^a\\\\b$" }, ['"a\\\\b"'], ['"a\\b"', '"ab"']);
    await check({ type: "string", pattern: "^\\t\\n?$" }, ['"\\t"', '"\\t\\n"'], ['"\t"', '"\\n"']);
    await check({ type: "string", pattern: "^.{2}$" }, ['"ab"', '"\\"x"', '"\\u0001a"'], ['"\\n\\n"', '"\\u2028a"', '"a"']);
    await check({ type: "string", pattern: "^[^a-z]+$" }, ['"AB"', '"é中"', '"1 2"'], ['"aB"']);
    await check({ type: "string", pattern: "^[éü]+$" }, ['"éü"'], ['"e"']);
    await check({ type: "string", pattern: "^(yes|no)(, (yes|no)){0,2}$" }, ['"yes"', '"no, yes, no"'], ['"yes, no, yes, no"', '"maybe"']);
    await check({ type: "string", pattern: "^\\S+$" }, ['"abc"'], ['"a b"', '"\u00a0"']);
  });

  it("enums and consts with characters that need escaping", async () => {
    await check({ enum: ["café", 'say "hi"', "line\nbreak", "😀", null, 1.5, { a: [1] }] }, ['"café"', '"say \\"hi\\""', '"line\\nbreak"', '"😀"', "null", "1.5", '{"a":[1]}'], ['"cafe"', '"line\nbreak"', "1.50", '{"a": [1]}']);
  });

  it("objects: required and optional properties in order, no extras; free-form maps", async () => {
    const schema = { type: "object", properties: { a: { type: "integer" }, b: { type: "boolean" }, c: { type: "null" } }, required: ["b"], additionalProperties: false };
    await check(schema, ['{"b":true}', '{"a":1,"b":false}', '{"a":1,"b":false,"c":null}', '{"b":true,"c":null}'], ['{}', '{"a":1}', '{"b":true,"d":1}', '{"b":true,}', '{,"b":true}']);
    await check({ type: "object", additionalProperties: { type: "integer" } }, ['{}', '{"x":1,"y":-2}', '{"":0}'], ['{"x":"1"}', '{"x":1,}']);
    await check({ type: "object", properties: { a: { type: "string" } }, required: ["a", "z"] }, ['{"a":"x","z":[1,{"q":null}]}'], ['{"a":"x"}']);
  });

  it("arrays: item counts", async () => {
    await check({ type: "array", items: { type: "integer" }, minItems: 1, maxItems: 3 }, ["[1]", "[1,2,3]"], ["[]", "[1,2,3,4]", "[1,]"]);
    await check({ type: "array", items: false }, ["[]"], ["[1]"]);
    await check({ type: "array", minItems: 2 }, ['[1,"a"]', "[[],{},null,true]"], ["[1]"]);
  });

  it("json_object mode accepts any object and nothing else; a leading space is allowed", async () => {
    const grammar = await compileResponseFormat(vocab, { type: "json_object" });
    for (const ok of ["{}", ' {"a":[1,{"b":null}],"c":"d"}', '{"x":-1.5e3}']) expect(accepts(grammar, ok), ok).toBe(true);
    for (const no of ["[]", '"s"', "1", "{", '{"a":}', "  {}"]) expect(accepts(grammar, no), no).toBe(false);
  });

  it("whitespace between tokens only when the vocabulary allows it", async () => {
    const loose = await GrammarVocab.create({ tokens: [...CHARS, "<eos>"], vocabType: "raw", eosIds: [EOS], specialIds: [] }, { maxWhitespace: 4 });
    const schema = { type: "object", properties: { a: { type: "array", items: { type: "integer" } } }, required: ["a"] };
    const tight = await compileResponseFormat(vocab, { type: "json_schema", schema });
    const spaced = await compileResponseFormat(loose, { type: "json_schema", schema });
    expect(accepts(tight, '{"a": [1, 2]}')).toBe(false);
    expect(accepts(spaced, '{\n  "a": [1, 2]\n}')).toBe(true);
    expect(accepts(spaced, '{"a":      [1]}')).toBe(false);
  });
});
