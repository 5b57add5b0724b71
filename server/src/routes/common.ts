// What every route shares: the handler wrapper (abort on client disconnect, one error path, request metrics)
// and collecting a generation's events into per-sequence results.
import type { NextFunction, Request, RequestHandler, Response } from "express";
import type { Logger } from "pino";

import type { FinishInfo, GenerationEvent, PromptToken, Submission, TopToken } from "../../../engine/src/engine.js";
import type { ServerContext } from "../context.js";
import { toHttpError, type ApiStyle } from "../errors.js";

export interface RouteCall {
  req: Request;
  res: Response;
  signal: AbortSignal;
  /** Call when the engine accepted the request (validation finished). */
  accepted(sub: Submission): void;
  /** Call with each finished sequence, for metrics. */
  finished(f: FinishInfo): void;
}

/** Wraps a route: counts it, aborts the engine request when the client goes away, maps errors in one place. */
export function handle(ctx: ServerContext, style: ApiStyle, route: string, fn: (c: RouteCall) => Promise<void>): RequestHandler {
  return async (req: Request, res: Response, _next: NextFunction) => {
    const t0 = performance.now();
    const ac = new AbortController();
    res.on("close", () => {
      if (!res.writableFinished) ac.abort();
    });
    ctx.metrics.requestCount.inc({ route });
    let adapter: string | null = null;
    const call: RouteCall = {
      req,
      res,
      signal: ac.signal,
      accepted: (sub) => {
        adapter = sub.adapterKey;
        ctx.metrics.validationDuration.observe((performance.now() - t0) / 1000);
        ctx.metrics.inputLength.observe(sub.promptIds.length);
        ctx.metrics.adapterRequests.inc({ adapter: sub.adapterKey ?? "base" });
      },
      finished: (f) => {
        ctx.metrics.queueDuration.observe(f.queueMs / 1000);
        ctx.metrics.inferenceDuration.observe(f.inferenceMs / 1000);
        ctx.metrics.generatedTokens.observe(f.generatedTokens);
        if (f.generatedTokens > 0) ctx.metrics.timePerToken.observe(f.inferenceMs / 1000 / f.generatedTokens);
      },
    };
    try {
      await fn(call);
      ctx.metrics.requestSuccess.inc({ route });
      ctx.metrics.requestDuration.observe((performance.now() - t0) / 1000);
    } catch (err) {
      const { status, body, headers } = toHttpError(err, style);
      ctx.metrics.requestFailure.inc({ route, err: (body as any).error_type ?? (body as any).error?.type ?? "error" });
      const log = status >= 500 && status !== 502 && status !== 504 ? "error" : "info";
      (res.locals.log as Logger | undefined)?.[log]({ status, err: (err as Error)?.message, stack: status === 500 ? (err as Error)?.stack : undefined, adapter }, "request failed");
      if (res.headersSent) {
        if (!res.writableEnded) res.end();
        return;
      }
      res.status(status).set(headers).json(body);
    }
  };
}

export interface SeqResult {
  tokens: { id: number; text: string; logprob: number; special: boolean; top?: TopToken[] }[];
  finish: FinishInfo;
}

/** Runs a submission to the end: prompt tokens (if asked) and every sequence's tokens and finish. */
export async function collectAll(sub: Submission, onFinish: (f: FinishInfo) => void): Promise<{ prompt?: PromptToken[]; seqs: SeqResult[] }> {
  const seqs: SeqResult[] = [];
  let prompt: PromptToken[] | undefined;
  for await (const e of sub.events as AsyncIterable<GenerationEvent>) {
    if (e.type === "prompt") {
      prompt = e.tokens;
      continue;
    }
    const s = (seqs[e.index] ??= { tokens: [], finish: undefined! });
    s.tokens.push({ id: e.id, text: e.text, logprob: e.logprob, special: e.special, top: e.top });
    if (e.finish) {
      s.finish = e.finish;
      onFinish(e.finish);
    }
  }
  return { prompt, seqs };
}
