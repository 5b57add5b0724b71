// Adapters through the HTTP API with a fake Hugging Face Hub on 127.0.0.1: public, private, gated, missing,
// incompatible and unreachable adapters map to 200/401/403/404/422/502; tokens follow SPEC §3 and never reach
// the logs; admin routes register and unregister names; merged adapters equal an offline merge.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { FakeHub, type FakeFile } from "../helpers/fake-hub.js";
import { writeAdapter, type WrittenModule } from "../helpers/lora.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { expectSchema } from "../helpers/contract.js";
import { readSafetensorsHeader, readTensorF32, writeSafetensors, type TensorToWrite } from "../../engine/src/model/safetensors.js";

let hub: FakeHub;
let srv: TestServer;
let tmp: string;
const SHAPE = { numLayers: 2, hiddenSize: 64, intermediateSize: 160, numHeads: 4, numKvHeads: 2, headDim: 16, vocabSize: 32000 };
const GOOD = "tok-good-0123456789", OTHER = "tok-other-9876543210";
const mods: Record<string, WrittenModule[]> = {};

function adapterFiles(name: string, seed: number, shape = SHAPE): FakeFile[] {
  const dir = path.join(tmp, "src", name);
  mods[name] = writeAdapter(dir, shape, { rank: 8, alpha: 16, targets: ["q_proj", "v_proj", "down_proj"], seed, bScale: 2 });
  return fs.readdirSync(dir).map((f) => ({ path: f, content: fs.readFileSync(path.join(dir, f)) }));
}

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "loraserve-http-adapters-"));
  hub = await FakeHub.start();
  hub.validTokens.add(GOOD);
  hub.validTokens.add(OTHER);
  hub.addRepo("acme/public", adapterFiles("public", 1));
  hub.addRepo("acme/second", adapterFiles("second", 2));
  hub.addRepo("acme/private", adapterFiles("private", 3), { private: true, readers: [GOOD] });
  hub.addRepo("acme/gated", adapterFiles("gated", 4), { gated: true });
  hub.addRepo("acme/wrong-shape", adapterFiles("wrong", 5, { ...SHAPE, hiddenSize: 32 }));
  process.env.HF_ENDPOINT = hub.url;
  process.env.HF_HOME = path.join(tmp, "hf");
  delete process.env.LORAX_USE_GLOBAL_HF_TOKEN;
  srv = await startTestServer(["--data-dir", path.join(tmp, "data"), "--max-active-adapters", "4"]);
});
afterAll(async () => {
  await srv.close();
  await hub.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

const gen = (parameters: Record<string, unknown>, headers: Record<string, string> = {}) =>
  fetch(`${srv.url}/generate`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify({ inputs: "The adapter says", parameters: { max_new_tokens: 8, ...parameters } }) }).then(async (r) => ({ status: r.status, body: (await r.json()) as any }));

describe("statuses by adapter", () => {
  it("a public Hub adapter serves and changes the output", async () => {
    const base = await gen({});
    const a = await gen({ adapter_id: "acme/public" });
    expect(a.status).toBe(200);
    expect(a.body.generated_text).not.toBe(base.body.generated_text);
    const chat = await fetch(`${srv.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: "acme/public", messages: [{ role: "user", content: "hi" }], max_tokens: 4 }) });
    expect(chat.status).toBe(200);
  });

  it("private: 401 without a token or with a wrong one; 200 with the body token or the header", async () => {
    const none = await gen({ adapter_id: "acme/private" });
    expect(none.status).toBe(401);
    expectSchema("NativeError", none.body);
    expect((await gen({ adapter_id: "acme/private", api_token: OTHER })).status).toBe(404);
    expect((await gen({ adapter_id: "acme/private", api_token: "tok-unknown-000000" })).status).toBe(401);
    expect((await gen({ adapter_id: "acme/private", api_token: GOOD })).status).toBe(200);
    expect((await gen({ adapter_id: "acme/private" }, { authorization: `Bearer ${GOOD}` })).status).toBe(200);
    // The body token wins over the header.
    expect((await gen({ adapter_id: "acme/private", api_token: "tok-unknown-000000" }, { authorization: `Bearer ${GOOD}` })).status).toBe(401);
  });

  it("a revoked token is refused although the adapter is cached", async () => {
    hub.addRepo("acme/private2", adapterFiles("private2", 6), { private: true, readers: [OTHER] });
    expect((await gen({ adapter_id: "acme/private2", api_token: OTHER })).status).toBe(200);
    hub.revoke(OTHER);
    const r = await gen({ adapter_id: "acme/private2", api_token: OTHER });
    expect(r.status).toBe(401);
  });

  it("gated → 403, missing → 404, wrong shapes → 422, all in both error shapes", async () => {
    expect((await gen({ adapter_id: "acme/gated", api_token: GOOD })).status).toBe(403);
    // Like the real Hub, a missing repo looks private to an anonymous caller (401); with a token it is a 404.
    expect((await gen({ adapter_id: "acme/nope" })).status).toBe(401);
    const missing = await gen({ adapter_id: "acme/nope", api_token: GOOD });
    expect(missing.status).toBe(404);
    const wrong = await gen({ adapter_id: "acme/wrong-shape" });
    expect(wrong.status).toBe(422);
    expect(wrong.body.error).toMatch(/has shape \[8,32\].*\[8,64\]/);
    const o = await fetch(`${srv.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: "acme/nope", prompt: "x", max_tokens: 2, api_token: GOOD }) });
    expect(o.status).toBe(404);
    expectSchema("OpenAIError", await o.json());
  });

  it("an upstream that fails → 502, and other adapters keep serving", async () => {
    hub.addRepo("acme/flaky", adapterFiles("flaky", 7));
    hub.failNext("revision", 100, 503);
    const r = await gen({ adapter_id: "acme/flaky" });
    expect(r.status).toBe(502);
    hub.clearFaults();
    expect((await gen({ adapter_id: "acme/public" })).status).toBe(200);
    expect((await gen({ adapter_id: "acme/flaky" })).status).toBe(200);
  });

  it("no token ever reaches the logs", () => {
    const all = srv.logs.join("");
    expect(all.length).toBeGreaterThan(1000);
    expect(all).not.toContain(GOOD);
    expect(all).not.toContain(OTHER);
  });
});

describe("admin routes and /v1/models", () => {
  it("load_lora_adapter registers a name (pinned), /v1/models shows it, unload removes it", async () => {
    const load = await fetch(`${srv.url}/v1/load_lora_adapter`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ lora_name: "my-sql", lora_path: "acme/second", pinned: true }) });
    expect(load.status).toBe(200);
    expectSchema("AdapterOpResponse", await load.json());
    const models = (await (await fetch(`${srv.url}/v1/models`)).json()) as any;
    expectSchema("ModelList", models);
    const m = models.data.find((x: { id: string }) => x.id === "my-sql");
    expect(m).toMatchObject({ parent: srv.ctx.modelId, status: "active", pinned: true });
    const c = await fetch(`${srv.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: "my-sql", prompt: "x", max_tokens: 3, temperature: 0 }) });
    expect(c.status).toBe(200);
    const un = await fetch(`${srv.url}/v1/unload_lora_adapter`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ lora_name: "my-sql" }) });
    expect(un.status).toBe(200);
    const again = await fetch(`${srv.url}/v1/unload_lora_adapter`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ lora_name: "my-sql" }) });
    expect(again.status).toBe(404);
  });
});

describe("merged adapters", () => {
  /** PEFT's linear combination, written out here: each adapter's weight × scale folded as √ into A and B. */
  function mergeOffline(names: string[], weights: number[], out: string): void {
    fs.mkdirSync(out, { recursive: true });
    const first = path.join(tmp, "src", names[0]);
    const cfg = JSON.parse(fs.readFileSync(path.join(first, "adapter_config.json"), "utf8"));
    fs.writeFileSync(path.join(out, "adapter_config.json"), JSON.stringify({ ...cfg, lora_alpha: cfg.r }));
    const files = names.map((n) => path.join(tmp, "src", n, "adapter_model.safetensors"));
    const scale = cfg.lora_alpha / cfg.r;
    const tensors: TensorToWrite[] = readSafetensorsHeader(files[0]).map((t) => {
      const acc = new Float64Array(t.nbytes / 4);
      files.forEach((f, i) => {
        const e = readSafetensorsHeader(f).find((x) => x.name === t.name)!;
        const v = readTensorF32(f, e);
        const c = Math.sqrt(Math.abs(weights[i] * scale));
        for (let j = 0; j < v.length; j++) acc[j] += c * v[j];
      });
      return { name: t.name, dtype: "F32", shape: t.shape, data: Float32Array.from(acc) };
    });
    writeSafetensors(path.join(out, "adapter_model.safetensors"), tensors);
  }

  it("a linear merged request equals an adapter merged offline; a repeat is identical", async () => {
    const merged = { ids: ["acme/public", "acme/second"], weights: [0.7, 0.3], merge_strategy: "linear" };
    const a = await gen({ merged_adapters: merged, details: true });
    expect(a.status).toBe(200);
    const offline = path.join(tmp, "data", "offline-merge");
    mergeOffline(["public", "second"], [0.7, 0.3], offline);
    const b = await gen({ adapter_id: offline, adapter_source: "local", details: true });
    expect(b.status).toBe(200);
    expect(a.body.details.tokens.map((t: { id: number }) => t.id)).toEqual(b.body.details.tokens.map((t: { id: number }) => t.id));
    const ties = { ...merged, merge_strategy: "dare_ties", density: 0.5 };
    const t1 = await gen({ merged_adapters: ties, details: true });
    const t2 = await gen({ merged_adapters: ties, details: true });
    expect(t1.status).toBe(200);
    expect(t2.body.generated_text).toBe(t1.body.generated_text);
    const single = await gen({ adapter_id: "acme/public" });
    expect(t1.body.generated_text).not.toBe(single.body.generated_text);
  });

  it("invalid merges are 400s that say why", async () => {
    const r = await gen({ merged_adapters: { ids: ["acme/public", "acme/second"], merge_strategy: "ties" } });
    expect(r.status).toBe(400);
    expect(r.body.error).toMatch(/density/);
    const w = await gen({ merged_adapters: { ids: ["acme/public", "acme/second"], weights: [1] } });
    expect(w.status).toBe(400);
    expect(w.body.error).toMatch(/weights/);
  });
});
