// A fake Predibase API on 127.0.0.1: the v2 adapter-version endpoint and the legacy v1 model-version endpoint.
// Owns versions, tokens and request counts; the adapter files themselves live in s3rver (test/helpers/s3.ts).

import { type IncomingMessage, type Server, type ServerResponse, createServer } from "node:http";
import { listen } from "./fake-hub.js";

export interface FakeVersion {
  repo: string;
  version: number;
  status: string;
  /** v2's adapterPath; undefined → field absent. */
  adapterPath?: string;
  /** Legacy fields; the legacy endpoint answers 404 for versions without them. */
  uuid?: string;
  bestRunID?: string;
  /** Not known to the v2 endpoint (404 there), as for adapters from before it existed. */
  legacyOnly?: boolean;
}

export class FakePredibase {
  readonly versions: FakeVersion[] = [];
  readonly validTokens = new Set<string>();
  /** Valid tokens of another tenant: 403 on everything. */
  readonly foreignTokens = new Set<string>();
  readonly requests: { path: string; token: string | undefined }[] = [];
  private failures = { n: 0, status: 503 };
  private server!: Server;
  url = "";

  static async start(): Promise<FakePredibase> {
    const pb = new FakePredibase();
    pb.server = createServer((req, res) => pb.handle(req, res));
    pb.url = await listen(pb.server);
    return pb;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  add(v: FakeVersion): void {
    this.versions.push(v);
  }

  failNext(n: number, status = 503): void {
    this.failures = { n, status };
  }

  count(prefix: string): number {
    return this.requests.filter((r) => r.path.startsWith(prefix)).length;
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? "/", "http://x");
    const auth = req.headers.authorization;
    const token = auth?.startsWith("Bearer ") === true ? auth.slice(7) : undefined;
    this.requests.push({ path: url.pathname + url.search, token });
    if (this.failures.n > 0) {
      this.failures.n--;
      return send(res, this.failures.status, { error: "injected" });
    }
    if (token === undefined || (!this.validTokens.has(token) && !this.foreignTokens.has(token))) return send(res, 401, { error: "unauthorized" });
    if (this.foreignTokens.has(token)) return send(res, 403, { error: "forbidden" });

    const v2 = /^\/v2\/repos\/([^/]+)\/version\/([^/]+)$/.exec(url.pathname);
    if (v2 !== null) {
      const repo = decodeURIComponent(v2[1]);
      const v = this.versions.find((x) => x.repo === repo && String(x.version) === decodeURIComponent(v2[2]) && x.legacyOnly !== true);
      if (v === undefined) return send(res, 404, { error: "not found" });
      return send(res, 200, { repo: v.repo, version: v.version, status: v.status, ...(v.adapterPath === undefined ? {} : { adapterPath: v.adapterPath }) });
    }
    const v1 = /^\/v1\/models\/version\/name\/([^/]+)$/.exec(url.pathname);
    if (v1 !== null) {
      const repo = decodeURIComponent(v1[1]);
      const wanted = url.searchParams.get("version");
      const candidates = this.versions.filter((x) => x.repo === repo && (wanted === null || String(x.version) === wanted));
      const v = candidates.sort((a, b) => b.version - a.version)[0];
      if (v === undefined || v.uuid === undefined) return send(res, 404, { error: "not found" });
      return send(res, 200, { name: v.repo, version: v.version, uuid: v.uuid, bestRunID: v.bestRunID, status: v.status });
    }
    send(res, 404, { error: "no route" });
  }
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": String(Buffer.byteLength(text)) });
  res.end(text);
}
