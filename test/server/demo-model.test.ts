// The demo model that ships in models/demo, served as `npm start` serves it: it loads with its adapters
// registered by name, each adapter changes the greedy output, and each adapter's perplexity on a held-out
// slice of its own corpus (computed through the server from prompt log-probabilities) beats the base model's.
import fs from "node:fs";
import path from "node:path";
import { Writable } from "node:stream";

import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { DEMO_MODEL_DIR, parseConfig } from "../../server/src/config.js";
import { startServer } from "../../server/src/main.js";

const ADAPTERS = ["kjv", "german", "bofh"] as const;
let url = "";
let close: () => Promise<void>;

beforeAll(async () => {
  const sink = new Writable({ write: (_c, _e, cb) => cb() });
  const s = await startServer(parseConfig(["--hostname", "127.0.0.1", "--port", "0", "--kv-cache-bytes", String(64 << 20), "--data-dir", path.join(DEMO_MODEL_DIR, "..", "..", "data")]), pino({ level: "silent" }, sink));
  const addr = s.server.address() as { port: number };
  url = `http://127.0.0.1:${addr.port}`;
  close = s.close;
});
afterAll(() => close?.());

const generate = (parameters: Record<string, unknown>, inputs = "A friend in need") =>
  fetch(`${url}/generate`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ inputs, parameters }) }).then(async (r) => ({ status: r.status, body: (await r.json()) as any }));

/** Perplexity of `text` under the model (or adapter): exp of the mean negative prompt-token log-probability. */
async function perplexity(text: string, adapter?: string): Promise<number> {
  const r = await generate({ max_new_tokens: 1, details: true, decoder_input_details: true, ...(adapter ? { adapter_id: adapter } : {}) }, text);
  expect(r.status).toBe(200);
  const lps = (r.body.details.prefill as { logprob: number | null }[]).flatMap((t) => (t.logprob === null ? [] : [t.logprob]));
  expect(lps.length).toBeGreaterThan(50);
  return Math.exp(-lps.reduce((a, b) => a + b, 0) / lps.length);
}

describe("the demo model", () => {
  it("is listed with its adapters", async () => {
    const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] };
    expect(models.data.map((m) => m.id)).toEqual(expect.arrayContaining([...ADAPTERS]));
  });

  it("writes text, and every adapter changes the greedy output of a fixed prompt", async () => {
    const base = await generate({ max_new_tokens: 24 });
    expect(base.status).toBe(200);
    expect(base.body.generated_text.split(" ").length).toBeGreaterThan(4);
    for (const a of ADAPTERS) {
      const r = await generate({ max_new_tokens: 24, adapter_id: a });
      expect(r.status).toBe(200);
      expect(r.body.generated_text, a).not.toBe(base.body.generated_text);
    }
  });

  it.each(ADAPTERS)("%s: perplexity on its held-out corpus is at least 10%% below the base model's", async (a) => {
    const text = fs.readFileSync(path.join(DEMO_MODEL_DIR, "heldout", `${a}.txt`), "utf8").slice(0, 1200);
    const base = await perplexity(text);
    const tuned = await perplexity(text, a);
    expect(tuned).toBeLessThan(base * 0.9);
  });
});
