// Schema refusal: every keyword or combination the grammar would not enforce is a ValidationError
// naming it and its JSON path; supported schemas pass. No vocabulary is needed for these.
import { describe, expect, it } from "vitest";
import { ValidationError } from "../../../engine/src/errors.js";
import { schemaToEbnf } from "../../../engine/src/structured/schema-to-ebnf.js";

const PATH = "response_format.json_schema.schema";

function convert(schema: unknown): string {
  return schemaToEbnf(schema, { path: PATH, param: "response_format", maxWhitespace: 0 });
}

function refusal(schema: unknown): ValidationError {
  try {
    convert(schema);
  } catch (err) {
    if (err instanceof ValidationError) return err;
    throw err;
  }
  throw new Error(`expected a ValidationError for ${JSON.stringify(schema)}`);
}

const prop = (sub: unknown) => ({ type: "object", properties: { x: sub } });

describe("schema check", () => {
  it("names an unsupported format with its path, as the issue's example reads", () => {
    const err = refusal({ type: "object", properties: { date: { type: "string", format: "ipv6" } } });
    expect(err.message).toMatch(/^response_format\.json_schema\.schema\.properties\.date\.format: unsupported format "ipv6"/);
    expect(err.kind).toBe("validation");
    expect(err.param).toBe("response_format");
  });

  const unsupportedKeywords: [string, unknown][] = [
    ["uniqueItems", { type: "array", uniqueItems: true }],
    ["patternProperties", { type: "object", patternProperties: { "^a": {} } }],
    ["propertyNames", { type: "object", propertyNames: { maxLength: 3 } }],
    ["minProperties", { type: "object", minProperties: 1 }],
    ["maxProperties", { type: "object", maxProperties: 1 }],
    ["multipleOf", { type: "number", multipleOf: 5 }],
    ["contains", { type: "array", contains: { const: 1 } }],
    ["prefixItems", { type: "array", prefixItems: [{ type: "string" }] }],
    ["if", { if: { type: "string" }, then: { maxLength: 2 } }],
    ["not", { not: { type: "null" } }],
    ["dependentRequired", { type: "object", dependentRequired: { a: ["b"] } }],
    ["unevaluatedProperties", { type: "object", unevaluatedProperties: false }],
    ["$anchor", { $anchor: "here" }],
    ["nullable", { type: "string", nullable: true }],
    ["contentEncoding", { type: "string", contentEncoding: "base64" }],
  ];
  for (const [keyword, schema] of unsupportedKeywords) {
    it(`refuses "${keyword}" at its path`, () => {
      const err = refusal(prop(schema));
      expect(err.message).toContain(`${PATH}.properties.x.${keyword}: unsupported keyword "${keyword}"`);
    });
  }

  it("walks into items, anyOf branches, $defs and additionalProperties", () => {
    expect(refusal({ type: "array", items: { type: "string", format: "hostname" } }).message).toContain(`${PATH}.items.format`);
    expect(refusal({ anyOf: [{ type: "null" }, { type: "array", uniqueItems: true }] }).message).toContain(`${PATH}.anyOf[1].uniqueItems`);
    expect(refusal({ $defs: { a: { type: "string", format: "uri" } }, $ref: "#/$defs/a" }).message).toContain(`${PATH}.$defs.a.format`);
    expect(refusal({ type: "object", additionalProperties: { minProperties: 2 } }).message).toContain(`${PATH}.additionalProperties.minProperties`);
    expect(refusal({ type: "object", properties: { "odd key": { not: {} } } }).message).toContain(`${PATH}.properties["odd key"].not`);
  });

  const refusedPatterns: [string, RegExp][] = [
    ["^(?=a)b$", /lookaround/],
    ["^(a)\\1$", /backreference/],
    ["\\bword\\b", /word boundary/],
    ["^\\p{L}+$", /Unicode property/],
    ["a^b", /\^ and \$/],
    ["^a{1,500}$", /quantifier count 500/],
    ["^[", /invalid regular expression/],
    ["^[一-龥]+$", /non-ASCII/],
  ];
  for (const [pattern, why] of refusedPatterns) {
    it(`refuses pattern ${JSON.stringify(pattern)}`, () => {
      const err = refusal(prop({ type: "string", pattern }));
      expect(err.message).toContain(`${PATH}.properties.x.pattern`);
      expect(err.message).toMatch(why);
    });
  }

  const refusedCombinations: [string, unknown, string, RegExp][] = [
    ["allOf with two schemas", { allOf: [{ type: "string" }, { maxLength: 3 }] }, "allOf", /merge them/],
    ["a sibling of anyOf", { type: "string", anyOf: [{ maxLength: 2 }, { minLength: 5 }] }, "type", /alongside "anyOf"/],
    ["a sibling of $ref", { $ref: "#/$defs/a", maxLength: 3, $defs: { a: { type: "string" } } }, "maxLength", /alongside "\$ref"/],
    ["a constraint beside enum", { enum: ["a", "bb"], maxLength: 1 }, "maxLength", /alongside "enum"/],
    ["pattern with maxLength", { type: "string", pattern: "^a+$", maxLength: 3 }, "pattern", /fold the length into the pattern/],
    ["email shorter than its format", { type: "string", format: "email", maxLength: 100 }, "maxLength", /must not cut into/],
    ["draft-04 boolean exclusiveMinimum", { type: "number", minimum: 0, exclusiveMinimum: true }, "exclusiveMinimum", /draft-04/],
    ["tuple items", { type: "array", items: [{ type: "string" }] }, "items", /tuple/],
    ["remote $ref", { $ref: "https://example.com/s.json" }, "$ref", /only local JSON-pointer references/],
    ["anchor $ref", { $ref: "#node" }, "$ref", /only local JSON-pointer references/],
    ["maxLength beyond the counted limit", { type: "string", maxLength: 1000 }, "maxLength", /above the 64/],
    ["minItems above maxItems", { type: "array", minItems: 3, maxItems: 2 }, "minItems", /above maxItems/],
    ["an unknown type", { type: "date" }, "type", /must be one of/],
  ];
  for (const [what, schema, keyword, why] of refusedCombinations) {
    it(`refuses ${what}`, () => {
      const err = refusal(prop(schema));
      expect(err.message).toContain(`${PATH}.properties.x.${keyword}`);
      expect(err.message).toMatch(why);
    });
  }

  it("refuses $id below the root and unresolvable references", () => {
    expect(refusal(prop({ $id: "inner" })).message).toMatch(/only on the root/);
    expect(refusal(prop({ $ref: "#/$defs/missing" })).message).toMatch(/\.properties\.x\.\$ref: "#\/\$defs\/missing" does not resolve/);
  });

  it("refuses oneOf branches it cannot prove disjoint, and accepts distinguishable ones", () => {
    expect(refusal(prop({ oneOf: [{ type: "number" }, { type: "integer" }] })).message).toMatch(/\.properties\.x\.oneOf: branches 0 and 1 may both match/);
    expect(refusal(prop({ oneOf: [{ type: "object", properties: { a: { type: "string" } } }, { type: "object", properties: { b: { type: "string" } } }] })).message).toMatch(/oneOf/);
    expect(() => convert(prop({ oneOf: [{ type: "string" }, { type: "integer" }, { type: "null" }] }))).not.toThrow();
    expect(() => convert(prop({ oneOf: [{ const: "a" }, { enum: ["b", "c"] }] }))).not.toThrow();
    expect(() =>
      convert(prop({
        oneOf: [
          { type: "object", properties: { kind: { const: "a" }, v: { type: "string" } }, required: ["kind"] },
          { type: "object", properties: { kind: { const: "b" }, w: { type: "integer" } }, required: ["kind"] },
        ],
      })),
    ).not.toThrow();
    expect(() =>
      convert(prop({
        oneOf: [
          { type: "object", properties: { a: { type: "string" } }, required: ["a"], additionalProperties: false },
          { type: "object", properties: { b: { type: "string" } }, required: ["b"], additionalProperties: false },
        ],
      })),
    ).not.toThrow();
  });

  it("refuses schemas that admit no value it can generate", () => {
    expect(refusal({ type: "integer", minimum: 1.2, maximum: 1.8 }).message).toMatch(/no JSON value satisfies/);
    expect(refusal({ type: "object", properties: { a: false }, required: ["a"] }).message).toMatch(/no JSON value satisfies/);
    expect(refusal({ type: "array", items: false, minItems: 1 }).message).toMatch(/minItems 1 can never be generated/);
    expect(refusal({ type: "number", minimum: 1e20 }).message).toMatch(/no JSON value satisfies/);
    expect(refusal({ type: "integer", enum: ["a", "b"] }).message).toMatch(/no JSON value satisfies/);
  });

  it("accepts every supported keyword, annotations and boolean schemas", () => {
    expect(() =>
      convert({
        $schema: "https://json-schema.org/draft/2020-12/schema",
        $id: "https://example.com/root",
        title: "t",
        description: "d",
        type: "object",
        properties: {
          a: { type: "string", minLength: 1, maxLength: 8, default: "x", examples: ["y"] },
          b: { type: "array", items: { $ref: "#/definitions/n" }, minItems: 0, maxItems: 3 },
          c: { anyOf: [{ type: "string", pattern: "^x+$" }, { type: "null" }], deprecated: true },
          d: { allOf: [{ $ref: "#/$defs/e" }] },
          e: { type: "number", minimum: -1, exclusiveMaximum: 1, readOnly: true },
          f: { enum: [1, "a", null], $comment: "c" },
          g: { const: { k: [1] } },
          h: { type: "string", format: "uuid", maxLength: 36 },
          i: true,
          j: { type: ["boolean", "null"] },
        },
        required: ["a"],
        additionalProperties: false,
        $defs: { e: { type: "string", format: "date-time" } },
        definitions: { n: { type: "integer", exclusiveMinimum: 0, writeOnly: false } },
      }),
    ).not.toThrow();
  });
});
