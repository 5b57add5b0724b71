// The engine's error classes: each carries a kind that the server maps to an HTTP status in one table.
// Nothing here knows HTTP; messages name the bad value and, where one exists, a hint.

export type ErrorKind =
  | "validation" // bad request values, context overflow            → 400
  | "unauthorized" // adapter needs a token, none or a bad one given → 401
  | "forbidden" // token valid but not allowed (gated, revoked)      → 403
  | "not_found" // unknown adapter / model / revision                → 404
  | "incompatible" // adapter unusable with this base model or format → 422
  | "overloaded" // too many requests in flight, rate limited        → 429
  | "upstream" // an adapter source failed (5xx, reset, bad data)    → 502
  | "upstream_timeout" // an adapter source timed out               → 504
  | "cancelled" // the caller went away                              → 499
  | "internal"; // a bug                                            → 500

export class LoraserveError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
    /** The request field at fault, when there is one (OpenAI's `param`). */
    readonly param?: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

export class ValidationError extends LoraserveError {
  constructor(message: string, param?: string) {
    super("validation", message, param);
  }
}

export class AdapterAccessError extends LoraserveError {
  constructor(kind: "unauthorized" | "forbidden", message: string) {
    super(kind, message, "adapter_id");
  }
}

export class NotFoundError extends LoraserveError {
  constructor(message: string, param?: string) {
    super("not_found", message, param);
  }
}

/** An adapter whose files or config cannot be used with this base model (bad shapes, unsupported features). */
export class AdapterIncompatibleError extends LoraserveError {
  constructor(message: string) {
    super("incompatible", message, "adapter_id");
  }
}

export class OverloadedError extends LoraserveError {
  constructor(
    message: string,
    /** Seconds a client should wait before retrying. */
    readonly retryAfterS = 1,
  ) {
    super("overloaded", message);
  }
}

export class UpstreamError extends LoraserveError {
  constructor(message: string, timeout = false) {
    super(timeout ? "upstream_timeout" : "upstream", message);
  }
}

export class CancelledError extends LoraserveError {
  constructor(message = "request cancelled") {
    super("cancelled", message);
  }
}

/** Native failures arrive as Error with a `code`; bad input codes become validation errors, the rest internal. */
export class NativeError extends LoraserveError {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(code === "EINVAL" ? "validation" : "internal", message);
  }
}
