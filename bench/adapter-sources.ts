// Adapter-source benchmark: the *fetch* part of a cold load of a rank-16 adapter of the bench model (~28 MB, F32,
// all seven targets, random bytes in a valid safetensors file) from hub (fake Hub), s3 (s3rver) and local.
// Parse and activate belong to the full cold-load benchmark; this reports what `fetchAdapter` returns.
// Run: `tsx bench/adapter-sources.ts [--reps N]` (default 5). Everything listens on 127.0.0.1 only.

import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type AdapterSources, type SourceLogger, type SourceName, createAdapterSources, fetchAdapter } from "../engine/src/adapters/sources/index.js";
import { BENCH_SHAPE } from "../scripts/bench-model.js";
import { FakeHub, type FakeFile, safetensors } from "../test/helpers/fake-hub.js";
import { S3RVER_CREDENTIALS, TestS3 } from "../test/helpers/s3.js";

const RANK = 16;
const quiet: SourceLogger = { debug() {}, info() {}, warn() {}, error() {} };

/** A PEFT rank-16 LoRA over q/k/v/o/gate/up/down of every layer of the bench model, F32 random weights. */
export function benchAdapterFiles(): FakeFile[] {
  const { hidden: H, layers, heads, kvHeads, intermediate: I } = BENCH_SHAPE;
  const hd = H / heads;
  const dims: Record<string, [number, number]> = {
    "self_attn.q_proj": [H, heads * hd],
    "self_attn.k_proj": [H, kvHeads * hd],
    "self_attn.v_proj": [H, kvHeads * hd],
    "self_attn.o_proj": [heads * hd, H],
    "mlp.gate_proj": [H, I],
    "mlp.up_proj": [H, I],
    "mlp.down_proj": [I, H],
  };
  const tensors: Parameters<typeof safetensors>[0] = {};
  for (let l = 0; l < layers; l++) {
    for (const [m, [dIn, dOut]] of Object.entries(dims)) {
      const p = `base_model.model.model.layers.${l}.${m}`;
      tensors[`${p}.lora_A.weight`] = { dtype: "F32", shape: [RANK, dIn] };
      tensors[`${p}.lora_B.weight`] = { dtype: "F32", shape: [dOut, RANK] };
    }
  }
  const config = {
    peft_type: "LORA",
    task_type: "CAUSAL_LM",
    r: RANK,
    lora_alpha: 2 * RANK,
    target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    base_model_name_or_path: "loraserve/bench-model",
  };
  return [
    { path: "adapter_config.json", content: Buffer.from(JSON.stringify(config, null, 2)) },
    { path: "adapter_model.safetensors", content: safetensors(tensors), lfs: true },
  ];
}

interface Row {
  source: SourceName;
  coldMs: number[];
  resolveMs: number[];
  downloadMs: number[];
  warmMs: number[];
  bytes: number;
}

const median = (xs: number[]): number => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function freshSources(work: string, hubUrl: string, s3Endpoint: string, localRoot: string): Promise<AdapterSources> {
  const dataDir = await mkdtemp(join(work, "data-"));
  return createAdapterSources({
    dataDir,
    localRoots: [localRoot],
    logger: quiet,
    hub: { endpoint: hubUrl, cacheDir: join(dataDir, "hf-hub") },
    s3: { endpoint: s3Endpoint, credentials: S3RVER_CREDENTIALS },
  });
}

export async function runAdapterSourcesBench(reps = 5): Promise<Row[]> {
  const files = benchAdapterFiles();
  const work = await mkdtemp(join(tmpdir(), "loraserve-bench-sources-"));
  const hub = await FakeHub.start();
  const s3 = await TestS3.start(["bench"]);
  try {
    hub.addRepo("bench/rank16", files);
    await s3.putAll("bench", "adapters/rank16", files);
    const localRoot = join(work, "local");
    await mkdir(join(localRoot, "rank16"), { recursive: true });
    for (const f of files) await writeFile(join(localRoot, "rank16", f.path), f.content);

    const cases: [SourceName, string][] = [
      ["hub", "bench/rank16"],
      ["s3", "s3://bench/adapters/rank16"],
      ["local", join(localRoot, "rank16")],
    ];
    const rows: Row[] = [];
    for (const [source, id] of cases) {
      const row: Row = { source, coldMs: [], resolveMs: [], downloadMs: [], warmMs: [], bytes: 0 };
      for (let i = 0; i < reps; i++) {
        const sources = await freshSources(work, hub.url, s3.endpoint, localRoot);
        const cold = await fetchAdapter(sources, source, id);
        const t0 = performance.now();
        await sources.checkAccess(source, id, undefined);
        await fetchAdapter(sources, source, id);
        const warmMs = performance.now() - t0;
        row.coldMs.push(cold.timings.totalMs);
        row.resolveMs.push(cold.timings.resolveMs);
        row.downloadMs.push(cold.timings.downloadMs);
        row.warmMs.push(warmMs);
        row.bytes = cold.bytes;
        await sources.close();
      }
      rows.push(row);
    }
    return rows;
  } finally {
    await hub.close();
    await s3.close();
    await rm(work, { recursive: true, force: true });
  }
}

function printTable(rows: Row[], reps: number): void {
  const mb = rows[0].bytes / 1e6;
  console.log(`adapter fetch, rank ${RANK} of the bench model (${mb.toFixed(1)} MB), median of ${reps} cold fetches on 127.0.0.1`);
  console.log("source  cold fetch ms  resolve ms  download ms  MB/s     cached: check + fetch ms");
  for (const r of rows) {
    const cold = median(r.coldMs);
    const rate = cold > 0 ? mb / (cold / 1000) : Infinity;
    console.log(
      `${r.source.padEnd(6)}  ${cold.toFixed(0).padStart(13)}  ${median(r.resolveMs).toFixed(0).padStart(10)}  ${median(r.downloadMs).toFixed(0).padStart(11)}  ${rate.toFixed(0).padStart(7)}  ${median(r.warmMs).toFixed(1).padStart(24)}`,
    );
  }
  console.log("local reads in place (path checks only); hub and s3 copy into the cache. A cached hub fetch still pays the access check.");
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const at = process.argv.indexOf("--reps");
  const reps = at >= 0 ? Number(process.argv[at + 1]) : 5;
  if (!Number.isInteger(reps) || reps < 1) throw new Error(`--reps must be a positive integer, got ${process.argv[at + 1]}`);
  printTable(await runAdapterSourcesBench(reps), reps);
}
