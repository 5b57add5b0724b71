// Section "adapter-cold-load" (residency and sources issues): a rank-16 adapter of the BF16 bench model on all
// seven projections, first request (cold: fetch → parse → activate → first token) minus a repeat (warm), by
// source — local disk, the Hub through a fake Hub on 127.0.0.1, S3 through s3rver — split into its phases.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { AdapterRegistry } from "../../engine/src/adapters/registry.js";
import { createAdapterSources, type SourceName } from "../../engine/src/adapters/sources/index.js";
import { Engine } from "../../engine/src/engine.js";
import { DEFAULT_SAMPLING } from "../../engine/src/sampling.js";
import { FakeHub } from "../../test/helpers/fake-hub.js";
import { shapeOf, writeAdapter } from "../../test/helpers/lora.js";
import { S3RVER_CREDENTIALS, TestS3 } from "../../test/helpers/s3.js";
import { benchEngineOptions, median } from "../lib/measure.js";
import type { BenchSection } from "../lib/section.js";

const quiet = { debug() {}, info() {}, warn() {}, error() {} };

const section: BenchSection = {
  name: "adapter-cold-load",
  describe: "cold adapter load to first token minus warm, by source (local, hub, s3), split into fetch / parse / activate",
  async run(ctx) {
    const reps = ctx.quick ? 2 : 5;
    const work = fs.mkdtempSync(path.join(os.tmpdir(), "loraserve-bench-cold-"));
    const engine = await Engine.create(
      ctx.benchModel("BF16"),
      benchEngineOptions({ kvBytes: 256 << 20, maxStepTokens: 256, maxOutRows: 16, maxBatchPrefillTokens: 256, maxConcurrentRequests: 16, loraSlots: 4, loraMaxRank: 64 }),
    );
    const hub = await FakeHub.start();
    const s3 = await TestS3.start(["bench"]);
    try {
      const local = path.join(work, "local");
      const shape = shapeOf(engine);
      const ids: Record<SourceName, string[]> = { local: [], hub: [], s3: [], pbase: [] };
      for (let i = 0; i < reps; i++) {
        const dir = path.join(local, `rank16-${i}`);
        writeAdapter(dir, shape, { rank: 16, alpha: 32, targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], seed: 900 + i });
        const files = fs.readdirSync(dir).map((f) => ({ path: f, content: fs.readFileSync(path.join(dir, f)) }));
        hub.addRepo(`bench/rank16-${i}`, files.map((f) => ({ ...f, lfs: f.path.endsWith(".safetensors") })));
        await s3.putAll("bench", `adapters/rank16-${i}`, files);
        ids.local.push(dir);
        ids.hub.push(`bench/rank16-${i}`);
        ids.s3.push(`s3://bench/adapters/rank16-${i}`);
      }
      const sources = await createAdapterSources({
        dataDir: path.join(work, "data"), localRoots: [local], logger: quiet,
        hub: { endpoint: hub.url, cacheDir: path.join(work, "hf") }, s3: { endpoint: s3.endpoint, credentials: S3RVER_CREDENTIALS },
      });
      const registry = new AdapterRegistry({
        backend: engine.backend, sources, maxActive: 4, activeBudgetBytes: 1 << 30, hostBudgetBytes: 1 << 30, cycleTimeMs: 1000,
        maxMergeIds: 4, logger: { info() {}, warn() {} }, wake: () => engine.kick(),
      });
      engine.setAdapterProvider(registry);
      const ttft = async (source: SourceName, id: string) => {
        const t0 = performance.now();
        const sub = await engine.submit({ input: { tokens: [1, 306, 763] }, adapter: { id, source }, params: { ...DEFAULT_SAMPLING, maxNewTokens: 1 } });
        for await (const e of sub.events) if (e.type === "token") return performance.now() - t0;
        return NaN;
      };
      // The base model's TTFT for the same prompt, for reference.
      await ttft("local", ids.local[0]);
      const rows = [];
      for (const source of ["local", "hub", "s3"] as SourceName[]) {
        const cold: number[] = [], warm: number[] = [], fetchMs: number[] = [], parseMs: number[] = [], activateMs: number[] = [];
        for (const [i, id] of ids[source].entries()) {
          if (source === "local" && i === 0) continue; // used for the warm-up above
          cold.push(await ttft(source, id));
          warm.push(await ttft(source, id));
          const info = registry.list().find((a) => a.id === id)!;
          fetchMs.push(info.timings.fetchMs);
          parseMs.push(info.timings.parseMs);
          activateMs.push(info.timings.activateMs);
        }
        const row = { source, coldMs: median(cold), warmMs: median(warm), extraMs: median(cold) - median(warm), fetchMs: median(fetchMs), parseMs: median(parseMs), activateMs: median(activateMs) };
        rows.push(row);
        ctx.log(`${source}: cold ${row.coldMs.toFixed(0)} ms, warm ${row.warmMs.toFixed(0)} ms → +${row.extraMs.toFixed(0)} ms (fetch ${row.fetchMs.toFixed(0)}, parse ${row.parseMs.toFixed(0)}, activate ${row.activateMs.toFixed(0)})`);
      }
      const bytes = registry.list()[0]?.bytes ?? 0;
      await sources.close();
      const localRow = rows[0];
      return {
        json: { rank: 16, adapterBytes: bytes, rows },
        summary: [
          { figure: "cold − warm TTFT, local rank-16 adapter", value: `${localRow.extraMs.toFixed(0)} ms`, target: "≤ 50 ms", met: localRow.extraMs <= 50 },
          ...rows.slice(1).map((r) => ({ figure: `cold − warm TTFT, ${r.source}`, value: `${r.extraMs.toFixed(0)} ms (fetch ${r.fetchMs.toFixed(0)} + parse ${r.parseMs.toFixed(0)} + activate ${r.activateMs.toFixed(0)})` })),
        ],
        charts: [
          {
            kind: "bars", file: "cold-load-by-source.png", title: "Cold adapter load by source", subtitle: `rank-16 adapter of the bench model (${(bytes / 1e6).toFixed(0)} MB f32), phases in ms`,
            yLabel: "milliseconds", categories: rows.map((r) => r.source),
            series: [
              { name: "fetch", values: rows.map((r) => r.fetchMs) },
              { name: "parse", values: rows.map((r) => r.parseMs) },
              { name: "activate", values: rows.map((r) => r.activateMs) },
              { name: "cold − warm TTFT", values: rows.map((r) => r.extraMs) },
            ],
            format: (v) => v.toFixed(0),
          },
        ],
      };
    } finally {
      engine.backend.close();
      await hub.close();
      await s3.close();
      fs.rmSync(work, { recursive: true, force: true });
    }
  },
};

export default section;
