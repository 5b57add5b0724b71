// supertest over every route of SPEC §5 on a live server: success bodies and SSE chunks validated against
// openapi/openapi.json, and the error statuses this layer owns (400, 401, 404, 413, 429) in both error shapes.
import request from "supertest";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { expectSchema } from "../helpers/contract.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

let srv: TestServer;
beforeAll(async () => (srv = await startTestServer()));
afterAll(() => srv.close());

const sse = (text: string) => text.split("\n\n").filter(Boolean).map((b) => b.replace(/^data: /, ""));

describe("native routes", () => {
  it("POST /generate with details, prefill and top tokens", async () => {
    const r = await request(srv.url).post("/generate").send({ inputs: "Hello world", parameters: { max_new_tokens: 5, details: true, decoder_input_details: true, top_n_tokens: 2, seed: 3, do_sample: true } });
    expect(r.status).toBe(200);
    expectSchema("GenerateResponse", r.body);
    const d = r.body.details;
    expect(d.generated_tokens).toBe(5);
    expect(d.tokens).toHaveLength(5);
    expect(d.prefill).toHaveLength(d.prompt_tokens);
    expect(d.prefill[0].logprob).toBeNull();
    expect(d.top_tokens[0]).toHaveLength(2);
    expect(d.seed).toBe(3);
    expect(r.body.generated_text).toBe(d.tokens.map((t: { text: string }) => t.text).join("").length > 0 ? r.body.generated_text : "");
  });

  it("return_full_text prepends the input; best_of returns the other sequences", async () => {
    const r = await request(srv.url).post("/generate").send({ inputs: "Hi", parameters: { max_new_tokens: 4, return_full_text: true, best_of: 2, do_sample: true, details: true } });
    expect(r.status).toBe(200);
    expectSchema("GenerateResponse", r.body);
    expect(r.body.generated_text.startsWith("Hi")).toBe(true);
    expect(r.body.details.best_of_sequences).toHaveLength(1);
  });

  it("POST /generate_stream: every event matches StreamResponse, the last carries the text", async () => {
    const r = await request(srv.url).post("/generate_stream").send({ inputs: "Once", parameters: { max_new_tokens: 6 } });
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toMatch(/text\/event-stream/);
    const events = sse(r.text).map((s) => JSON.parse(s));
    expect(events).toHaveLength(6);
    for (const e of events) expectSchema("StreamResponse", e);
    expect(events.slice(0, -1).every((e) => e.generated_text === null && e.details === null)).toBe(true);
    expect(events.at(-1).details.finish_reason).toBe("length");
    const full = await request(srv.url).post("/generate").send({ inputs: "Once", parameters: { max_new_tokens: 6 } });
    expect(events.at(-1).generated_text).toBe(full.body.generated_text);
  });

  it("POST /tokenize", async () => {
    const r = await request(srv.url).post("/tokenize").send({ inputs: "Hello world" });
    expect(r.status).toBe(200);
    expectSchema("TokenizeResponse", r.body);
    expect(r.body.length).toBeGreaterThan(1);
  });

  it("GET /health, /info, /v1/models, /metrics, /openapi.json", async () => {
    const h = await request(srv.url).get("/health");
    expect(h.status).toBe(200);
    expectSchema("Health", h.body);
    const i = await request(srv.url).get("/info");
    expectSchema("Info", i.body);
    expect(i.body.max_total_tokens).toBe(srv.ctx.engine.maxTotalTokens);
    const m = await request(srv.url).get("/v1/models");
    expectSchema("ModelList", m.body);
    expect(m.body.data[0].id).toBe(srv.ctx.modelId);
    const met = await request(srv.url).get("/metrics");
    expect(met.text).toMatch(/^lorax_request_count\{route="generate"\} \d+/m);
    expect(met.text).toMatch(/^lorax_request_duration_bucket/m);
    expect(met.text).toMatch(/^vllm:num_requests_running/m);
    const o = await request(srv.url).get("/openapi.json");
    expect(o.body.openapi).toBe("3.1.0");
    expect(Object.keys(o.body.paths)).toEqual(expect.arrayContaining(["/generate", "/v1/chat/completions", "/v1/load_lora_adapter"]));
  });

  it("/metrics reports speculation: tokens proposed and accepted, and the draft size the last step chose", async () => {
    const spec = await startTestServer(["--speculative-tokens", "4"], "llama-bf16-tied-linear"); // falls into repetition: lookups match
    try {
      const text = "one two three four one two three four one two three four";
      for (let i = 0; i < 3; i++) expect((await request(spec.url).post("/generate").send({ inputs: text, parameters: { max_new_tokens: 24 } })).status).toBe(200);
      const met = (await request(spec.url).get("/metrics")).text;
      expect(Number(/^loraserve_speculative_tokens_proposed (\d+)/m.exec(met)?.[1])).toBeGreaterThan(0);
      const size = Number(/^loraserve_speculative_draft_size (\d+)/m.exec(met)?.[1]);
      expect(size).toBeGreaterThanOrEqual(0);
      expect(size).toBeLessThanOrEqual(4);
    } finally {
      await spec.close();
    }
  });

  it("/metrics counts prefix-cache queries and hits in prompt tokens; --prefix-caching off turns the cache off", async () => {
    const inputs = "The same long system prompt, word for word, before every question we ask the model. ".repeat(3);
    const count = (met: string, name: string) => Number(new RegExp(`^vllm:${name}\\{[^}]*\\} (\\d+)`, "m").exec(met)?.[1] ?? 0);
    for (const [args, hits] of [[[], true], [["--prefix-caching", "off"], false]] as const) {
      const one = await startTestServer([...args]);
      try {
        for (const q of ["What?", "Why?"]) expect((await request(one.url).post("/generate").send({ inputs: inputs + q, parameters: { max_new_tokens: 2 } })).status).toBe(200);
        const met = (await request(one.url).get("/metrics")).text;
        if (hits) {
          expect(count(met, "prefix_cache_queries")).toBeGreaterThan(2 * 40);
          expect(count(met, "prefix_cache_hits")).toBeGreaterThanOrEqual(32); // the second prompt's shared full blocks
        } else {
          expect(count(met, "prefix_cache_hits")).toBe(0);
        }
      } finally {
        await one.close();
      }
    }
  });

  it("x-request-id is echoed, or made up", async () => {
    const a = await request(srv.url).get("/health").set("x-request-id", "abc-123");
    expect(a.headers["x-request-id"]).toBe("abc-123");
    const b = await request(srv.url).get("/health");
    expect(b.headers["x-request-id"]).toMatch(/^[0-9a-f-]{36}$/);
  });
});

describe("OpenAI routes over raw HTTP", () => {
  it("completion stream chunks match the contract and end in [DONE]", async () => {
    const r = await request(srv.url).post("/v1/completions").send({ model: "", prompt: ["a b", "c d"], max_tokens: 3, stream: true, n: 2, temperature: 0, stream_options: { include_usage: true } });
    const parts = sse(r.text);
    expect(parts.at(-1)).toBe("[DONE]");
    const chunks = parts.slice(0, -1).map((p) => JSON.parse(p));
    for (const c of chunks) expectSchema("CompletionResponse", c);
    const finished = chunks.flatMap((c) => c.choices.filter((x: { finish_reason: string | null }) => x.finish_reason).map((x: { index: number }) => x.index));
    expect(finished.sort()).toEqual([0, 1, 2, 3]);
    expect(chunks.at(-1).usage.completion_tokens).toBe(12);
  });

  it("chat stream chunks match the contract", async () => {
    const r = await request(srv.url).post("/v1/chat/completions").send({ model: "", messages: [{ role: "user", content: "x" }], max_tokens: 3, stream: true, logprobs: true, top_logprobs: 1 });
    const parts = sse(r.text);
    expect(parts.at(-1)).toBe("[DONE]");
    for (const p of parts.slice(0, -1)) expectSchema("ChatCompletionChunk", JSON.parse(p));
  });
});

describe("errors", () => {
  it("400 in both shapes, naming the field", async () => {
    const a = await request(srv.url).post("/v1/chat/completions").send({ model: "", messages: [{ role: "user", content: "x" }], max_tokens: "many" });
    expect(a.status).toBe(400);
    expectSchema("OpenAIError", a.body);
    expect(a.body.error.message).toMatch(/max_tokens/);
    const b = await request(srv.url).post("/generate").send({ inputs: "x", parameters: { max_new_tokens: -1 } });
    expect(b.status).toBe(400);
    expectSchema("NativeError", b.body);
    expect(b.body.error).toMatch(/parameters.max_new_tokens/);
    const c = await request(srv.url).post("/generate").send({ inputs: "x", parameters: { bogus: 1 } });
    expect(c.body.error).toMatch(/unknown field "parameters.bogus"/);
    const d = await request(srv.url).post("/generate").set("content-type", "application/json").send("{not json");
    expect(d.status).toBe(400);
    expect(d.body.error).toMatch(/not valid JSON/);
    const e = await request(srv.url).post("/generate").send({ inputs: "x".repeat(50), parameters: { max_new_tokens: 10 ** 7 } });
    expect(e.status).toBe(400);
    expect(e.body.error).toMatch(/exceeds max_total_tokens/);
    // Of the forms a value may take, the message follows the one it got furthest into.
    const mixed = await request(srv.url).post("/v1/completions").send({ model: "", prompt: ["a", 3], max_tokens: 2 });
    expect(mixed.body.error).toMatchObject({ param: "prompt[1]", message: "prompt[1] must be string, got 3" });
    // A field of the OpenAI format this server does not do (suffix) says so, and takes null.
    const suffix = await request(srv.url).post("/v1/completions").send({ model: "", prompt: "x", max_tokens: 2, suffix: "y" });
    expect(suffix.body.error.message).toBe("suffix is not supported by this server: leave it out or send it empty");
  });

  it("404 for an unknown route", async () => {
    const r = await request(srv.url).get("/v1/nope");
    expect(r.status).toBe(404);
    expectSchema("OpenAIError", r.body);
  });

  it("413 for a body over --payload-limit", async () => {
    const r = await request(srv.url).post("/generate").send({ inputs: "x".repeat(2_100_000) });
    expect(r.status).toBe(413);
    expectSchema("NativeError", r.body);
    expect(r.body.error).toMatch(/over the 2000000-byte limit/);
  });

  it("a failure mid-stream ends with an error event, in each route's shape", async () => {
    // A dedicated server whose native model is closed under running streams: the next step fails.
    const doomed = await startTestServer();
    try {
      const native = fetch(`${doomed.url}/generate_stream`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ inputs: "x", parameters: { max_new_tokens: 500 } }) });
      const openai = fetch(`${doomed.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: "", messages: [{ role: "user", content: "x" }], max_tokens: 500, stream: true }) });
      while (doomed.ctx.engine.scheduler.runningCount < 2) await new Promise((r) => setTimeout(r, 2));
      await new Promise((r) => setTimeout(r, 30));
      doomed.ctx.engine.backend.close();
      const n = sse(await (await native).text());
      const last = JSON.parse(n.at(-1)!);
      expectSchema("NativeError", last);
      expect(last.error).toMatch(/model is closed/);
      const o = sse(await (await openai).text());
      const lastO = JSON.parse(o.at(-1)!);
      expect(lastO.error.type).toBe("server_error");
      expect(lastO.status_code).toBe(500);
    } finally {
      await doomed.close().catch(() => {});
    }
  });
});

describe("auth and limits", () => {
  let locked: TestServer;
  beforeAll(async () => (locked = await startTestServer(["--api-keys", "k1,k2", "--rate-limit-rpm", "3"])));
  afterAll(() => locked.close());

  it("401 without a valid key, 200 with one; /health stays open", async () => {
    const no = await request(locked.url).post("/generate").send({ inputs: "x", parameters: { max_new_tokens: 1 } });
    expect(no.status).toBe(401);
    expectSchema("NativeError", no.body);
    const bad = await request(locked.url).post("/v1/completions").set("Authorization", "Bearer nope").send({ model: "", prompt: "x", max_tokens: 1 });
    expect(bad.status).toBe(401);
    expectSchema("OpenAIError", bad.body);
    const ok = await request(locked.url).post("/generate").set("Authorization", "Bearer k2").send({ inputs: "x", parameters: { max_new_tokens: 1 } });
    expect(ok.status).toBe(200);
    expect((await request(locked.url).get("/health")).status).toBe(200);
  });

  it("429 with Retry-After past --rate-limit-rpm, per caller", async () => {
    const call = (key: string) => request(locked.url).post("/tokenize").set("Authorization", `Bearer ${key}`).send({ inputs: "x" });
    const statuses = [];
    for (let i = 0; i < 4; i++) statuses.push((await call("k1")).status);
    expect(statuses.slice(0, 2)).toEqual([200, 200]);
    const limited = await call("k1");
    expect(limited.status).toBe(429);
    expect(Number(limited.headers["retry-after"])).toBeGreaterThan(0);
    expectSchema("NativeError", limited.body);
    expect((await call("k2")).status).toBe(200);
  });
});
