// Network failures that no retry mends, in every remote source: a host name that does not resolve (what an
// offline server or a mistyped endpoint gets) and a TLS peer refused for its certificate. Each → UpstreamError
// (502) at once, naming the adapter, the host or the certificate problem, and what to check — not a 500.

import { execFileSync } from "node:child_process";
import { lookup } from "node:dns/promises";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer, type Server } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { UpstreamError } from "../../../../engine/src/errors.js";
import { S3RVER_CREDENTIALS } from "../../../helpers/s3.js";
import { errorOf, type Harness, harness } from "./setup.js";

// RFC 6761: names under .invalid never resolve.
const NOWHERE = "no-such-host.invalid";
let h: Harness | undefined;
afterEach(async () => {
  await h?.cleanup();
  h = undefined;
});

/** Why the unresolvable-host cases cannot run here, if they cannot: a resolver that does not answer NXDOMAIN. */
async function resolverProblem(): Promise<string | undefined> {
  try {
    await lookup(NOWHERE);
    return `${NOWHERE} resolved: this machine's DNS answers for names that must not exist`;
  } catch (err) {
    const code = (err as { code?: string }).code;
    return code === "ENOTFOUND" ? undefined : `looking up ${NOWHERE} gave ${code} rather than ENOTFOUND (no DNS resolver answering)`;
  }
}

describe("a host name that does not resolve → 502 at once", async () => {
  const problem = await resolverProblem();
  if (problem !== undefined) console.warn(`skipping unresolvable-host cases: ${problem}`);
  const cases: [string, string, string, Parameters<typeof harness>[0]][] = [
    ["hub", "org/adapter", 'hub repo "org/adapter"', { hub: { endpoint: `http://${NOWHERE}` } }],
    ["pbase", "sql/3", 'pbase adapter "sql/3"', { predibase: { gatewayEndpoint: `http://${NOWHERE}`, modelBucket: "b" } }],
    ["s3", "s3://bucket/team/a", 's3 adapter "s3://bucket/team/a"', { s3: { endpoint: `http://${NOWHERE}`, credentials: S3RVER_CREDENTIALS } }],
  ];
  for (const [source, id, named, config] of cases) {
    it.skipIf(problem !== undefined)(source, async () => {
      h = await harness(config);
      const e = await errorOf(h.sources.fetch(source as "hub", id, source === "pbase" ? "pb_token" : undefined));
      expect(e).toBeInstanceOf(UpstreamError);
      expect(e.kind).toBe("upstream");
      expect(e.message).toContain(named);
      expect(e.message).toContain(NOWHERE);
      expect(e.message).toContain("does not resolve");
      expect(h.log.text()).not.toContain("retrying");
    });
  }
});

describe("a TLS peer refused for its certificate → 502 at once", () => {
  let server: Server | undefined;
  let dir: string | undefined;
  afterEach(async () => {
    await new Promise((r) => (server ? server.close(r) : r(undefined)));
    if (dir) await rm(dir, { recursive: true, force: true });
    server = dir = undefined;
  });

  let openssl = true;
  try {
    execFileSync("openssl", ["version"], { stdio: "ignore" });
  } catch {
    openssl = false;
    console.warn("skipping the TLS case: no openssl to make a self-signed certificate");
  }
  it.skipIf(!openssl)("a Hub endpoint with a self-signed certificate", async () => {
    dir = await mkdtemp(join(tmpdir(), "loraserve-tls-"));
    const key = join(dir, "key.pem"), cert = join(dir, "cert.pem");
    execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1"], { stdio: "ignore" });
    let requests = 0;
    server = createServer({ key: await readFile(key), cert: await readFile(cert) }, (_req, res) => {
      requests++;
      res.end("{}");
    });
    await new Promise<void>((r) => server!.listen(0, "127.0.0.1", r));
    const port = (server.address() as { port: number }).port;
    h = await harness({ hub: { endpoint: `https://127.0.0.1:${port}` } });
    const e = await errorOf(h.sources.fetch("hub", "org/adapter", undefined));
    expect(e).toBeInstanceOf(UpstreamError);
    expect(e.message).toContain('hub repo "org/adapter"');
    expect(e.message).toContain("SELF_SIGNED");
    expect(e.message).toContain("NODE_EXTRA_CA_CERTS");
    expect(h.log.text()).not.toContain("retrying");
    expect(requests).toBe(0);
  });
});
