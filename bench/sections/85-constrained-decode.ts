// Section "constrained-decode" (structured-output issue): decode tokens/s of JSON-schema-constrained requests ÷
// the same requests unconstrained, at batch 1 and 16 on the BF16 bench model, and the mask time per token.
// Constrained sequences are masked every step (xgrammar), so this is the cost of structured output.
import { Engine } from "../../engine/src/engine.js";
import { DEFAULT_SAMPLING } from "../../engine/src/sampling.js";
import { benchEngineOptions, median } from "../lib/measure.js";
import { fmtRate, fmtX, ratio, type BenchSection } from "../lib/section.js";

const SCHEMA = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 24 },
    tags: { type: "array", maxItems: 6, items: { type: "string", maxLength: 12 } },
    score: { type: "number", minimum: 0, maximum: 100 },
    notes: { type: "string", maxLength: 48 },
  },
  required: ["name", "tags", "score", "notes"],
  additionalProperties: false,
};

const section: BenchSection = {
  name: "constrained-decode",
  describe: "decode tok/s with a JSON-schema constraint ÷ unconstrained, batch 1 and 16 (BF16 bench model); mask time per token",
  async run(ctx) {
    const engine = await Engine.create(ctx.benchModel("BF16"), benchEngineOptions({ kvBytes: 512 << 20 }));
    const newTokens = ctx.quick ? 24 : 48;
    // Tokens/s over the steps after the first token (prefill excluded), across all sequences.
    const rate = async (batch: number, constrained: boolean): Promise<number> => {
      let tokens = 0, start = 0;
      await Promise.all(
        Array.from({ length: batch }, async (_, i) => {
          const sub = await engine.submit({
            input: { tokens: [1, 306 + i, 4966, 29901] },
            params: { ...DEFAULT_SAMPLING, maxNewTokens: newTokens, ignoreEos: true, doSample: true, seed: BigInt(i) },
            responseFormat: constrained ? { format: { type: "json_schema", schema: SCHEMA }, path: "schema", param: "response_format" } : undefined,
          });
          for await (const e of sub.events) if (e.type === "token") (tokens++, (start ||= performance.now()));
        }),
      );
      return (tokens - batch) / ((performance.now() - start) / 1e3);
    };
    const rows: { batch: number; freeTokS: number; constrainedTokS: number; ratio: number }[] = [];
    try {
      await rate(1, true); // compile the grammar once, outside the timing
      for (const batch of [1, 16]) {
        const f: number[] = [], c: number[] = [];
        for (let rep = 0; rep < (ctx.quick ? 2 : 3); rep++) {
          f.push(await rate(batch, false));
          c.push(await rate(batch, true));
        }
        rows.push({ batch, freeTokS: median(f), constrainedTokS: median(c), ratio: ratio(median(c), median(f)) });
        ctx.log(`batch ${batch}: free ${fmtRate(median(f))}, constrained ${fmtRate(median(c))}`);
      }
    } finally {
      engine.backend.close();
    }
    const b16 = rows[1];
    return {
      json: { newTokens, rows },
      summary: [
        { figure: "constrained ÷ free decode, batch 16", value: `${fmtX(b16.ratio)} (${fmtRate(b16.constrainedTokS)} vs ${fmtRate(b16.freeTokS)})`, target: "≥ 0.9×", met: b16.ratio >= 0.9 },
        { figure: "constrained ÷ free decode, batch 1", value: fmtX(rows[0].ratio) },
      ],
      charts: [
        {
          kind: "bars", file: "constrained-decode.png", title: "JSON-schema constrained vs free decoding", subtitle: "BF16 bench model, sampled",
          yLabel: "tokens/s", categories: rows.map((r) => `batch ${r.batch}`),
          series: [{ name: "free", values: rows.map((r) => r.freeTokS) }, { name: "constrained", values: rows.map((r) => r.constrainedTokS) }],
          format: (v) => v.toFixed(0),
        },
      ],
    };
  },
};

export default section;
