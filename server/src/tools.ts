// OpenAI tool calling on /v1/chat/completions: which tools a request offers and how the model must answer
// (tool_choice), the grammar that forces a call ("required" or a named function), and reading the calls out of
// the generated text in the formats model families write them (Hermes/Qwen <tool_call> blocks, Mistral
// [TOOL_CALLS] arrays, Llama 3.1 bare JSON). The chat template renders the tools; the engine knows none of this.
import crypto from "node:crypto";

import { ValidationError } from "../../engine/src/errors.js";
import type { EngineResponseFormat } from "./translate.js";
import type { components } from "./wire-types.js";

type S = components["schemas"];

/** Calls read out of a choice's text; `rest` is the text outside them, untrimmed, and `content` it trimmed. */
export interface ReadCalls {
  content: string | null;
  calls: S["ToolCall"][];
  rest: string;
}

export interface ToolPlan {
  /** Tools for the chat template (the request's, as given); none when tool_choice is "none". */
  tools?: S["Tool"][];
  /** A grammar that forces the call: the named function's arguments, or a list of calls for "required". */
  responseFormat?: EngineResponseFormat;
  /** Whether text may stream before the calls ("auto"); a forced call is all call. */
  streamsText?: boolean;
  /** Reads the calls out of a choice's text (undefined: plain text, no calls). */
  parse(text: string): ReadCalls | undefined;
}

const NO_TOOLS: ToolPlan = { parse: () => undefined };

/** What a chat request's tools and tool_choice ask of the prompt, the decoding and the response; bad ones are 400s. */
export function toolPlan(body: S["ChatCompletionRequest"]): ToolPlan {
  const tools = body.tools ?? [];
  const choice = body.tool_choice ?? (tools.length > 0 ? "auto" : "none");
  if (choice !== "none" && tools.length === 0) throw new ValidationError(`tool_choice ${JSON.stringify(choice)} needs tools: the request offers none`, "tool_choice");
  if (choice === "none") return NO_TOOLS;
  const names = new Set(tools.map((t) => t.function.name));
  if (names.size < tools.length) throw new ValidationError("tools: two functions have the same name", "tools");
  const params = (t: S["Tool"]) => t.function.parameters ?? { type: "object" };
  if (choice === "auto") return { tools, streamsText: true, parse: (text) => readCalls(text, names) };
  if (body.response_format && body.response_format.type !== "text")
    throw new ValidationError("response_format cannot be combined with a forced tool call (tool_choice \"required\" or a function)", "response_format");
  if (choice === "required") {
    const call = (t: S["Tool"]) => ({ type: "object", properties: { name: { const: t.function.name }, arguments: params(t) }, required: ["name", "arguments"], additionalProperties: false });
    return {
      tools,
      // parallel_tool_calls: false → exactly one call.
      responseFormat: {
        format: { type: "json_schema", schema: { type: "array", minItems: 1, ...(body.parallel_tool_calls === false ? { maxItems: 1 } : {}), items: { anyOf: tools.map(call) } } },
        path: "tools",
        param: "tools",
      },
      parse: (text) => {
        const list = jsonOf(text);
        const calls = Array.isArray(list) ? list.filter((c) => names.has(c?.name)).map((c) => toolCall(c.name, c.arguments)) : [];
        return calls.length > 0 ? { content: null, calls, rest: "" } : undefined;
      },
    };
  }
  const tool = tools.find((t) => t.function.name === choice.function.name);
  if (!tool) throw new ValidationError(`tool_choice names the function "${choice.function.name}", which is not among tools (${[...names].join(", ")})`, "tool_choice");
  return {
    tools,
    responseFormat: { format: { type: "json_schema", schema: params(tool) }, path: `tools[${tools.indexOf(tool)}].function.parameters`, param: "tools" },
    parse: (text) => {
      const args = jsonOf(text);
      return args === undefined ? undefined : { content: null, calls: [toolCall(tool.function.name, args)], rest: "" };
    },
  };
}

/** Calls a model wrote in its own format, naming only offered tools; the text around them is the content. */
export function readCalls(text: string, names: Set<string>): ReadCalls | undefined {
  const calls: S["ToolCall"][] = [];
  const take = (o: unknown) => {
    const c = o as { name?: unknown; arguments?: unknown; parameters?: unknown } | undefined;
    if (!c || typeof c.name !== "string" || !names.has(c.name)) return false;
    calls.push(toolCall(c.name, c.arguments ?? c.parameters ?? {}));
    return true;
  };
  // Hermes, Qwen2/2.5: <tool_call>{"name": ..., "arguments": {...}}</tool_call>, any number, text around them.
  let rest = text.replace(/<tool_call>\s*([\s\S]*?)\s*(<\/tool_call>|$)/g, (all, json: string) => (take(jsonOf(json)) ? "" : all));
  // Mistral: [TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]
  const m = /\[TOOL_CALLS\]\s*(\[[\s\S]*\])\s*$/.exec(rest);
  if (m) {
    const list = jsonOf(m[1]);
    if (Array.isArray(list) && list.every(take)) rest = rest.slice(0, m.index);
  }
  // Llama 3.1: the whole answer is {"name": ..., "parameters": {...}} (after <|python_tag|> or not).
  if (calls.length === 0) {
    const whole = jsonOf(rest.replace(/^\s*<\|python_tag\|>/, ""));
    if (take(whole)) rest = "";
  }
  if (calls.length === 0) return undefined;
  return { content: rest.trim() === "" ? null : rest.trim(), calls, rest };
}

/** Where a call may begin in a family's format: text from the first of these on is held back while streaming. */
const CALL_STARTS = ["<tool_call>", "[TOOL_CALLS]"];

/**
 * One streamed choice while tools are offered. Text goes out as it comes, up to where a call may begin (a call
 * marker, or a part of one at the end; an answer that opens with "{" or <|python_tag|> is held whole); the
 * rest is read at the end, and goes out with the calls it holds.
 */
export class ToolStream {
  private text = "";
  private sent = 0;
  constructor(private readonly plan: ToolPlan) {}

  /** The next piece of content that is safe to send (maybe ""). */
  push(delta: string): string {
    this.text += delta;
    if (!this.plan.streamsText) return "";
    const hold = Math.max(this.sent, this.holdFrom());
    const out = this.text.slice(this.sent, hold);
    this.sent = hold;
    return out;
  }

  /** At the end: what is left of the content, and the calls. */
  finish(text: string): { content?: string; calls?: S["ToolCall"][] } {
    const called = this.plan.parse(text);
    const left = (called ? called.rest : text).slice(this.sent);
    return { ...(left.trim() !== "" || (!called && left !== "") ? { content: left } : {}), ...(called ? { calls: called.calls } : {}) };
  }

  private holdFrom(): number {
    const t = this.text, lead = t.trimStart();
    if (lead === "" || lead.startsWith("{") || "<|python_tag|>".startsWith(lead.slice(0, 14))) return 0;
    let hold = t.length;
    for (const m of CALL_STARTS) {
      const at = t.indexOf(m);
      if (at >= 0) hold = Math.min(hold, at);
      for (let k = Math.min(m.length - 1, t.length); k > 0; k--)
        if (t.endsWith(m.slice(0, k))) {
          hold = Math.min(hold, t.length - k);
          break;
        }
    }
    return hold;
  }
}

function toolCall(name: string, args: unknown): S["ToolCall"] {
  return { id: `call_${crypto.randomUUID().replace(/-/g, "").slice(0, 24)}`, type: "function", function: { name, arguments: typeof args === "string" ? args : JSON.stringify(args ?? {}) } };
}

function jsonOf(text: string): any {
  try {
    return JSON.parse(text.trim());
  } catch {
    return undefined;
  }
}

/** A grammar error in the schema "required" builds, told in the request's terms (tools[i].function.parameters). */
export function inRequestTerms(err: unknown): unknown {
  const m = err instanceof ValidationError ? /^tools\.items\.anyOf\[(\d+)\]\.properties\.arguments/.exec(err.message) : null;
  return m ? new ValidationError(`tools[${m[1]}].function.parameters${(err as Error).message.slice(m[0].length)}`, "tools") : err;
}

/** An assistant turn's tool calls as chat templates read them: arguments as objects where they parse. */
export function templateToolCalls(calls: S["ToolCall"][] | undefined): unknown[] | undefined {
  return calls?.map((c) => ({ id: c.id, type: c.type, function: { name: c.function.name, arguments: jsonOf(c.function.arguments) ?? c.function.arguments } }));
}
