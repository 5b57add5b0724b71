// The one table from error to HTTP: status, OpenAI-shaped body on /v1/*, {error, error_type} on native routes,
// Retry-After on 429. Every route and the SSE writers go through here; nothing else picks a status.
import { LoraserveError, type ErrorKind } from "../../engine/src/errors.js";

export type ApiStyle = "openai" | "native";

const TABLE: Record<ErrorKind, { status: number; openaiType: string; nativeType: string }> = {
  validation: { status: 400, openaiType: "invalid_request_error", nativeType: "validation" },
  unauthorized: { status: 401, openaiType: "authentication_error", nativeType: "unauthorized" },
  forbidden: { status: 403, openaiType: "permission_error", nativeType: "forbidden" },
  not_found: { status: 404, openaiType: "not_found_error", nativeType: "not_found" },
  incompatible: { status: 422, openaiType: "invalid_request_error", nativeType: "incompatible_adapter" },
  overloaded: { status: 429, openaiType: "rate_limit_error", nativeType: "overloaded" },
  upstream: { status: 502, openaiType: "server_error", nativeType: "upstream" },
  upstream_timeout: { status: 504, openaiType: "server_error", nativeType: "upstream_timeout" },
  cancelled: { status: 499, openaiType: "invalid_request_error", nativeType: "cancelled" },
  internal: { status: 500, openaiType: "server_error", nativeType: "internal" },
};

/** HTTP-level failures that do not come from the engine (bodies, auth, rate limits). */
export class HttpError extends LoraserveError {
  constructor(
    readonly status: number,
    kind: ErrorKind,
    message: string,
    readonly code?: string,
    param?: string,
  ) {
    super(kind, message, param);
  }
}

export interface HttpErrorResponse {
  status: number;
  body: unknown;
  headers: Record<string, string>;
}

/** Maps any thrown value to a response. Unknown errors are 500 with a generic message (details go to the log). */
export function toHttpError(err: unknown, style: ApiStyle): HttpErrorResponse {
  let kind: ErrorKind = "internal";
  let message = "internal error: see the server log";
  let status = 500;
  let param: string | null = null;
  let code: string | null = null;
  const headers: Record<string, string> = {};
  if (err instanceof LoraserveError) {
    kind = err.kind;
    message = err.message;
    status = err instanceof HttpError ? err.status : TABLE[kind].status;
    param = err.param ?? null;
    code = err instanceof HttpError && err.code ? err.code : kind === "incompatible" ? "adapter_incompatible" : null;
    if (kind === "overloaded") headers["Retry-After"] = String((err as { retryAfterS?: number }).retryAfterS ?? 1);
  }
  const t = TABLE[kind];
  const body = style === "openai" ? { error: { message, type: t.openaiType, param, code } } : { error: message, error_type: t.nativeType };
  return { status, body, headers };
}
