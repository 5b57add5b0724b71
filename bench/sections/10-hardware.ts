// Section "hardware": the machine's limits measured in this run by the native probe (memory read bandwidth, FMA
// throughput), the numbers every roofline in the other sections divides by. It measures no engine.
import type { BenchSection } from "../lib/section.js";

const section: BenchSection = {
  name: "hardware",
  describe: "memory read bandwidth and FMA throughput (native AVX2 probe, all threads), measured now",
  async run(ctx) {
    const h = ctx.hardware;
    return {
      json: h,
      summary: [
        { figure: "memory read bandwidth", value: `${(h.bandwidth / 1e9).toFixed(1)} GB/s` },
        { figure: "FMA throughput", value: `${(h.fma / 1e9).toFixed(0)} GFLOP/s` },
      ],
    };
  },
};

export default section;
