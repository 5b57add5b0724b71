// SPEC §3 token rules (pickToken, globalTokenFromEnv) and SPEC §5 source rule (resolveSource), as tables.
// Pure functions; the integration with a private Hub repo is in hub.test.ts.

import { describe, expect, it } from "vitest";
import { globalTokenFromEnv, pickToken, resolveSource, type TokenInputs } from "../../../../engine/src/adapters/sources/index.js";
import { ValidationError } from "../../../../engine/src/errors.js";

const none: TokenInputs = { bodyToken: undefined, authorizationHeader: undefined, apiKeysEnabled: false, useGlobalHfToken: false, serverToken: undefined, source: "hub" };

describe("pickToken", () => {
  it("the body token wins over the Authorization header", () => {
    expect(pickToken({ ...none, bodyToken: "body", authorizationHeader: "Bearer header" })).toBe("body");
  });

  it("Authorization: Bearer is the adapter token when the server has no --api-keys", () => {
    expect(pickToken({ ...none, authorizationHeader: "Bearer header" })).toBe("header");
    expect(pickToken({ ...none, authorizationHeader: "bearer   header " })).toBe("header");
    expect(pickToken({ ...none, authorizationHeader: "Basic abc" })).toBeUndefined();
  });

  it("with --api-keys the header authenticates the caller and is never an adapter token", () => {
    expect(pickToken({ ...none, apiKeysEnabled: true, authorizationHeader: "Bearer server-key" })).toBeUndefined();
    expect(pickToken({ ...none, apiKeysEnabled: true, authorizationHeader: "Bearer server-key", bodyToken: "body" })).toBe("body");
  });

  it("the server's token only with LORAX_USE_GLOBAL_HF_TOKEN, only for hub, only when the request brings none", () => {
    const server = { ...none, serverToken: "hf_server" };
    expect(pickToken(server)).toBeUndefined();
    expect(pickToken({ ...server, useGlobalHfToken: true })).toBe("hf_server");
    expect(pickToken({ ...server, useGlobalHfToken: true, bodyToken: "mine" })).toBe("mine");
    expect(pickToken({ ...server, useGlobalHfToken: true, authorizationHeader: "Bearer mine" })).toBe("mine");
    expect(pickToken({ ...server, useGlobalHfToken: true, source: "pbase" })).toBeUndefined();
    expect(pickToken({ ...server, useGlobalHfToken: true, apiKeysEnabled: true, authorizationHeader: "Bearer key" })).toBe("hf_server");
  });

  it("local and s3 never get a token; an empty body token counts as none", () => {
    expect(pickToken({ ...none, bodyToken: "t", source: "local" })).toBeUndefined();
    expect(pickToken({ ...none, bodyToken: "t", source: "s3" })).toBeUndefined();
    expect(pickToken({ ...none, bodyToken: "", authorizationHeader: "Bearer h" })).toBe("h");
    expect(pickToken({ ...none, bodyToken: "t", source: "pbase" })).toBe("t");
  });
});

describe("globalTokenFromEnv", () => {
  it("reads LORAX_USE_GLOBAL_HF_TOKEN and HUGGING_FACE_HUB_TOKEN before HF_TOKEN", () => {
    expect(globalTokenFromEnv({})).toEqual({ useGlobalHfToken: false, serverToken: undefined });
    expect(globalTokenFromEnv({ LORAX_USE_GLOBAL_HF_TOKEN: "1", HF_TOKEN: "b" })).toEqual({ useGlobalHfToken: true, serverToken: "b" });
    expect(globalTokenFromEnv({ LORAX_USE_GLOBAL_HF_TOKEN: "0", HUGGING_FACE_HUB_TOKEN: "a", HF_TOKEN: "b" })).toEqual({ useGlobalHfToken: false, serverToken: "a" });
    expect(globalTokenFromEnv({ LORAX_USE_GLOBAL_HF_TOKEN: "true" }).useGlobalHfToken).toBe(true);
  });
});

describe("resolveSource", () => {
  it("body adapter_source wins; else s3:// → s3, absolute path → local, else the default", () => {
    expect(resolveSource("s3://b/p", "hub", "local")).toBe("hub");
    expect(resolveSource("org/name", "pbase", "hub")).toBe("pbase");
    expect(resolveSource("s3://b/p", undefined, "hub")).toBe("s3");
    expect(resolveSource("/data/adapters/x", undefined, "hub")).toBe("local");
    expect(resolveSource("org/name", undefined, "hub")).toBe("hub");
    expect(resolveSource("repo/3", undefined, "pbase")).toBe("pbase");
    expect(resolveSource("relative/dir", undefined, "local")).toBe("local");
  });

  it("an unknown adapter_source is a 400 naming the choices", () => {
    expect(() => resolveSource("x", "gcs", "hub")).toThrow(ValidationError);
    expect(() => resolveSource("x", "gcs", "hub")).toThrow(/hub, pbase, local, s3/);
  });
});
