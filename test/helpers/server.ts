// Starts a real loraserve HTTP server on 127.0.0.1 (ephemeral port) over a tiny model for tests, with its log
// captured in memory. Usable outside vitest (scripts, benchmarks).
import { Writable } from "node:stream";

import pino from "pino";

import { parseConfig } from "../../server/src/config.js";
import type { ServerContext } from "../../server/src/context.js";
import { startServer } from "../../server/src/main.js";
import { tinyModels } from "./tiny.js";


export interface TestServer {
  url: string;
  ctx: ServerContext;
  logs: string[];
  close(): Promise<void>;
}

export async function startTestServer(args: string[] = [], model = "llama-f32"): Promise<TestServer> {
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      logs.push(chunk.toString());
      cb();
    },
  });
  const config = parseConfig(["--model-id", tinyModels()[model], "--hostname", "127.0.0.1", "--port", "0", "--kv-cache-bytes", String(64 << 20), ...args]);
  const { ctx, server, close } = await startServer(config, pino({ level: "debug" }, sink));
  const addr = server.address();
  if (!addr || typeof addr === "string") throw new Error("server has no TCP address");
  return { url: `http://127.0.0.1:${addr.port}`, ctx, logs, close };
}

/** Reads an SSE response body into its `data:` payloads. */
export async function readSse(res: Response): Promise<string[]> {
  const text = await res.text();
  return text
    .split("\n\n")
    .map((b) => b.trim())
    .filter(Boolean)
    .map((b) => {
      if (!b.startsWith("data: ")) throw new Error(`not an SSE data event: ${b.slice(0, 80)}`);
      return b.slice(6);
    });
}
