// Which source a request's adapter comes from, and which token (if any) it may use there: SPEC §3 and §5 rules.
// Pure functions; the server passes in what it parsed, nothing here reads a request or the environment by itself.

import { isAbsolute } from "node:path";
import { ValidationError } from "../../errors.js";
import { SOURCE_NAMES, type SourceName } from "./types.js";

/**
 * SPEC §5: the body's `adapter_source` if given; else `s3://…` means s3 and an absolute path means local;
 * else the server's default source (`--adapter-source`).
 */
export function resolveSource(modelField: string, adapterSourceField: string | undefined, defaultSource: SourceName): SourceName {
  if (adapterSourceField !== undefined) {
    if (!(SOURCE_NAMES as readonly string[]).includes(adapterSourceField)) {
      throw new ValidationError(`adapter_source "${adapterSourceField}" is not one of ${SOURCE_NAMES.join(", ")}`, "adapter_source");
    }
    return adapterSourceField as SourceName;
  }
  if (modelField.startsWith("s3://")) return "s3";
  if (isAbsolute(modelField)) return "local";
  return defaultSource;
}

export interface TokenInputs {
  /** The body's `api_token` (native `parameters.api_token`, or the OpenAI body's extra field). */
  bodyToken: string | undefined;
  /** The raw `Authorization` header. */
  authorizationHeader: string | undefined;
  /** True when the server runs with --api-keys: the header then authenticates the caller, not the adapter. */
  apiKeysEnabled: boolean;
  /** LORAX_USE_GLOBAL_HF_TOKEN=1. */
  useGlobalHfToken: boolean;
  /** The server's own HUGGING_FACE_HUB_TOKEN (or HF_TOKEN). */
  serverToken: string | undefined;
  source: SourceName;
}

/**
 * SPEC §3: the body token wins; else `Authorization: Bearer <t>` unless --api-keys claims that header; else, for hub
 * only and only with LORAX_USE_GLOBAL_HF_TOKEN=1, the server's token. local and s3 never get a token (S3 uses the
 * server's AWS credentials). An empty string counts as no token.
 */
export function pickToken(t: TokenInputs): string | undefined {
  if (t.source === "local" || t.source === "s3") return undefined;
  if (t.bodyToken !== undefined && t.bodyToken !== "") return t.bodyToken;
  if (!t.apiKeysEnabled && t.authorizationHeader !== undefined) {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(t.authorizationHeader);
    if (m !== null) return m[1];
  }
  if (t.source === "hub" && t.useGlobalHfToken && t.serverToken !== undefined && t.serverToken !== "") return t.serverToken;
  return undefined;
}

/** The server-token half of TokenInputs, from the environment (LORAX_USE_GLOBAL_HF_TOKEN, HUGGING_FACE_HUB_TOKEN, HF_TOKEN). */
export function globalTokenFromEnv(env: NodeJS.ProcessEnv = process.env): { useGlobalHfToken: boolean; serverToken: string | undefined } {
  const flag = (env.LORAX_USE_GLOBAL_HF_TOKEN ?? "").trim().toLowerCase();
  const serverToken = env.HUGGING_FACE_HUB_TOKEN ?? env.HF_TOKEN;
  return { useGlobalHfToken: flag === "1" || flag === "true", serverToken: serverToken === "" ? undefined : serverToken };
}
