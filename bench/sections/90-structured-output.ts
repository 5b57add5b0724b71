// Section "structured-output" (slot for issue 12): runs bench/structured.ts (grammar compile time and mask time per
// token) in a child process and keeps its report; the figures and their chart are that to add.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { skipped, type BenchSection } from "../lib/section.js";

const SCRIPT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "structured.ts");

const section: BenchSection = {
  name: "structured-output",
  describe: "grammar compile and allowed-token mask time (bench/structured.ts, issue 12), full runs only",
  async run(ctx) {
    if (!fs.existsSync(SCRIPT)) return skipped("bench/structured.ts is not in this checkout");
    if (ctx.quick) return skipped("full runs only: bench/structured.ts takes minutes on three vocabularies");
    const r = spawnSync(process.execPath, ["--import", "tsx", SCRIPT, "--quick"], { encoding: "utf8", timeout: 8 * 60_000, cwd: path.dirname(path.dirname(SCRIPT)) });
    if (r.status !== 0) return skipped(`bench/structured.ts exited with ${r.status ?? r.signal}: ${(r.stderr || r.stdout).trim().split("\n").slice(-3).join(" | ")}`);
    const report = r.stdout.trim().split("\n");
    for (const line of report) ctx.log(line);
    return { json: { report } };
  },
};

export default section;
