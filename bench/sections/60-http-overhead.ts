// Section "http-overhead" (HTTP server issue): tokens/s streamed through POST /v1/chat/completions on loopback
// ÷ the same requests submitted to the engine in the same process, at 1 and 32 concurrent streams, in adjacent
// pairs.
// One server, one engine: the in-process runs use the server's own engine, so weights and state are shared.
import { Writable } from "node:stream";

import pino from "pino";

import { DEFAULT_SAMPLING } from "../../engine/src/sampling.js";
import { parseConfig } from "../../server/src/config.js";
import { startServer } from "../../server/src/main.js";
import { median } from "../lib/measure.js";
import { fmtRate, fmtX, type BenchSection } from "../lib/section.js";

const section: BenchSection = {
  name: "http-overhead",
  describe: "tokens/s through /v1/chat/completions (SSE) ÷ the same requests through the Engine, 1 and 32 streams",
  async run(ctx) {
    const silent = pino({ level: "silent" }, new Writable({ write: (_c, _e, cb) => cb() }));
    const srv = await startServer(parseConfig(["--model-id", ctx.benchModel("BF16"), "--hostname", "127.0.0.1", "--port", "0", "--kv-cache-bytes", String(1 << 30), "--max-concurrent-requests", "256"]), silent);
    const url = `http://127.0.0.1:${(srv.server.address() as { port: number }).port}`;
    const newTokens = ctx.quick ? 16 : 48;
    const messages = (i: number) => [{ role: "user", content: `Stream number ${i}: tell me a long story about the sea.` }];
    const viaEngine = async (n: number) => {
      const t0 = performance.now();
      let tokens = 0;
      await Promise.all(
        Array.from({ length: n }, async (_, i) => {
          const sub = await srv.ctx.engine.submit({ input: { messages: messages(i) }, params: { ...DEFAULT_SAMPLING, maxNewTokens: newTokens, ignoreEos: true } });
          for await (const e of sub.events) if (e.type === "token") tokens++;
        }),
      );
      return tokens / ((performance.now() - t0) / 1e3);
    };
    const viaHttp = async (n: number) => {
      const t0 = performance.now();
      let tokens = 0;
      await Promise.all(
        Array.from({ length: n }, async (_, i) => {
          const r = await fetch(`${url}/v1/chat/completions`, {
            method: "POST", headers: { "content-type": "application/json" },
            body: JSON.stringify({ model: "", messages: messages(i), max_tokens: newTokens, temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true } }),
          });
          const text = await r.text();
          const usage = text.split("\n\n").map((b) => b.replace(/^data: /, "")).filter((b) => b.startsWith("{")).map((b) => JSON.parse(b)).find((c) => c.usage)?.usage;
          tokens += usage?.completion_tokens ?? 0;
        }),
      );
      return tokens / ((performance.now() - t0) / 1e3);
    };
    const rows: { streams: number; engineTokS: number; httpTokS: number; ratio: number }[] = [];
    try {
      for (const n of [1, 32]) {
        // The machine's bandwidth drifts by tens of percent within a minute: each repetition pairs an engine run
        // with an HTTP run next to it (which goes first alternates), and the figure is the median of the pairs'
        // ratios. One stream is short and drift-prone, so it gets more pairs.
        const e: number[] = [], h: number[] = [], pairs: number[] = [];
        for (let rep = 0; rep < (ctx.quick ? 2 : n === 1 ? 9 : 3); rep++) {
          let engineTokS: number, httpTokS: number;
          if (rep % 2 === 0) (engineTokS = await viaEngine(n)), (httpTokS = await viaHttp(n));
          else (httpTokS = await viaHttp(n)), (engineTokS = await viaEngine(n));
          e.push(engineTokS);
          h.push(httpTokS);
          pairs.push(httpTokS / engineTokS);
        }
        const row = { streams: n, engineTokS: median(e), httpTokS: median(h), ratio: median(pairs) };
        rows.push(row);
        ctx.log(`${n} streams: engine ${fmtRate(row.engineTokS)}, HTTP ${fmtRate(row.httpTokS)} (${fmtX(row.ratio)})`);
      }
    } finally {
      await srv.close();
    }
    return {
      json: { newTokens, rows },
      summary: rows.map((r) => ({ figure: `HTTP ÷ engine, ${r.streams} stream${r.streams > 1 ? "s" : ""}`, value: `${fmtX(r.ratio)} (${fmtRate(r.httpTokS)} vs ${fmtRate(r.engineTokS)})`, target: "≥ 0.95", met: r.ratio >= 0.95 })),
      charts: [
        {
          kind: "bars", file: "http-overhead.png", title: "Streaming through HTTP vs in-process", subtitle: `BF16 bench model, ${newTokens} tokens per stream`,
          yLabel: "tokens/s", categories: rows.map((r) => `${r.streams} stream(s)`),
          series: [{ name: "engine", values: rows.map((r) => r.engineTokS) }, { name: "HTTP /v1/chat/completions", values: rows.map((r) => r.httpTokS) }],
          format: (v) => v.toFixed(0),
        },
      ],
    };
  },
};

export default section;
