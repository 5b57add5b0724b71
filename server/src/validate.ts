// Request validation against the wire contract in openapi/openapi.json (ajv, JSON Schema 2020-12), with
// messages that name the field, the bad value and what was expected. Also the raw-body checks (UTF-8, depth).
import fs from "node:fs";
import path from "node:path";

import { Ajv2020, type ErrorObject, type ValidateFunction } from "ajv/dist/2020.js";

import { ValidationError } from "../../engine/src/errors.js";
import { REPO_ROOT } from "./config.js";

export const OPENAPI_PATH = path.join(REPO_ROOT, "openapi", "openapi.json");
export const openapiDoc: Record<string, any> = JSON.parse(fs.readFileSync(OPENAPI_PATH, "utf8"));

const ajv = new Ajv2020({ allErrors: false, strict: false, validateFormats: false });
ajv.addSchema({ ...openapiDoc, $id: "openapi" });

const cache = new Map<string, ValidateFunction>();
export function schemaValidator(name: string): ValidateFunction {
  let v = cache.get(name);
  if (!v) {
    v = ajv.compile({ $ref: `openapi#/components/schemas/${name}` });
    cache.set(name, v);
  }
  return v;
}

function describe(value: unknown): string {
  const s = JSON.stringify(value);
  return s === undefined ? String(value) : s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function fieldPath(e: ErrorObject): string {
  const p = e.instancePath.replace(/^\//, "").replace(/\/(\d+)/g, "[$1]").replace(/\//g, ".");
  if (e.keyword === "additionalProperties") {
    const extra = (e.params as { additionalProperty: string }).additionalProperty;
    return p ? `${p}.${extra}` : extra;
  }
  if (e.keyword === "required") {
    const miss = (e.params as { missingProperty: string }).missingProperty;
    return p ? `${p}.${miss}` : miss;
  }
  return p || "body";
}

function valueAt(body: unknown, pointer: string): unknown {
  let v: any = body;
  for (const k of pointer.split("/").slice(1)) v = v?.[k.replace(/~1/g, "/").replace(/~0/g, "~")];
  return v;
}

/** Whether the failed schema takes only nothing (null, [] or {}): a field of the OpenAI format not supported here. */
function takesNothing(e: ErrorObject): boolean {
  if (e.keyword === "maxItems" || e.keyword === "maxProperties") return (e.params as { limit: number }).limit === 0;
  return e.keyword === "type" && (e.params as { type: string }).type === "null" && !/anyOf|oneOf/.test(e.schemaPath);
}

/**
 * Validates `body` against a named schema; throws ValidationError naming the first problem. A field whose
 * schema takes only nothing (null, [], {}) is an OpenAI feature this server does not do, and is named as such.
 */
export function validateBody<T>(name: string, body: unknown): T {
  const v = schemaValidator(name);
  if (v(body)) return body as T;
  // Of the alternatives a value failed, the one that got deepest into it says most ("content[0].type must be
  // one of ..." rather than "content must be string").
  const e = v.errors!.reduce((best, x) => (x.instancePath.length > best.instancePath.length ? x : best));
  const field = fieldPath(e);
  let msg: string;
  if (e.keyword === "additionalProperties") msg = `unknown field "${field}": remove it (see /openapi.json for the fields this route takes)`;
  else if (e.keyword === "required") msg = `missing required field "${field}"`;
  else if (takesNothing(e)) msg = `${field} is not supported by this server: leave it out or send it empty`;
  else if (e.propertyName !== undefined) msg = `${field} has the key ${describe(e.propertyName)}, which ${e.message ?? "is invalid"}`;
  else msg = `${field} ${e.message ?? "is invalid"}, got ${describe(valueAt(body, e.instancePath))}`;
  throw new ValidationError(msg, field);
}

/** Refuses bodies that are not valid UTF-8 or nest deeper than maxDepth, before JSON parsing. */
export function checkRawBody(buf: Buffer, maxDepth = 64): void {
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(buf);
  } catch {
    throw new ValidationError("the request body is not valid UTF-8", "body");
  }
  let depth = 0, inStr = false;
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i];
    if (inStr) {
      if (c === 0x5c) i++;
      else if (c === 0x22) inStr = false;
    } else if (c === 0x22) inStr = true;
    else if (c === 0x7b || c === 0x5b) {
      if (++depth > maxDepth) throw new ValidationError(`the request body nests deeper than ${maxDepth} levels`, "body");
    } else if (c === 0x7d || c === 0x5d) depth--;
  }
}
