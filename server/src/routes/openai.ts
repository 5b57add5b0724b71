// The OpenAI routes: POST /v1/completions and POST /v1/chat/completions, JSON or SSE (`data: [DONE]`), with n,
// stop, logprobs in each route's shape, echo, stream_options.include_usage, tool calls (tools.ts); `model` picks
// the adapter.
import crypto from "node:crypto";

import { Router } from "express";

import type { FinishInfo, GenerationEvent, Submission, SubmitRequest, TopToken } from "../../../engine/src/engine.js";
import { ValidationError } from "../../../engine/src/errors.js";
import type { ServerContext } from "../context.js";
import { SseWriter } from "../sse.js";
import { ToolStream, inRequestTerms, templateToolCalls, toolPlan } from "../tools.js";
import { openaiParams, openaiResponseFormat } from "../translate.js";
import { validateBody } from "../validate.js";
import type { components } from "../wire-types.js";
import { collectAll, handle, type RouteCall } from "./common.js";

type S = components["schemas"];

const finishReason = (f: FinishInfo): "stop" | "length" => (f.reason === "length" ? "length" : "stop");
const now = () => Math.floor(Date.now() / 1000);
const utf8 = (s: string) => Array.from(Buffer.from(s, "utf8"));

function chatLogprob(t: { text: string; logprob: number; top?: TopToken[] }): S["TokenLogprob"] {
  return {
    token: t.text,
    logprob: t.logprob,
    bytes: utf8(t.text),
    top_logprobs: (t.top ?? []).map((x) => ({ token: x.text, logprob: x.logprob, bytes: utf8(x.text) })),
  };
}

/** Completions logprobs: parallel lists over tokens; text offsets count from the start of the choice's text. */
function completionLogprobs(tokens: { text: string; logprob: number | null; top?: TopToken[] }[], startOffset: number): S["CompletionLogprobs"] {
  let off = startOffset;
  const text_offset: number[] = [];
  for (const t of tokens) {
    text_offset.push(off);
    off += t.text.length;
  }
  return {
    tokens: tokens.map((t) => t.text),
    token_logprobs: tokens.map((t) => t.logprob),
    top_logprobs: tokens.map((t) => (t.top ? Object.fromEntries(t.top.map((x) => [x.text, x.logprob])) : null)),
    text_offset,
  };
}

/** Token counts; `cached`: prompt tokens the prefix cache held (each prompt's first sequence). */
function usageOf(prompt: number, completion: number, cached: number): S["Usage"] {
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion, prompt_tokens_details: { cached_tokens: cached } };
}

/** Submits every prompt of a request (OpenAI allows a batch of prompts), n sequences each. */
async function submitAll(ctx: ServerContext, c: RouteCall, reqs: SubmitRequest[]): Promise<Submission[]> {
  const subs: Submission[] = [];
  try {
    for (const r of reqs) {
      const s = await ctx.engine.submit(r);
      c.accepted(s);
      subs.push(s);
    }
  } catch (e) {
    // Cancel the ones already queued.
    for (const s of subs) void (s.events as AsyncIterable<GenerationEvent>)[Symbol.asyncIterator]().return?.();
    throw e;
  }
  return subs;
}

/** Interleaves several submissions' events into one stream, tagging each with its choice offset. */
async function* merged(subs: Submission[], n: number): AsyncGenerator<{ e: GenerationEvent; base: number; sub: number }> {
  const its = subs.map((s) => (s.events as AsyncIterable<GenerationEvent>)[Symbol.asyncIterator]());
  const pending = new Map<number, Promise<{ i: number; r: IteratorResult<GenerationEvent> }>>();
  const pull = (i: number) => pending.set(i, its[i].next().then((r) => ({ i, r })));
  its.forEach((_, i) => pull(i));
  try {
    while (pending.size > 0) {
      const { i, r } = await Promise.race(pending.values());
      if (r.done) {
        pending.delete(i);
        continue;
      }
      pull(i);
      yield { e: r.value, base: i * n, sub: i };
    }
  } finally {
    for (const [i] of pending) void its[i].return?.();
  }
}

export function openaiRoutes(ctx: ServerContext): Router {
  const r = Router();

  r.post("/v1/completions", handle(ctx, "openai", "completions", async (c) => {
    const body = validateBody<S["CompletionRequest"]>("CompletionRequest", c.req.body);
    const n = body.n ?? 1;
    const bestOf = body.best_of ?? n;
    if (bestOf < n) throw new ValidationError(`best_of (${bestOf}) must be at least n (${n})`, "best_of");
    if (bestOf > n && bestOf > ctx.config.maxBestOf) throw new ValidationError(`best_of ${bestOf} is above --max-best-of ${ctx.config.maxBestOf}`, "best_of");
    if (bestOf > n && body.stream) throw new ValidationError("best_of > n cannot be streamed", "best_of");
    const topLp = body.logprobs ?? 0;
    const { params, adapter } = openaiParams(ctx, c.req, body, body.max_tokens ?? undefined, topLp);
    const echo = body.echo ?? false;
    params.promptLogprobs = echo && body.logprobs !== null && body.logprobs !== undefined;
    const prompts: SubmitRequest["input"][] =
      typeof body.prompt === "string" ? [{ text: body.prompt }]
      : typeof body.prompt[0] === "string" ? (body.prompt as string[]).map((text) => ({ text }))
      : typeof body.prompt[0] === "number" ? [{ tokens: body.prompt as number[] }]
      : (body.prompt as number[][]).map((tokens) => ({ tokens }));
    const responseFormat = openaiResponseFormat(body.response_format);
    const subs = await submitAll(ctx, c, prompts.map((input) => ({ input, adapter, params, n: bestOf, responseFormat, signal: c.signal })));
    const id = `cmpl-${crypto.randomUUID()}`, created = now(), model = body.model;
    const wantLogprobs = body.logprobs !== null && body.logprobs !== undefined;
    const echoText = (s: Submission) => (echo ? (s.promptText ?? ctx.engine.tokenizer.decode(s.promptIds, false)) : "");

    if (!body.stream) {
      const choices: S["CompletionChoice"][] = [];
      let promptTokens = 0, completionTokens = 0, cachedTokens = 0;
      for (const [si, s] of subs.entries()) {
        const { prompt, seqs } = await collectAll(s, c.finished);
        promptTokens += s.promptIds.length;
        cachedTokens += seqs[0].finish.cachedTokens;
        const ranked = seqs.map((q, i) => ({ q, i })).sort((a, b) => (bestOf > n ? b.q.finish.cumulativeLogprob - a.q.finish.cumulativeLogprob : a.i - b.i));
        for (const [j, { q }] of ranked.slice(0, n).entries()) {
          completionTokens += q.finish.generatedTokens;
          const head = echoText(s);
          const toks = q.tokens.map((t) => ({ text: t.text, logprob: t.logprob, top: t.top }));
          const promptToks = echo && prompt ? prompt.map((t) => ({ text: t.text, logprob: t.logprob })) : [];
          choices.push({
            index: si * n + j,
            text: head + q.finish.text,
            logprobs: wantLogprobs ? completionLogprobs([...promptToks, ...toks], 0) : null,
            finish_reason: finishReason(q.finish),
          });
        }
        for (const q of ranked.slice(n)) completionTokens += q.q.finish.generatedTokens;
      }
      const out: S["CompletionResponse"] = { id, object: "text_completion", created, model, choices, usage: usageOf(promptTokens, completionTokens, cachedTokens) };
      c.res.json(out);
      return;
    }

    const sse = new SseWriter(c.res);
    const chunk = (choices: S["CompletionChoice"][], usage: S["Usage"] | null = null): S["CompletionResponse"] => ({ id, object: "text_completion", created, model, choices, usage });
    const offsets = new Map<number, number>();
    let completionTokens = 0, cachedTokens = 0;
    try {
      if (echo) subs.forEach((s, si) => {
        for (let j = 0; j < n; j++) {
          sse.send(chunk([{ index: si * n + j, text: echoText(s), logprobs: null, finish_reason: null }]));
          offsets.set(si * n + j, echoText(s).length);
        }
      });
      for await (const { e, base } of merged(subs, n)) {
        if (e.type !== "token") continue;
        const index = base + e.index;
        const off = offsets.get(index) ?? 0;
        offsets.set(index, off + e.delta.length);
        if (e.finish) {
          c.finished(e.finish);
          completionTokens += e.finish.generatedTokens;
          if (e.index === 0) cachedTokens += e.finish.cachedTokens;
        }
        if (!e.delta && !e.finish && !wantLogprobs) continue;
        sse.send(chunk([{ index, text: e.delta, logprobs: wantLogprobs ? completionLogprobs([{ text: e.text, logprob: e.logprob, top: e.top }], off) : null, finish_reason: e.finish ? finishReason(e.finish) : null }]));
      }
      if (body.stream_options?.include_usage) sse.send(chunk([], usageOf(subs.reduce((a, s) => a + s.promptIds.length, 0), completionTokens, cachedTokens)));
      sse.end("[DONE]");
    } catch (err) {
      if (c.signal.aborted) return;
      sse.fail(err, "openai");
    }
  }));

  r.post("/v1/chat/completions", handle(ctx, "openai", "chat_completions", async (c) => {
    const body = validateBody<S["ChatCompletionRequest"]>("ChatCompletionRequest", c.req.body);
    const n = body.n ?? 1;
    const wantLogprobs = body.logprobs ?? false;
    const topLp = wantLogprobs ? (body.top_logprobs ?? 0) : 0;
    if (!wantLogprobs && (body.top_logprobs ?? 0) > 0) throw new ValidationError("top_logprobs needs logprobs: true", "top_logprobs");
    const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? undefined;
    const { params, adapter } = openaiParams(ctx, c.req, body, maxTokens, topLp);
    const tools = toolPlan(body);
    const messages = body.messages.map((m) => ({
      role: m.role,
      content: typeof m.content === "string" ? m.content : Array.isArray(m.content) ? m.content.map((p) => p.text).join("") : "",
      ...(m.tool_calls ? { tool_calls: templateToolCalls(m.tool_calls) } : {}),
      ...(m.tool_call_id !== undefined ? { tool_call_id: m.tool_call_id } : {}),
      ...(m.name !== undefined ? { name: m.name } : {}),
    }));
    const responseFormat = tools.responseFormat ?? openaiResponseFormat(body.response_format);
    const input = { messages, tools: tools.tools };
    const [sub] = await submitAll(ctx, c, [{ input, adapter, params, n, fillContext: maxTokens === undefined, responseFormat, signal: c.signal }]).catch((e) => {
      throw inRequestTerms(e);
    });
    const id = `chatcmpl-${crypto.randomUUID()}`, created = now(), model = body.model;

    if (!body.stream) {
      const { seqs } = await collectAll(sub, c.finished);
      const choices: S["ChatChoice"][] = seqs.map((q, i) => {
        const called = tools.parse(q.finish.text);
        return {
          index: i,
          message: called ? { role: "assistant", content: called.content, tool_calls: called.calls } : { role: "assistant", content: q.finish.text },
          logprobs: wantLogprobs ? { content: q.tokens.filter((t) => !(t.special && q.finish.reason === "eos")).map(chatLogprob) } : null,
          finish_reason: called ? "tool_calls" : finishReason(q.finish),
        };
      });
      const out: S["ChatCompletionResponse"] = {
        id, object: "chat.completion", created, model, choices,
        usage: usageOf(sub.promptIds.length, seqs.reduce((a, q) => a + q.finish.generatedTokens, 0), seqs[0].finish.cachedTokens),
      };
      c.res.json(out);
      return;
    }

    const sse = new SseWriter(c.res);
    const includeUsage = body.stream_options?.include_usage ?? false;
    const chunk = (choices: S["ChatChunkChoice"][], usage?: S["Usage"]): S["ChatCompletionChunk"] => ({
      id, object: "chat.completion.chunk", created, model, choices, ...(includeUsage ? { usage: usage ?? null } : {}),
    });
    let completionTokens = 0, cachedTokens = 0;
    const toolStreams: ToolStream[] = [];
    try {
      for (let i = 0; i < n; i++) sse.send(chunk([{ index: i, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }]));
      for await (const e of sub.events) {
        if (e.type !== "token") continue;
        if (e.finish) {
          c.finished(e.finish);
          completionTokens += e.finish.generatedTokens;
          if (e.index === 0) cachedTokens += e.finish.cachedTokens;
        }
        const isEos = e.finish?.reason === "eos";
        // With tools offered, text that may hold a call is read once whole: it goes out with the last token.
        let text = e.delta, calls: S["ToolCall"][] | undefined;
        if (tools.tools) {
          const ts = (toolStreams[e.index] ??= new ToolStream(tools));
          text = ts.push(e.delta);
          if (e.finish) {
            const end = ts.finish(e.finish.text);
            text += end.content ?? "";
            calls = end.calls;
          }
        }
        if (!text && !e.finish && !wantLogprobs) continue;
        sse.send(chunk([{
          index: e.index,
          delta: { ...(text ? { content: text } : {}), ...(calls ? { tool_calls: calls.map((t, index) => ({ index, ...t })) } : {}) },
          logprobs: wantLogprobs && !isEos ? { content: [chatLogprob(e)] } : null,
          finish_reason: e.finish ? (calls ? "tool_calls" : finishReason(e.finish)) : null,
        }]));
      }
      if (includeUsage) sse.send(chunk([], usageOf(sub.promptIds.length, completionTokens, cachedTokens)));
      sse.end("[DONE]");
    } catch (err) {
      if (c.signal.aborted) return;
      sse.fail(err, "openai");
    }
  }));

  return r;
}
