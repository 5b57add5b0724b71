// Checks response bodies and SSE chunks against the wire contract, openapi/openapi.json.
import { expect } from "vitest";

import { schemaValidator } from "../../server/src/validate.js";

/** Asserts that body matches components.schemas[name] of openapi/openapi.json. */
export function expectSchema(name: string, body: unknown): void {
  const v = schemaValidator(name);
  const ok = v(body);
  if (!ok) expect.fail(`${name} does not match the contract: ${JSON.stringify(v.errors?.slice(0, 3))}\nbody: ${JSON.stringify(body).slice(0, 500)}`);
}

