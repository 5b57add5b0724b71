// The metrics LoRA-aware routers scrape (Gateway API Inference Extension: vLLM names), read over HTTP from a live
// server while two adapters compete for one slot. The metric implementation itself lives in server/src/metrics.ts.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { shapeOf, writeAdapter } from "../helpers/lora.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the Prometheus text format (samples only; comments and blank lines skipped). */
function parseProm(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m) throw new Error(`not a Prometheus sample line: ${line}`);
    const labels: Record<string, string> = {};
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/g;
    for (let l; (l = re.exec(m[2] ?? "")); ) labels[l[1]] = l[2].replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

let srv: TestServer;
let root: string;
let adapterA: string;
let adapterB: string;

async function scrape(): Promise<Sample[]> {
  const r = await fetch(`${srv.url}/metrics`);
  expect(r.status).toBe(200);
  return parseProm(await r.text());
}

const one = (s: Sample[], name: string): Sample => {
  const found = s.filter((x) => x.name === name);
  expect(found, `${name}: exactly one series`).toHaveLength(1);
  return found[0];
};

/** Polls /metrics until `ok` holds for the lora info series; returns that scrape. */
async function until(what: string, ok: (lora: Sample, all: Sample[]) => boolean, timeoutMs = 20_000): Promise<Sample[]> {
  const t0 = Date.now();
  let last: Sample[] = [];
  while (Date.now() - t0 < timeoutMs) {
    last = await scrape();
    const lora = last.filter((x) => x.name === "vllm:lora_requests_info");
    if (lora.length === 1 && ok(lora[0], last)) return last;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}; last lora info: ${JSON.stringify(last.filter((x) => x.name === "vllm:lora_requests_info"))}`);
}

async function complete(model: string, maxTokens: number): Promise<void> {
  const r = await fetch(`${srv.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, prompt: "The adapters take turns", max_tokens: maxTokens, ignore_eos: true, temperature: 0 }),
  });
  expect(r.status, await r.clone().text()).toBe(200);
  await r.json();
}

beforeAll(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), "loraserve-routing-"));
  srv = await startTestServer(["--adapter-local-roots", root, "--max-active-adapters", "1", "--adapter-cycle-time-s", "3600"]);
  adapterA = path.join(root, "adapter-a");
  adapterB = path.join(root, "adapter-b");
  const shape = shapeOf(srv.ctx.engine);
  writeAdapter(adapterA, shape, { rank: 4, alpha: 8, targets: ["q_proj", "v_proj"], seed: 1 });
  writeAdapter(adapterB, shape, { rank: 4, alpha: 8, targets: ["q_proj", "v_proj"], seed: 2 });
});

afterAll(async () => {
  await srv?.close();
  fs.rmSync(root, { recursive: true, force: true });
});

describe("routing metrics (Gateway API Inference Extension model-server protocol)", () => {
  it("reports the running adapter, the waiting adapter, max_lora, queue length and KV use while they compete", async () => {
    const idle = await scrape();
    expect(one(idle, "vllm:num_requests_running").value).toBe(0);
    expect(one(idle, "vllm:num_requests_waiting").value).toBe(0);
    const cache = one(idle, "vllm:cache_config_info");
    expect(cache.value).toBe(1);
    expect(cache.labels.block_size).toBe("16");
    expect(Number(cache.labels.num_gpu_blocks)).toBe(one(idle, "loraserve_kv_blocks_total").value);

    let pumping = true;
    const pump = async (tokens: number) => {
      while (pumping) await complete(adapterA, tokens);
    };
    const pumps = [pump(48), pump(64), pump(80)];
    await until("adapter A running", (l) => l.labels.running_lora_adapters === adapterA);
    const b = complete(adapterB, 160);

    const both = await until("A running while B waits", (l) => l.labels.running_lora_adapters === adapterA && l.labels.waiting_lora_adapters === adapterB);
    const lora = one(both, "vllm:lora_requests_info");
    expect(lora.labels.max_lora).toBe("1");
    expect(Math.abs(lora.value - Date.now() / 1000)).toBeLessThan(60);
    expect(one(both, "vllm:num_requests_waiting").value).toBeGreaterThanOrEqual(1);
    expect(one(both, "vllm:num_requests_running").value).toBeGreaterThanOrEqual(1);
    expect(one(both, "lorax_queue_size").value).toBe(one(both, "vllm:num_requests_waiting").value);
    const kv = one(both, "vllm:kv_cache_usage_perc").value;
    expect(kv).toBeGreaterThan(0);
    expect(kv).toBeLessThanOrEqual(1);
    expect(one(both, "vllm:gpu_cache_usage_perc").value).toBe(kv);
    expect(one(both, "vllm:num_requests_running").labels.model_name).toBe(srv.ctx.modelId);

    pumping = false;
    await until("B running once A has drained", (l) => l.labels.running_lora_adapters === adapterB && l.labels.waiting_lora_adapters === "");
    await Promise.all([...pumps, b]);

    const after = await until("idle", (l) => l.labels.running_lora_adapters === "" && l.labels.waiting_lora_adapters === "");
    expect(one(after, "vllm:num_requests_running").value).toBe(0);
    expect(one(after, "vllm:num_requests_waiting").value).toBe(0);
    expect(one(after, "lorax_queue_size").value).toBe(0);
    expect(one(after, "vllm:kv_cache_usage_perc").value).toBe(0);
  });
});
