// Section "adapter-cold-load" (slot for the adapter sources/residency issue): time from first request naming an
// adapter to its first token, by source (local, Hub cache, S3 via a local endpoint), beside a warm request.
import { skipped, type BenchSection } from "../lib/section.js";

const section: BenchSection = {
  name: "adapter-cold-load",
  describe: "cold adapter load to first token by source (local, hub, s3) ÷ warm (chart: cold-load-by-source.png)",
  async run() {
    return skipped("not wired yet: the adapter residency issue adds its measurement here (fake Hub and s3rver from test/helpers as sources)");
  },
};

export default section;
