// The official `openai` npm client and LangChain's OpenAI integrations against a live server: completions and
// chat, streaming and not, n, stop, logprobs, seeds; invalid requests surface as the SDK's error classes.
import { ChatOpenAI, OpenAI as LangChainOpenAI } from "@langchain/openai";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { expectSchema } from "../helpers/contract.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

let srv: TestServer;
let client: OpenAI;

beforeAll(async () => {
  srv = await startTestServer(["--max-concurrent-requests", "8", "--served-model-name", "tiny-llama,tiny"]);
  client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "unused", maxRetries: 0 });
});
afterAll(() => srv.close());

describe("openai client", () => {
  it("completions: text, usage, finish_reason length", async () => {
    const r = await client.completions.create({ model: "", prompt: "The weather today is", max_tokens: 6, temperature: 0 });
    expectSchema("CompletionResponse", r);
    expect(r.choices).toHaveLength(1);
    expect(r.choices[0].finish_reason).toBe("length");
    expect(r.usage!.completion_tokens).toBe(6);
    expect(r.choices[0].text.length).toBeGreaterThan(0);
  });

  it("completions with logprobs and echo", async () => {
    const r = await client.completions.create({ model: "", prompt: "One two three", max_tokens: 3, temperature: 0, logprobs: 2, echo: true });
    const lp = r.choices[0].logprobs!;
    expect(r.choices[0].text.startsWith("One two three")).toBe(true);
    expect(lp.tokens!.length).toBe(r.usage!.prompt_tokens + 3);
    expect(lp.token_logprobs![0]).toBeNull();
    expect(Object.keys(lp.top_logprobs!.at(-1)!)).toHaveLength(2);
  });

  it("chat: greedy is deterministic and equals its stream", async () => {
    const body = { model: "", messages: [{ role: "user" as const, content: "Tell me a story" }], max_tokens: 12, temperature: 0 };
    const a = await client.chat.completions.create(body);
    expectSchema("ChatCompletionResponse", a);
    const b = await client.chat.completions.create(body);
    expect(b.choices[0].message.content).toBe(a.choices[0].message.content);
    const stream = await client.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } });
    let text = "";
    let usage: OpenAI.CompletionUsage | undefined | null;
    let finish: string | null = null;
    for await (const chunk of stream) {
      expectSchema("ChatCompletionChunk", chunk);
      text += chunk.choices[0]?.delta?.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toBe(a.choices[0].message.content);
    expect(finish).toBe("length");
    expect(usage?.completion_tokens).toBe(12);
  });

  it("chat: n=2 with a seed is reproducible, and sequences differ", async () => {
    const body = { model: "", messages: [{ role: "user" as const, content: "Hi" }], max_tokens: 10, temperature: 1.5, n: 2, seed: 11 };
    const a = await client.chat.completions.create(body);
    const b = await client.chat.completions.create(body);
    expect(a.choices.map((c) => c.index)).toEqual([0, 1]);
    expect(b.choices.map((c) => c.message.content)).toEqual(a.choices.map((c) => c.message.content));
    expect(a.choices[0].message.content).not.toBe(a.choices[1].message.content);
  });

  it("chat: stop sequence ends the text before it", async () => {
    const base = await client.chat.completions.create({ model: "", messages: [{ role: "user", content: "Go" }], max_tokens: 20, temperature: 0 });
    const full = base.choices[0].message.content!;
    const stop = full.slice(6, 9);
    const r = await client.chat.completions.create({ model: "", messages: [{ role: "user", content: "Go" }], max_tokens: 20, temperature: 0, stop: [stop] });
    expect(r.choices[0].finish_reason).toBe("stop");
    expect(r.choices[0].message.content).toBe(full.slice(0, full.indexOf(stop)));
  });

  it("chat: logprobs with top_logprobs in the chat shape", async () => {
    const r = await client.chat.completions.create({ model: "", messages: [{ role: "user", content: "Hello" }], max_tokens: 4, temperature: 0, logprobs: true, top_logprobs: 3 });
    const content = r.choices[0].logprobs!.content!;
    expect(content).toHaveLength(4);
    for (const t of content) {
      expect(t.top_logprobs).toHaveLength(3);
      expect(t.logprob).toBeCloseTo(t.top_logprobs[0].logprob, 5); // greedy picks the top token
      expect(t.bytes).toEqual(Array.from(Buffer.from(t.token)));
    }
  });

  it("logit_bias: +100 forces a token, -100 bans the greedy one, logprobs stay the model's; bad entries → 400 naming them", async () => {
    const body = { model: "", prompt: "The weather today is", max_tokens: 3, temperature: 0, logprobs: 2 };
    const plain = await client.completions.create(body);
    const greedy = plain.choices[0].logprobs!;
    const forced = 1000;
    const f = await client.completions.create({ ...body, logit_bias: { [forced]: 100 } });
    expect(f.choices[0].text).toBe(srv.ctx.engine.tokenizer.decode([forced, forced, forced]));
    // The logprob reported for the forced token is its raw one, below the greedy token's; the alternatives are the model's.
    expect(f.choices[0].logprobs!.token_logprobs![0]).toBeLessThan(greedy.token_logprobs![0]!);
    expect(f.choices[0].logprobs!.top_logprobs![0]).toEqual(greedy.top_logprobs![0]);
    // The greedy first token's id, from the native API's details; banned, the runner-up takes its place.
    const details = (await (await fetch(`${srv.url}/generate`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ inputs: body.prompt, parameters: { max_new_tokens: 1, details: true } }) })).json()) as any;
    expect(details.details.tokens[0].text).toBe(greedy.tokens![0]);
    const banned = await client.completions.create({ ...body, max_tokens: 1, logit_bias: { [details.details.tokens[0].id]: -100 } });
    const [, runnerUp] = Object.entries(greedy.top_logprobs![0]).sort((x, y) => y[1] - x[1]);
    expect(banned.choices[0].logprobs!.tokens![0]).toBe(runnerUp[0]);
    for (const [bias, named] of [[{ "99999999": 1 }, /token 99999999, outside/], [{ abc: 1 }, /key "abc"/], [{ "5": 101 }, /logit_bias\[5\] must be <= 100, got 101/]] as const) {
      const err = await client.completions.create({ ...body, logit_bias: bias as Record<string, number> }).catch((e) => e);
      expect(err).toBeInstanceOf(OpenAI.BadRequestError);
      expect(err.param).toMatch(/^logit_bias/);
      expect(err.message).toMatch(named);
    }
  });

  it("--served-model-name: the base model's id in models.list, and every name (or \"\") selects it", async () => {
    const models = await client.models.list();
    expect(models.data[0]).toMatchObject({ id: "tiny-llama", object: "model" });
    const body = { prompt: "The weather today is", max_tokens: 5, temperature: 0 };
    const want = (await client.completions.create({ ...body, model: "" })).choices[0].text;
    for (const model of ["tiny-llama", "tiny", srv.ctx.modelId]) expect((await client.completions.create({ ...body, model })).choices[0].text, model).toBe(want);
    const taken = await fetch(`${srv.url}/v1/load_lora_adapter`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ lora_name: "tiny", lora_path: "/nowhere" }) });
    expect(taken.status).toBe(400);
    expect(((await taken.json()) as any).error.message).toBe('lora_name "tiny" names the base model: choose another name');
  });

  it("usage.prompt_tokens_details.cached_tokens: the prompt tokens the prefix cache held, streamed or not", async () => {
    const system = "You answer in one word. The rules: be brief, be kind, never repeat a question back. ".repeat(4);
    const ask = (q: string, stream: boolean) =>
      client.chat.completions.create({ model: "", messages: [{ role: "system", content: system }, { role: "user", content: q }], max_tokens: 2, temperature: 0, ...(stream ? { stream: true as const, stream_options: { include_usage: true } } : {}) } as any);
    const first = (await ask("What is the sea?", false)) as OpenAI.ChatCompletion;
    expect(first.usage!.prompt_tokens_details!.cached_tokens).toBe(0);
    const second = (await ask("What is the sky?", false)) as OpenAI.ChatCompletion;
    const cached = second.usage!.prompt_tokens_details!.cached_tokens!;
    expect(cached).toBeGreaterThanOrEqual(64);
    expect(cached % 16).toBe(0);
    expect(cached).toBeLessThan(second.usage!.prompt_tokens);
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of (await ask("What is the sun?", true)) as any) if (chunk.usage) usage = chunk.usage;
    expect(usage!.prompt_tokens_details!.cached_tokens).toBe(cached);
    const completion = await client.completions.create({ model: "", prompt: system + "Why?", max_tokens: 2, temperature: 0 });
    expectSchema("CompletionResponse", completion);
    expect(completion.usage!.prompt_tokens_details!.cached_tokens).toBe(0); // no chat template around it: another prefix
  });

  it("invalid requests raise the SDK's error classes", async () => {
    await expect(client.chat.completions.create({ model: "", messages: [], max_tokens: 4 })).rejects.toBeInstanceOf(OpenAI.BadRequestError);
    await expect(client.completions.create({ model: "", prompt: "x", max_tokens: 10 ** 9 })).rejects.toBeInstanceOf(OpenAI.BadRequestError);
    await expect(client.chat.completions.create({ model: "", messages: [{ role: "user", content: "x" }], temperature: 7 })).rejects.toBeInstanceOf(OpenAI.BadRequestError);
    const err = await client.completions.create({ model: "", prompt: "x", max_tokens: 2, top_p: 0 } as any).catch((e) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect(err.param).toBe("top_p");
    expect(err.message).toMatch(/top_p/);
    await expect(client.models.retrieve("nope")).rejects.toBeInstanceOf(OpenAI.NotFoundError);
  });

  it("more than --max-concurrent-requests in flight → RateLimitError with Retry-After", async () => {
    expect(srv.ctx.engine.requestsInFlight).toBe(0);
    const long = Array.from({ length: 8 }, () => client.completions.create({ model: "", prompt: "a", max_tokens: 60, temperature: 0 }));
    while (srv.ctx.engine.requestsInFlight < 8) await new Promise((r) => setTimeout(r, 5));
    const err = await client.completions.create({ model: "", prompt: "b", max_tokens: 2 }).catch((e) => e);
    expect(err).toBeInstanceOf(OpenAI.RateLimitError);
    expect(err.headers.get("retry-after")).toBe("1");
    await Promise.all(long);
  });
});

describe("langchain", () => {
  it("ChatOpenAI invoke and stream", async () => {
    const chat = new ChatOpenAI({ model: "", apiKey: "unused", temperature: 0, maxTokens: 8, configuration: { baseURL: `${srv.url}/v1` }, maxRetries: 0 });
    const msg = await chat.invoke("Say something");
    expect(typeof msg.content).toBe("string");
    expect((msg.content as string).length).toBeGreaterThan(0);
    let streamed = "";
    for await (const chunk of await chat.stream("Say something")) streamed += chunk.content as string;
    expect(streamed).toBe(msg.content);
  });

  it("OpenAI (completions) invoke and stream", async () => {
    const llm = new LangChainOpenAI({ model: "", apiKey: "unused", temperature: 0, maxTokens: 8, configuration: { baseURL: `${srv.url}/v1` }, maxRetries: 0 });
    const text = await llm.invoke("The capital of France is");
    expect(text.length).toBeGreaterThan(0);
    let streamed = "";
    for await (const chunk of await llm.stream("The capital of France is")) streamed += chunk;
    expect(streamed).toBe(text);
  });
});
