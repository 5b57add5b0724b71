// The `loraserve` command as users run it (a child process of bin/loraserve.js): --help lists every flag of
// SPEC §1 with its environment variable, a bad flag exits 2 with a message, environment variables are read,
// SIGTERM finishes in-flight streams before exiting; a client that disconnects cancels its request.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { afterAll, describe, expect, it } from "vitest";

import { tinyModels } from "../helpers/tiny.js";
import { startTestServer } from "../helpers/server.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const BIN = path.join(ROOT, "bin", "loraserve.js");
const SPEC_FLAGS = [
  "model-id", "source", "revision", "adapter-id", "adapter-source", "preloaded-adapter-ids", "max-active-adapters",
  "adapter-memory-fraction", "adapter-memory-bytes", "adapter-cycle-time-s", "max-concurrent-requests", "max-input-length",
  "max-total-tokens", "max-batch-prefill-tokens", "max-batch-total-tokens", "max-waiting-tokens", "waiting-served-ratio",
  "max-best-of", "max-stop-sequences", "speculative-tokens", "dtype", "device", "hostname", "port", "json-output",
  "cors-allow-origin", "api-keys", "data-dir", "adapter-local-roots", "medusa-tree-size", "fixed-speculation",
  "mmap-weights", "served-model-name", "prefix-caching",
];

const children: ChildProcess[] = [];
afterAll(() => children.forEach((c) => c.kill("SIGKILL")));

describe("the command line", () => {
  it("--help lists every SPEC flag with its environment variable", () => {
    const r = spawnSync(process.execPath, [BIN, "--help"], { encoding: "utf8" });
    expect(r.status).toBe(0);
    const help = r.stdout.replace(/\s+/g, " ");
    for (const f of SPEC_FLAGS) {
      expect(help).toContain(`--${f}`);
      expect(help).toContain(`env: ${f.replace(/-/g, "_").toUpperCase()}`);
    }
  });

  it("a bad flag value exits 2 naming it", () => {
    const r = spawnSync(process.execPath, [BIN, "--max-total-tokens", "lots"], { encoding: "utf8" });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--max-total-tokens must be an integer ≥ 2, got "lots"/);
  });

  it("reads flags from the environment, serves, and on SIGTERM lets a running stream finish", async () => {
    const port = 20000 + Math.floor(Math.random() * 20000);
    const child = spawn(process.execPath, [BIN, "--hostname", "127.0.0.1", "--json-output"], {
      env: { ...process.env, MODEL_ID: tinyModels()["llama-f32"], PORT: String(port), KV_CACHE_BYTES: String(32 << 20), SHUTDOWN_TIMEOUT_S: "20" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    children.push(child);
    let out = "";
    child.stdout!.on("data", (d) => (out += d));
    const url = `http://127.0.0.1:${port}`;
    for (let i = 0; i < 300 && !out.includes('"msg":"ready"'); i++) await new Promise((r) => setTimeout(r, 100));
    expect(out).toContain('"msg":"ready"');
    expect(JSON.parse(out.split("\n")[0]).level).toBeDefined(); // --json-output from the flag, one object per line
    const res = await fetch(`${url}/generate_stream`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ inputs: "x", parameters: { max_new_tokens: 200 } }) });
    const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
    child.kill("SIGTERM");
    const events = (await res.text()).split("\n\n").filter(Boolean);
    expect(events).toHaveLength(200);
    expect(JSON.parse(events.at(-1)!.slice(6)).details.finish_reason).toBe("length");
    expect(await exited).toBe(0);
    expect(out).toContain("shutting down");
  });
});

describe("client disconnects", () => {
  it("cancel the request; its blocks are free after the next step", async () => {
    const srv = await startTestServer();
    try {
      const ac = new AbortController();
      const res = await fetch(`${srv.url}/generate_stream`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ inputs: "x", parameters: { max_new_tokens: 1000 } }), signal: ac.signal });
      const reader = res.body!.getReader();
      await reader.read();
      expect(srv.ctx.engine.requestsInFlight).toBe(1);
      ac.abort();
      for (let i = 0; i < 100 && srv.ctx.engine.requestsInFlight > 0; i++) await new Promise((r) => setTimeout(r, 10));
      expect(srv.ctx.engine.requestsInFlight).toBe(0);
      await new Promise((r) => setTimeout(r, 50));
      expect(srv.ctx.engine.scheduler.blocks.usedCount).toBe(0);
    } finally {
      await srv.close();
    }
  });
});
