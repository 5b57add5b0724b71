// Server-sent events over an Express response: headers, one `data:` line per event, and the terminal error
// event of a stream that fails midway (never a silent cut).
import type { Response } from "express";

import { toHttpError, type ApiStyle } from "./errors.js";

export class SseWriter {
  private started = false;

  constructor(private readonly res: Response) {}

  private start(): void {
    if (this.started) return;
    this.started = true;
    this.res.status(200);
    this.res.setHeader("Content-Type", "text/event-stream; charset=utf-8");
    this.res.setHeader("Cache-Control", "no-cache");
    this.res.setHeader("Connection", "keep-alive");
    this.res.setHeader("X-Accel-Buffering", "no");
    this.res.flushHeaders();
  }

  send(data: unknown): void {
    this.start();
    this.res.write(`data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`);
  }

  /** Ends the stream with an error event in the route's error shape. */
  fail(err: unknown, style: ApiStyle): void {
    this.start();
    const { status, body } = toHttpError(err, style);
    const payload = style === "openai" ? { ...(body as object), status_code: status } : body;
    this.res.write(`data: ${JSON.stringify(payload)}\n\n`);
    this.res.end();
  }

  end(done?: string): void {
    this.start();
    if (done) this.res.write(`data: ${done}\n\n`);
    this.res.end();
  }
}
