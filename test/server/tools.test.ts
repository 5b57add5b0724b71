// Tool calling on /v1/chat/completions with the official `openai` client and LangChain against a live server
// on a tiny Qwen2 model whose chat template renders tools: a named function or "required" forces a call whose
// arguments follow the function's schema, streamed or not; "auto" returns what the model writes; earlier calls
// and tool results render; bad tool choices are 400s naming them. The reading of calls in each model family's
// format is checked on its own.
import { ChatOpenAI } from "@langchain/openai";
import { Ajv2020 } from "ajv/dist/2020.js";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { ToolStream, readCalls, toolPlan } from "../../server/src/tools.js";
import { expectSchema } from "../helpers/contract.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

let srv: TestServer;
let client: OpenAI;
beforeAll(async () => {
  srv = await startTestServer(["--served-model-name", "tiny"], "qwen2-bf16-bias");
  client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "unused", maxRetries: 0 });
});
afterAll(() => srv.close());

const WEATHER = {
  type: "object",
  properties: { city: { type: "string", maxLength: 12 }, unit: { enum: ["celsius", "fahrenheit"] }, days: { type: "integer", minimum: 1, maximum: 7 } },
  required: ["city", "unit", "days"],
  additionalProperties: false,
};
const TIME = { type: "object", properties: { zone: { type: "string", maxLength: 8 } }, required: ["zone"], additionalProperties: false };
const TOOLS: OpenAI.ChatCompletionTool[] = [
  { type: "function", function: { name: "get_weather", description: "Weather forecast for a city", parameters: WEATHER } },
  { type: "function", function: { name: "get_time", description: "The time in a zone", parameters: TIME } },
];
const ajv = new Ajv2020({ strict: false });
const valid = (schema: object, args: string) => ajv.validate(schema, JSON.parse(args));
const ask = (extra: Partial<OpenAI.ChatCompletionCreateParamsNonStreaming>) =>
  client.chat.completions.create({ model: "", messages: [{ role: "user", content: "What is the weather in Paris?" }], max_tokens: 80, temperature: 0.7, seed: 5, ...extra });

describe("tool calls through the openai client", () => {
  it("a named function: one call to it, arguments valid under its schema, content null, finish_reason tool_calls", async () => {
    for (const seed of [1, 2, 3]) {
      const r = await ask({ tools: TOOLS, tool_choice: { type: "function", function: { name: "get_weather" } }, seed });
      expectSchema("ChatCompletionResponse", r);
      const c = r.choices[0];
      expect(c.finish_reason).toBe("tool_calls");
      expect(c.message.content).toBeNull();
      expect(c.message.tool_calls).toHaveLength(1);
      const call = c.message.tool_calls![0] as OpenAI.ChatCompletionMessageToolCall & { type: "function" };
      expect(call.id).toMatch(/^call_[0-9a-f]{24}$/);
      expect(call.function.name).toBe("get_weather");
      expect(valid(WEATHER, call.function.arguments), call.function.arguments).toBe(true);
    }
  });

  it("\"required\" with parallel_tool_calls false: exactly one call, to an offered function, with valid arguments", async () => {
    const r = await ask({ tools: TOOLS, tool_choice: "required", parallel_tool_calls: false, max_tokens: 120 });
    const calls = r.choices[0].message.tool_calls as (OpenAI.ChatCompletionMessageToolCall & { type: "function" })[];
    expect(r.choices[0].finish_reason).toBe("tool_calls");
    expect(calls).toHaveLength(1);
    for (const c of calls) expect(valid(c.function.name === "get_weather" ? WEATHER : TIME, c.function.arguments)).toBe(true);
  });

  it("streamed: the call arrives whole in the last chunk, as the non-streamed answer has it", async () => {
    const body = { tools: TOOLS, tool_choice: { type: "function" as const, function: { name: "get_time" } }, seed: 9 };
    const whole = await ask(body);
    const stream = await client.chat.completions.create({ model: "", messages: [{ role: "user", content: "What is the weather in Paris?" }], max_tokens: 80, temperature: 0.7, ...body, stream: true });
    const deltas: OpenAI.ChatCompletionChunk.Choice.Delta.ToolCall[] = [];
    let finish: string | null = null, chunks = 0;
    for await (const chunk of stream) {
      chunks++;
      expectSchema("ChatCompletionChunk", chunk);
      deltas.push(...(chunk.choices[0]?.delta?.tool_calls ?? []));
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(finish).toBe("tool_calls");
    expect(deltas).toHaveLength(1);
    expect(chunks).toBe(2); // the role, then the call with the finish: no empty chunk per token
    const w = whole.choices[0].message.tool_calls![0] as OpenAI.ChatCompletionMessageToolCall & { type: "function" };
    expect(deltas[0]).toMatchObject({ index: 0, type: "function", function: { name: "get_time", arguments: w.function.arguments } });
  });

  it("\"auto\" streamed: text that holds no call streams token by token, and adds up to the non-streamed content", async () => {
    const body = { tools: TOOLS, temperature: 1.5, seed: 1, max_tokens: 24 }; // an answer with text in it
    const whole = await ask(body);
    const stream = await client.chat.completions.create({ model: "", messages: [{ role: "user", content: "What is the weather in Paris?" }], ...body, stream: true });
    let text = "", pieces = 0;
    for await (const chunk of stream) {
      const c = chunk.choices[0]?.delta?.content;
      if (c) (text += c), pieces++;
      expect(chunk.choices[0]?.delta?.tool_calls).toBeUndefined();
    }
    expect(text).toBe(whole.choices[0].message.content);
    expect(pieces).toBeGreaterThan(5);
  });

  it("\"auto\": the tools are rendered into the prompt; text that holds no call comes back as content", async () => {
    const plain = await ask({ temperature: 0, max_tokens: 4 });
    const r = await ask({ tools: TOOLS, temperature: 0, max_tokens: 4 });
    expect(r.usage!.prompt_tokens).toBeGreaterThan(plain.usage!.prompt_tokens + 40);
    expect(r.choices[0].message.tool_calls).toBeUndefined();
    expect(typeof r.choices[0].message.content).toBe("string");
    expect(r.choices[0].finish_reason).toBe("length");
  });

  it("a conversation with an earlier call and its result renders, and the result reaches the prompt", async () => {
    const call = { id: "call_1", type: "function" as const, function: { name: "get_weather", arguments: '{"city":"Paris","unit":"celsius","days":1}' } };
    const base: OpenAI.ChatCompletionMessageParam[] = [{ role: "user", content: "Weather in Paris?" }, { role: "assistant", content: null, tool_calls: [call] }];
    const short = await client.chat.completions.create({ model: "", messages: [...base, { role: "tool", tool_call_id: "call_1", content: "sunny" }], tools: TOOLS, max_tokens: 2 });
    const long = await client.chat.completions.create({ model: "", messages: [...base, { role: "tool", tool_call_id: "call_1", content: "sunny, 24 degrees, light wind from the west" }], tools: TOOLS, max_tokens: 2 });
    expect(long.usage!.prompt_tokens).toBeGreaterThan(short.usage!.prompt_tokens + 5);
  });

  it("bad tool choices are 400s that name the problem", async () => {
    const cases: [Partial<OpenAI.ChatCompletionCreateParamsNonStreaming>, RegExp, string][] = [
      [{ tools: TOOLS, tool_choice: { type: "function", function: { name: "nope" } } }, /"nope", which is not among tools \(get_weather, get_time\)/, "tool_choice"],
      [{ tool_choice: "required" }, /needs tools/, "tool_choice"],
      [{ tools: [TOOLS[0], TOOLS[0]] }, /same name/, "tools"],
      [{ tools: TOOLS, tool_choice: "required", response_format: { type: "json_object" } }, /cannot be combined/, "response_format"],
      // A parameters schema the grammar cannot take, named by where it is in the request, forced either way.
      [{ tools: [TOOLS[0], { type: "function", function: { name: "odd", parameters: { type: "banana" } } }], tool_choice: "required" }, / tools\[1\]\.function\.parameters\.type: .*"banana"/, "tools"],
      [{ tools: [{ type: "function", function: { name: "odd", parameters: { type: "banana" } } }], tool_choice: { type: "function", function: { name: "odd" } } }, / tools\[0\]\.function\.parameters\.type: .*"banana"/, "tools"],
    ];
    for (const [extra, message, param] of cases) {
      const err = await ask(extra).catch((e) => e);
      expect(err).toBeInstanceOf(OpenAI.BadRequestError);
      expect(err.message).toMatch(message);
      expect(err.param).toBe(param);
    }
  });
});

describe("LangChain", () => {
  it("ChatOpenAI.bindTools with a forced function gives an AIMessage with that call and object arguments", async () => {
    const chat = new ChatOpenAI({ model: "tiny", apiKey: "unused", configuration: { baseURL: `${srv.url}/v1` }, maxTokens: 80, temperature: 0.7, maxRetries: 0 });
    const bound = chat.bindTools(TOOLS, { tool_choice: { type: "function", function: { name: "get_weather" } } });
    const msg = await bound.invoke("What is the weather in Paris?");
    expect(msg.tool_calls).toHaveLength(1);
    expect(msg.tool_calls![0].name).toBe("get_weather");
    expect(ajv.validate(WEATHER, msg.tool_calls![0].args)).toBe(true);
  });
});

describe("streaming while tools are offered", () => {
  const plan = toolPlan({ model: "", messages: [{ role: "user", content: "x" }], tools: [{ type: "function", function: { name: "get_time" } }] } as any);
  const feed = (pieces: string[]) => {
    const ts = new ToolStream(plan);
    const sent = pieces.map((p) => ts.push(p));
    return { sent, end: ts.finish(pieces.join("")) };
  };

  it("text goes out as it comes, but not a part that may begin a call; a call goes out whole at the end", () => {
    const { sent, end } = feed(["Let me ", "check.\n<tool", "_call>\n{\"name\": \"get_time\", ", "\"arguments\": {}}\n</tool_call>"]);
    expect(sent).toEqual(["Let me ", "check.\n", "", ""]);
    expect(end.content).toBeUndefined();
    expect(end.calls!.map((c) => c.function.name)).toEqual(["get_time"]);
  });

  it("a held part that turns out not to be a call is sent on; an answer opening with { is held whole", () => {
    expect(feed(["a <tool", "box> b"]).sent).toEqual(["a ", "<toolbox> b"]);
    const json = feed(['{"name": "get_time", ', '"parameters": {"zone": "UTC"}}']);
    expect(json.sent).toEqual(["", ""]);
    expect(json.end.calls).toHaveLength(1);
    const notACall = feed(['{"a": ', "1}"]);
    expect(notACall.sent).toEqual(["", ""]);
    expect(notACall.end).toEqual({ content: '{"a": 1}' });
  });

  it("a forced call streams nothing before it", () => {
    const forced = toolPlan({ model: "", messages: [{ role: "user", content: "x" }], tools: [{ type: "function", function: { name: "get_time" } }], tool_choice: "required" } as any);
    const ts = new ToolStream(forced);
    expect(ts.push('[{"name": "get_time", ')).toBe("");
    expect(ts.push('"arguments": {}}]')).toBe("");
    expect(ts.finish('[{"name": "get_time", "arguments": {}}]').calls).toHaveLength(1);
  });
});

describe("reading calls in each family's format", () => {
  const names = new Set(["get_weather", "get_time"]);
  const args = (r: ReturnType<typeof readCalls>) => r?.calls.map((c) => [c.function.name, JSON.parse(c.function.arguments)]);

  it("Hermes / Qwen: <tool_call> blocks, several, with text around them; unknown names and bad JSON stay text", () => {
    const r = readCalls('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>', names);
    expect(args(r)).toEqual([["get_weather", { city: "Oslo" }], ["get_time", { zone: "CET" }]]);
    expect(r!.content).toBe("Let me check.");
    expect(readCalls('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', names)).toBeUndefined();
    expect(readCalls("<tool_call>{not json</tool_call>", names)).toBeUndefined();
    // An unclosed block at the end (the model stopped at </tool_call> as a stop string) still counts.
    expect(args(readCalls('<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}', names))).toEqual([["get_time", { zone: "UTC" }]]);
  });

  it("Mistral: a [TOOL_CALLS] array; Llama 3.1: the whole answer is one JSON call with parameters", () => {
    expect(args(readCalls('[TOOL_CALLS] [{"name": "get_time", "arguments": {"zone": "PST"}}, {"name": "get_weather", "arguments": {"city": "Rome"}}]', names))).toEqual([
      ["get_time", { zone: "PST" }],
      ["get_weather", { city: "Rome" }],
    ]);
    const llama = readCalls('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Lima"}}', names);
    expect(args(llama)).toEqual([["get_weather", { city: "Lima" }]]);
    expect(llama!.content).toBeNull();
    expect(readCalls('{"name": "Alice", "age": 3}', names)).toBeUndefined();
    expect(readCalls("Just text.", names)).toBeUndefined();
  });
});
