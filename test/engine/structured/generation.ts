// The generation suite shared by the per-tokenizer test files: for every schema, sampled outputs
// (random allowed tokens, temperature-1 style) must be valid UTF-8, parse and validate with ajv, none
// may run out of steps, and json_object outputs must all be objects. It owns no tokenizer choice.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { compileResponseFormat } from "../../../engine/src/structured/grammar.js";
import { decode, type LoadedTokenizer, loadTokenizer, makeAjv, rng, sample, type SamplerSets, samplerSets, type TokenizerName } from "./helpers.js";
import type { NamedSchema } from "./schemas.js";

function seedOf(text: string, run: number): number {
  let h = 2166136261;
  for (const ch of text) h = Math.imul(h ^ (ch.codePointAt(0) ?? 0), 16777619);
  return (h ^ run) >>> 0;
}

export function generationSuite(name: TokenizerName, schemas: NamedSchema[], runs = 20): void {
  describe(`structured generation on ${name}`, () => {
    let t: LoadedTokenizer;
    let sets: SamplerSets;
    const ajv = makeAjv();
    const maskMs: number[] = [];
    let generations = 0;
    let capped = 0;

    beforeAll(async () => {
      t = await loadTokenizer(name);
      sets = samplerSets(t);
    });

    afterAll(() => {
      maskMs.sort((a, b) => a - b);
      const mean = maskMs.reduce((a, b) => a + b, 0) / Math.max(1, maskMs.length);
      console.log(
        `${name}: ${generations} generations, ${capped} hit the step cap; mask ${mean.toFixed(3)} ms mean, ${(maskMs[Math.floor(maskMs.length * 0.99)] ?? 0).toFixed(3)} ms p99 over ${maskMs.length} steps (vocab ${t.vocab.vocabSize})`,
      );
    });

    function generate(grammarMatcher: () => ReturnType<Awaited<ReturnType<typeof compileResponseFormat>>["matcher"]>, label: string, run: number): unknown {
      const matcher = grammarMatcher();
      const result = sample(matcher, t, sets, rng(seedOf(label, run)), { probeDisallowed: true });
      matcher.dispose();
      generations++;
      maskMs.push(...result.maskMs);
      const text = decode(t, result.ids);
      if (result.hitCap) capped++;
      const { bytes, offsets } = t.vocab.bytes;
      const raw = result.ids.flatMap((id) => [...bytes.subarray(offsets[id], offsets[id + 1])]);
      expect(() => new TextDecoder("utf-8", { fatal: true }).decode(Uint8Array.from(raw)), `${label} run ${run}: invalid UTF-8`).not.toThrow();
      expect(result.hitCap, `${label} run ${run} hit the step cap: ${text.slice(0, 200)}`).toBe(false);
      try {
        return JSON.parse(text) as unknown;
      } catch (err) {
        throw new Error(`${label} run ${run}: output does not parse (${(err as Error).message}): ${JSON.stringify(text)}`);
      }
    }

    for (const { name: schemaName, schema } of schemas) {
      it(`${schemaName}: ${runs} sampled outputs parse and validate`, async () => {
        const grammar = await compileResponseFormat(t.vocab, { type: "json_schema", schema });
        const validate = ajv.compile(schema);
        for (let run = 0; run < runs; run++) {
          const value = generate(() => grammar.matcher(), schemaName, run);
          expect(validate(value), `${schemaName} run ${run}: ${JSON.stringify(value)} fails: ${JSON.stringify(validate.errors)}`).toBe(true);
        }
      });
    }

    it(`json_object: ${runs} sampled outputs are JSON objects`, async () => {
      const grammar = await compileResponseFormat(t.vocab, { type: "json_object" });
      for (let run = 0; run < runs; run++) {
        const value = generate(() => grammar.matcher(), "json_object", run);
        expect(typeof value === "object" && value !== null && !Array.isArray(value), JSON.stringify(value)).toBe(true);
      }
    });
  });
}
