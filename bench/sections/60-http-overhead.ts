// Section "http-overhead" (slot for the HTTP server issue): the same generations in-process and through
// POST /generate and /v1/completions on loopback, as a ratio. Not measured here until the server wiring lands.
import { skipped, type BenchSection } from "../lib/section.js";

const section: BenchSection = {
  name: "http-overhead",
  describe: "tokens/s and TTFT through the HTTP server ÷ the same requests in-process (chart: http-overhead.png)",
  async run() {
    return skipped("not wired yet: the HTTP server issue adds its measurement here (start the app on 127.0.0.1, replay the engine-core workloads, return ratios)");
  },
};

export default section;
