// A fake Hugging Face Hub on 127.0.0.1 speaking exactly the endpoints the hub source uses, with fault switches.
// Owns repos, tokens, request counts and a separate "CDN" origin for LFS redirects; not a general Hub emulator.
//
// Endpoints: GET /api/models/{repo}/revision/{rev} (model info, `sha`), GET /api/models/{repo}/tree/{rev}[/{dir}]
// (file list with oid/size/lfs), GET|HEAD /{repo}/resolve/{rev}/{path} (200 for plain files with ETag and
// X-Repo-Commit; 302 to the CDN for LFS files with X-Linked-Etag/X-Linked-Size), GET /cdn/{sha256} on the CDN.

import { createHash, randomBytes } from "node:crypto";
import { type IncomingMessage, type Server, type ServerResponse, createServer } from "node:http";
import type { AddressInfo } from "node:net";

export interface FakeFile {
  path: string;
  content: Buffer;
  /** Stored in LFS: listed with `lfs`, resolved by redirect to the CDN. Default: files of 1 MiB or more. */
  lfs?: boolean;
}

interface Commit {
  sha: string;
  files: Map<string, FakeFile & { lfs: boolean; oid: string; sha256: string }>;
}

interface Repo {
  id: string;
  private: boolean;
  gated: boolean;
  /** Tokens allowed to read a private repo / granted a gated one. */
  readers: Set<string>;
  commits: Map<string, Commit>;
  refs: Map<string, string>;
}

export type RouteKind = "revision" | "tree" | "resolve" | "cdn";

export interface RequestRecord {
  kind: RouteKind | "other";
  method: string;
  path: string;
  /** The bearer token the request carried (test-side bookkeeping only). */
  token: string | undefined;
}

export function gitBlobSha1(content: Buffer): string {
  return createHash("sha1").update(`blob ${content.length}\0`).update(content).digest("hex");
}

export function sha256(content: Buffer): string {
  return createHash("sha256").update(content).digest("hex");
}

/** A valid safetensors file: JSON header (8-byte little-endian length, space-padded to 8) then raw tensor bytes. */
export function safetensors(tensors: Record<string, { dtype: "F32" | "F16" | "BF16"; shape: number[]; data?: Buffer }>, random = true): Buffer {
  const width = { F32: 4, F16: 2, BF16: 2 };
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  const parts: Buffer[] = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const n = t.shape.reduce((a, b) => a * b, 1) * width[t.dtype];
    const data = t.data ?? (random ? randomBytes(n) : Buffer.alloc(n));
    if (data.length !== n) throw new Error(`tensor ${name}: ${data.length} bytes, shape needs ${n}`);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + n] };
    parts.push(data);
    offset += n;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return Buffer.concat([len, Buffer.from(json), ...parts]);
}

/** A small PEFT LoRA adapter (rank `r`, q_proj/v_proj of `layers` layers of width `hidden`). */
export function loraAdapterFiles(opts: { r?: number; hidden?: number; layers?: number; extra?: FakeFile[] } = {}): FakeFile[] {
  const r = opts.r ?? 4;
  const hidden = opts.hidden ?? 16;
  const layers = opts.layers ?? 2;
  const tensors: Parameters<typeof safetensors>[0] = {};
  for (let l = 0; l < layers; l++) {
    for (const m of ["q_proj", "v_proj"]) {
      tensors[`base_model.model.model.layers.${l}.self_attn.${m}.lora_A.weight`] = { dtype: "F32", shape: [r, hidden] };
      tensors[`base_model.model.model.layers.${l}.self_attn.${m}.lora_B.weight`] = { dtype: "F32", shape: [hidden, r] };
    }
  }
  const config = { peft_type: "LORA", r, lora_alpha: 2 * r, target_modules: ["q_proj", "v_proj"], base_model_name_or_path: "test/base" };
  return [
    { path: "adapter_config.json", content: Buffer.from(JSON.stringify(config, null, 2)) },
    { path: "adapter_model.safetensors", content: safetensors(tensors) },
    { path: "README.md", content: Buffer.from("# test adapter\n") },
    ...(opts.extra ?? []),
  ];
}

export interface FakeHubFaults {
  /** Answer the next `n` requests of `kind` with `status` (default 503). */
  failNext(kind: RouteKind, n: number, status?: number): void;
  /** Delay every response of `kind` by `ms` before the headers. */
  slow(kind: RouteKind, ms: number): void;
  /** For the next `n` file bodies (resolve or cdn) longer than `afterBytes`, send that many bytes then destroy the socket. */
  cutNext(n: number, afterBytes: number): void;
  /** Send file bodies in `chunkBytes` pieces with `delayMs` between them. */
  throttle(chunkBytes: number, delayMs: number): void;
  /** Flip one byte in the next `n` file bodies (right length, wrong content). */
  corruptNext(n: number): void;
}

export class FakeHub implements FakeHubFaults {
  readonly repos = new Map<string, Repo>();
  /** Tokens the Hub knows; any other bearer token is "Invalid credentials" (401), even on public repos. */
  readonly validTokens = new Set<string>();
  readonly requests: RequestRecord[] = [];
  private server!: Server;
  private cdn!: Server;
  private failures = new Map<RouteKind, { n: number; status: number }>();
  private delays = new Map<RouteKind, number>();
  private cuts = { n: 0, afterBytes: 0 };
  private pace?: { chunkBytes: number; delayMs: number };
  private corrupt = 0;
  url = "";
  cdnUrl = "";

  static async start(): Promise<FakeHub> {
    const hub = new FakeHub();
    hub.server = createServer((req, res) => void hub.handle(req, res, false));
    hub.cdn = createServer((req, res) => void hub.handle(req, res, true));
    hub.url = await listen(hub.server);
    hub.cdnUrl = await listen(hub.cdn);
    return hub;
  }

  async close(): Promise<void> {
    for (const s of [this.server, this.cdn]) {
      s.closeAllConnections();
      await new Promise<void>((r) => s.close(() => r()));
    }
  }

  addToken(token: string): void {
    this.validTokens.add(token);
  }

  revoke(token: string): void {
    this.validTokens.delete(token);
  }

  /** Creates (or adds a commit to) `id` on `branch`; returns the commit sha. */
  addRepo(id: string, files: FakeFile[], opts: { private?: boolean; gated?: boolean; readers?: string[]; branch?: string } = {}): string {
    let repo = this.repos.get(id);
    if (repo === undefined) {
      repo = { id, private: opts.private ?? false, gated: opts.gated ?? false, readers: new Set(opts.readers ?? []), commits: new Map(), refs: new Map() };
      this.repos.set(id, repo);
    }
    const sha = randomBytes(20).toString("hex");
    const map: Commit["files"] = new Map();
    for (const f of files) {
      const lfs = f.lfs ?? f.content.length >= 1024 * 1024;
      const sum = sha256(f.content);
      map.set(f.path, { ...f, lfs, oid: lfs ? gitBlobSha1(Buffer.from(`version https://git-lfs.github.com/spec/v1\noid sha256:${sum}\nsize ${f.content.length}\n`)) : gitBlobSha1(f.content), sha256: sum });
    }
    repo.commits.set(sha, { sha, files: map });
    repo.refs.set(opts.branch ?? "main", sha);
    return sha;
  }

  grant(id: string, token: string): void {
    this.repos.get(id)?.readers.add(token);
  }

  count(kind: RouteKind, pathIncludes = ""): number {
    return this.requests.filter((r) => r.kind === kind && r.path.includes(pathIncludes)).length;
  }

  resetCounts(): void {
    this.requests.length = 0;
  }

  failNext(kind: RouteKind, n: number, status = 503): void {
    this.failures.set(kind, { n, status });
  }

  slow(kind: RouteKind, ms: number): void {
    this.delays.set(kind, ms);
  }

  cutNext(n: number, afterBytes: number): void {
    this.cuts = { n, afterBytes };
  }

  throttle(chunkBytes: number, delayMs: number): void {
    this.pace = { chunkBytes, delayMs };
  }

  corruptNext(n: number): void {
    this.corrupt = n;
  }

  clearFaults(): void {
    this.corrupt = 0;
    this.failures.clear();
    this.delays.clear();
    this.cuts = { n: 0, afterBytes: 0 };
    this.pace = undefined;
  }

  private async handle(req: IncomingMessage, res: ServerResponse, isCdn: boolean): Promise<void> {
    const url = new URL(req.url ?? "/", "http://x");
    const auth = req.headers.authorization;
    const token = auth?.startsWith("Bearer ") === true ? auth.slice(7) : undefined;
    const route = isCdn ? { kind: "cdn" as const } : parseRoute(url.pathname);
    this.requests.push({ kind: route.kind, method: req.method ?? "GET", path: url.pathname, token });
    if (route.kind === "other") return json(res, 404, { error: "Not Found" });
    const delay = this.delays.get(route.kind);
    if (delay !== undefined) await new Promise((r) => setTimeout(r, delay));
    const fail = this.failures.get(route.kind);
    if (fail !== undefined && fail.n > 0) {
      fail.n--;
      return json(res, fail.status, { error: `injected ${fail.status}` });
    }
    if (route.kind === "cdn") return this.serveCdn(url, req, res);

    if (token !== undefined && !this.validTokens.has(token)) return json(res, 401, { error: "Invalid credentials in Authorization header" }, "Unauthorized");
    const repo = this.repos.get(route.repo);
    const visible = repo !== undefined && (!repo.private || (token !== undefined && repo.readers.has(token)));
    if (!visible) {
      // The Hub hides private repos: 401 to anonymous callers, 404 to authenticated ones.
      return token === undefined ? json(res, 401, { error: "Repository Not Found for url" }, "RepoNotFound") : json(res, 404, { error: "Repository Not Found for url" }, "RepoNotFound");
    }
    const sha = repo.refs.get(route.rev) ?? (repo.commits.has(route.rev) ? route.rev : undefined);
    if (sha === undefined) return json(res, 404, { error: `Invalid rev id: ${route.rev}` }, "RevisionNotFound");
    const commit = repo.commits.get(sha)!;

    if (route.kind === "revision") {
      return json(res, 200, {
        _id: `id-${repo.id}`,
        id: repo.id,
        sha,
        private: repo.private,
        gated: repo.gated ? "manual" : false,
        downloads: 0,
        likes: 0,
        lastModified: new Date().toISOString(),
        siblings: [...commit.files.keys()].map((rfilename) => ({ rfilename })),
      });
    }
    if (route.kind === "tree") {
      const dir = route.path === "" ? "" : `${route.path}/`;
      const entries = [...commit.files.values()]
        .filter((f) => f.path.startsWith(dir) && (url.searchParams.get("recursive") === "true" || !f.path.slice(dir.length).includes("/")))
        .map((f) => ({
          type: "file",
          oid: f.oid,
          size: f.content.length,
          path: f.path,
          ...(f.lfs ? { lfs: { oid: f.sha256, size: f.content.length, pointerSize: 134 } } : {}),
        }));
      return json(res, 200, entries);
    }
    // resolve
    if (repo.gated && !(token !== undefined && repo.readers.has(token))) {
      return token === undefined
        ? json(res, 401, { error: `Access to model ${repo.id} is restricted. You must have access to it and be authenticated to access it.` }, "GatedRepo")
        : json(res, 403, { error: `Access to model ${repo.id} is restricted and you are not in the authorized list.` }, "GatedRepo");
    }
    const file = commit.files.get(route.path);
    if (file === undefined) return json(res, 404, { error: "Entry not found" }, "EntryNotFound");
    if (file.lfs) {
      res.writeHead(302, {
        Location: `${this.cdnUrl}/cdn/${file.sha256}`,
        "X-Repo-Commit": sha,
        "X-Linked-Etag": `"${file.sha256}"`,
        "X-Linked-Size": String(file.content.length),
        ETag: `"${file.oid}"`,
        "Content-Length": "0",
      });
      return void res.end();
    }
    return this.sendFile(req, res, file.content, { ETag: `"${file.oid}"`, "X-Repo-Commit": sha });
  }

  private serveCdn(url: URL, req: IncomingMessage, res: ServerResponse): void {
    const want = url.pathname.slice("/cdn/".length);
    for (const repo of this.repos.values()) {
      for (const c of repo.commits.values()) {
        for (const f of c.files.values()) if (f.lfs && f.sha256 === want) return void this.sendFile(req, res, f.content, { ETag: `"${f.sha256}"` });
      }
    }
    json(res, 404, { error: "no such object" });
  }

  private async sendFile(req: IncomingMessage, res: ServerResponse, original: Buffer, headers: Record<string, string>): Promise<void> {
    let content = original;
    if (this.corrupt > 0 && req.method !== "HEAD") {
      this.corrupt--;
      content = Buffer.from(original);
      content[content.length >> 1] ^= 0xff;
    }
    res.writeHead(200, { ...headers, "Content-Type": "application/octet-stream", "Content-Length": String(content.length), "Accept-Ranges": "bytes" });
    if (req.method === "HEAD") return void res.end();
    if (this.cuts.n > 0 && content.length > this.cuts.afterBytes) {
      this.cuts.n--;
      res.write(content.subarray(0, this.cuts.afterBytes), () => res.socket?.destroy());
      return;
    }
    if (this.pace === undefined) return void res.end(content);
    const { chunkBytes, delayMs } = this.pace;
    for (let off = 0; off < content.length; off += chunkBytes) {
      if (res.destroyed) return;
      res.write(content.subarray(off, off + chunkBytes));
      await new Promise((r) => setTimeout(r, delayMs));
    }
    res.end();
  }
}

type Route = { kind: "revision" | "tree" | "resolve"; repo: string; rev: string; path: string } | { kind: "other" };

function parseRoute(pathname: string): Route {
  const api = /^\/api\/models\/(.+?)\/(revision|tree)\/([^/]+)(?:\/(.*))?$/.exec(pathname);
  if (api !== null) return { kind: api[2] as "revision" | "tree", repo: decodeURIComponent(api[1]), rev: decodeURIComponent(api[3]), path: decodeURIComponent(api[4] ?? "") };
  const resolve = /^\/(.+?)\/resolve\/([^/]+)\/(.+)$/.exec(pathname);
  if (resolve !== null) return { kind: "resolve", repo: decodeURIComponent(resolve[1]), rev: decodeURIComponent(resolve[2]), path: resolve[3].split("/").map(decodeURIComponent).join("/") };
  return { kind: "other" };
}

function json(res: ServerResponse, status: number, body: unknown, errorCode?: string): void {
  const text = JSON.stringify(body);
  const headers: Record<string, string> = { "Content-Type": "application/json", "Content-Length": String(Buffer.byteLength(text)) };
  if (errorCode !== undefined) headers["X-Error-Code"] = errorCode;
  if (status >= 400) headers["X-Error-Message"] = (body as { error?: string }).error ?? "";
  res.writeHead(status, headers);
  res.end(text);
}

export async function listen(server: Server): Promise<string> {
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}
