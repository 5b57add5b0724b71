// `loraserve`: parses flags and environment, loads the base model into the engine, warms it up, serves HTTP,
// and shuts down gracefully on SIGTERM (stop accepting, finish in-flight requests, exit).
import fs from "node:fs";
import type { Server } from "node:http";

import { CommanderError } from "commander";
import pino from "pino";

import path from "node:path";

import { AdapterRegistry } from "../../engine/src/adapters/registry.js";
import { adapterSourcesConfigFromEnv, createAdapterSources, globalTokenFromEnv, resolveSource, type AdapterSources } from "../../engine/src/adapters/sources/index.js";
import { Engine } from "../../engine/src/engine.js";
import { DEFAULT_SAMPLING } from "../../engine/src/sampling.js";
import { createApp } from "./app.js";
import { availableMemory, DEMO_MODEL_DIR, kvBudgetBytes, parseConfig, type ServerConfig } from "./config.js";
import type { ServerContext } from "./context.js";
import { Metrics } from "./metrics.js";

export async function startServer(config: ServerConfig, logger = makeLogger(config)): Promise<{ ctx: ServerContext; server: Server; close: () => Promise<void> }> {
  // Adapters the operator names on the command line as local paths are readable wherever they are.
  const operatorPaths = [config.adapterId, ...config.preloadedAdapterIds].filter((id): id is string => !!id && fs.existsSync(id)).map((id) => path.resolve(id));
  config = {
    ...config,
    adapterId: config.adapterId && fs.existsSync(config.adapterId) ? path.resolve(config.adapterId) : config.adapterId,
    preloadedAdapterIds: config.preloadedAdapterIds.map((id) => (fs.existsSync(id) ? path.resolve(id) : id)),
  };
  const demo = path.resolve(config.modelId) === DEMO_MODEL_DIR;
  // Serving the demo model: its adapters and Medusa heads may be read, and its adapters get names.
  const localRoots = [...config.adapterLocalRoots, ...(demo ? [DEMO_MODEL_DIR] : []), ...operatorPaths];
  const sources = await createAdapterSources(adapterSourcesConfigFromEnv({ dataDir: config.dataDir, localRoots, logger: logger.child({ part: "sources" }) }));
  const globalToken = globalTokenFromEnv(process.env);
  const modelDir = await resolveModel(config, sources, globalToken.serverToken, logger);
  const t0 = Date.now();
  const engine = await Engine.create(modelDir, {
    kvBytes: kvBudgetBytes(config),
    blockSize: 16,
    maxStepTokens: config.maxBatchPrefillTokens + 256,
    maxOutRows: 256,
    maxBatchPrefillTokens: config.maxBatchPrefillTokens,
    maxBatchTotalTokens: config.maxBatchTotalTokens,
    maxWaitingTokens: config.maxWaitingTokens,
    waitingServedRatio: config.waitingServedRatio,
    maxConcurrentRequests: config.maxConcurrentRequests,
    maxInputLength: config.maxInputLength,
    maxTotalTokens: config.maxTotalTokens,
    threads: config.threads,
    dtype: config.dtype === "float32" ? "F32" : config.dtype === "bfloat16" ? "BF16" : config.dtype === "float16" ? "F16" : undefined,
    loraSlots: config.maxActiveAdapters,
    loraMaxRank: config.loraMaxRank,
    speculativeTokens: config.speculativeTokens,
    medusaTreeSize: config.medusaTreeSize,
    fixedSpeculation: config.fixedSpeculation,
    prefixCaching: config.prefixCaching,
    mapWeights: config.mmapWeights,
    device: config.device ?? "auto",
  });
  const info = engine.backend.info();
  logger.info({ model: modelDir, backend: info.backend, threads: info.threads, weightMB: Math.round(info.weightBytes / 1e6), weightsInMemory: info.weightsInMemory, kvBlocks: info.kvBlocks, ms: Date.now() - t0 }, "model loaded");
  const modelId = config.modelId;
  const metrics = new Metrics(modelId);
  const adapterBudget = config.adapterMemoryBytes ?? Math.floor(availableMemory() * config.adapterMemoryFraction);
  const registry = new AdapterRegistry({
    backend: engine.backend,
    sources,
    maxActive: config.maxActiveAdapters,
    activeBudgetBytes: adapterBudget,
    hostBudgetBytes: 4 * adapterBudget,
    cycleTimeMs: config.adapterCycleTimeS * 1000,
    maxMergeIds: config.maxMergeIds,
    logger: logger.child({ part: "adapters" }),
    wake: () => engine.kick(),
    onTransition: (name, from, to) => metrics.adapterTransition(name, from, to),
    medusaHeads: () => engine.medusaHeads,
  });
  engine.setAdapterProvider(registry);
  metrics.watch(engine, registry, config.maxActiveAdapters);
  const ctx: ServerContext = { engine, config, metrics, logger, registry, modelId, ready: false, globalToken, defaultIsMedusa: false };
  if (config.adapterId) {
    // A Medusa --adapter-id turns on speculation for every request; a LoRA one is the default adapter.
    const source = resolveSource(config.adapterId, undefined, config.adapterSource);
    const heads = await registry.loadDefaultMedusa(config.adapterId, source, source === "hub" ? ctx.globalToken.serverToken : undefined);
    if (heads !== undefined) {
      engine.setDefaultMedusa(0, heads);
      ctx.defaultIsMedusa = true;
    }
  }
  const demoAdapters = path.join(DEMO_MODEL_DIR, "adapters");
  if (demo && fs.existsSync(demoAdapters))
    for (const name of fs.readdirSync(demoAdapters).sort()) {
      await registry.register(name, path.join(demoAdapters, name), "local", undefined, false);
      logger.info({ adapter: name }, "demo adapter registered: use it as `model`");
    }
  for (const id of config.preloadedAdapterIds) {
    const source = resolveSource(id, undefined, config.adapterSource);
    await registry.register(id, id, source, source === "hub" ? ctx.globalToken.serverToken : undefined, true);
    logger.info({ adapter: id }, "preloaded and pinned");
  }
  const app = createApp(ctx);
  const server = await new Promise<Server>((resolve, reject) => {
    const s = app.listen(config.port, config.hostname, () => resolve(s));
    s.once("error", reject);
  });
  // Warm-up: one short generation through the whole path before /health turns green.
  for await (const _e of engine.generate({ prompt: [engine.tokenizer.bosId ?? 0], params: { ...DEFAULT_SAMPLING, maxNewTokens: 1 } }));
  ctx.ready = true;
  const addr = server.address();
  logger.info({ address: typeof addr === "object" && addr ? `http://${addr.address}:${addr.port}` : addr }, "ready");
  const close = async () => {
    ctx.ready = false;
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
    await sources.close();
    engine.backend.close();
  };
  return { ctx, server, close };
}

/** --model-id as a local directory: a path that exists (or --source local), else a Hub id or s3:// prefix. */
async function resolveModel(config: ServerConfig, sources: AdapterSources, token: string | undefined, logger: pino.Logger): Promise<string> {
  const id = config.modelId;
  const source = config.source ?? (fs.existsSync(id) ? "local" : id.startsWith("s3://") ? "s3" : "hub");
  if (source === "local") {
    if (!fs.existsSync(path.join(id, "config.json"))) throw new Error(`--model-id ${id}: no config.json there (a Hugging Face model directory is expected)`);
    return id;
  }
  const ref = source === "hub" && config.revision && !id.includes("@") ? `${id}@${config.revision}` : id;
  logger.info({ model: ref, source }, "fetching the base model");
  const fetched = await sources.fetchModel(source, ref, token);
  logger.info({ model: ref, dir: fetched.dir, bytes: fetched.bytes, ms: fetched.timings.totalMs }, "base model ready");
  return fetched.dir;
}

export function makeLogger(config: Pick<ServerConfig, "jsonOutput">): pino.Logger {
  return config.jsonOutput
    ? pino({ level: process.env.LOG_LEVEL ?? "info" })
    : pino({ level: process.env.LOG_LEVEL ?? "info", transport: { target: "pino-pretty", options: { colorize: process.stdout.isTTY, translateTime: "SYS:HH:MM:ss" } } });
}

async function main(): Promise<void> {
  let config: ServerConfig;
  try {
    config = parseConfig(process.argv.slice(2));
  } catch (e) {
    // commander has printed the help, the version or the error already.
    if (e instanceof CommanderError) process.exit(e.exitCode === 0 ? 0 : 2);
    throw e;
  }
  const logger = makeLogger(config);
  let running: Awaited<ReturnType<typeof startServer>>;
  try {
    running = await startServer(config, logger);
  } catch (e) {
    logger.fatal({ err: (e as Error).message }, "start-up failed");
    process.exitCode = 1;
    return;
  }
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down: finishing in-flight requests");
    running.ctx.ready = false;
    running.server.close();
    const timeout = new Promise((r) => setTimeout(r, running.ctx.config.shutdownTimeoutS * 1000).unref());
    await Promise.race([running.ctx.engine.drain(), timeout]);
    running.ctx.engine.backend.close();
    logger.info("bye");
    process.exit(0);
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));
}

if (process.argv[1] && /main\.(ts|js)$/.test(process.argv[1])) void main();
export { main };
