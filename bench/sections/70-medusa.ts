// Section "medusa" (slot for the speculative-decoding issue): batch-1 and batched decode with Medusa heads ÷
// without, and accepted tokens per step. Not measured here until speculative decoding lands in the engine.
import { skipped, type BenchSection } from "../lib/section.js";

const section: BenchSection = {
  name: "medusa",
  describe: "decode speedup with Medusa heads (and prompt-lookup decoding) ÷ plain decoding, accepted tokens per step (chart: medusa-speedup.png)",
  async run() {
    return skipped("not wired yet: the Medusa / speculative decoding issue adds its measurement here (same prompts with and without heads, greedy outputs must match)");
  },
};

export default section;
