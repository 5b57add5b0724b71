// The benchmark peer: llama.cpp through node-llama-cpp (pinned in bench/peer/package.json, installed there on first
// use, apart from the main install), and the few measurements we take of it. It never touches our engine.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const PEER_DIR = path.join(ROOT, "bench", "peer");
export const PEER_PACKAGE = "node-llama-cpp";
export const PEER_VERSION = "3.21.1";
const PEER_MAIN = path.join(PEER_DIR, "node_modules", PEER_PACKAGE, "dist", "index.js");

/** The slice of node-llama-cpp's API the benchmarks use (declared here so type-checking never needs the peer). */
interface NlcSequence {
  evaluate(tokens: number[], options?: { temperature?: number }): AsyncGenerator<number, void, void>;
  evaluateWithMetadata(
    tokens: number[],
    metadata: { probabilities: true },
    options?: { temperature?: number },
  ): AsyncGenerator<{ token: number; probabilities: Map<number, number> }, void, void>;
  evaluateWithoutGeneratingNewTokens(tokens: number[]): Promise<void>;
  clearHistory(): Promise<void>;
  dispose(): void;
}
interface NlcContext {
  getSequence(): NlcSequence;
  dispose(): Promise<void>;
  readonly currentThreads: number;
}
export interface NlcContextOptions {
  sequences?: number;
  contextSize?: number;
  batchSize?: number;
  threads?: number | { ideal?: number; min?: number };
  lora?: { adapters: { filePath: string; scale?: number }[] };
  experimentalKvCacheKeyType?: string;
  experimentalKvCacheValueType?: string;
  flashAttention?: boolean | "auto";
}
interface NlcModel {
  createContext(options: NlcContextOptions): Promise<NlcContext>;
  tokenize(text: string, specialTokens?: boolean): number[];
  dispose(): Promise<void>;
}
interface NlcLlama {
  loadModel(options: { modelPath: string }): Promise<NlcModel>;
  dispose(): Promise<void>;
  readonly buildType: string;
  readonly systemInfo: string;
  readonly cpuMathCores: number;
  readonly llamaCppRelease: { repo: string; release: string };
}
interface NlcModule {
  getLlama(options: { gpu: false; build: "never"; logLevel?: string; maxThreads?: number; progressLogs?: boolean }): Promise<NlcLlama>;
}

export function peerInstalledVersion(): string | undefined {
  const pkg = path.join(PEER_DIR, "node_modules", PEER_PACKAGE, "package.json");
  if (!fs.existsSync(pkg)) return undefined;
  return (JSON.parse(fs.readFileSync(pkg, "utf8")) as { version?: string }).version;
}

/**
 * Installs the peer from bench/peer/package-lock.json (`npm ci`, scripts off: its prebuilt CPU binary ships inside
 * an npm package, nothing is downloaded or compiled). Returns undefined when ready, else why not.
 */
export function ensurePeerInstalled(log: (line: string) => void = () => {}): string | undefined {
  if (peerInstalledVersion() === PEER_VERSION) return undefined;
  log(`installing ${PEER_PACKAGE}@${PEER_VERSION} into bench/peer (first use; its optional GPU packages take ~700 MB)`);
  const npm = process.platform === "win32" ? "npm.cmd" : "npm";
  const r = spawnSync(npm, ["ci", "--ignore-scripts", "--prefer-offline", "--no-audit", "--no-fund"], {
    cwd: PEER_DIR, encoding: "utf8", timeout: 15 * 60_000,
  });
  if (r.error) return `npm ci in bench/peer failed to start: ${r.error.message} (is npm on PATH?)`;
  if (r.status !== 0) {
    const tail = `${r.stdout}\n${r.stderr}`.trim().split("\n").slice(-8).join("\n");
    return `npm ci in bench/peer exited with ${r.status}:\n${tail}`;
  }
  const v = peerInstalledVersion();
  return v === PEER_VERSION ? undefined : `bench/peer has ${PEER_PACKAGE}@${v ?? "nothing"} after npm ci, expected ${PEER_VERSION}: check bench/peer/package-lock.json`;
}

/** One llama.cpp instance (CPU, prebuilt binary) with the thread count our engine uses. */
export class LlamaCppPeer {
  private constructor(
    private readonly llama: NlcLlama,
    readonly threads: number,
  ) {}

  static async open(threads = os.availableParallelism()): Promise<LlamaCppPeer> {
    if (!fs.existsSync(PEER_MAIN)) throw new Error(`${PEER_MAIN} is missing: install the peer first (ensurePeerInstalled, or npm ci in bench/peer)`);
    const mod = (await import(pathToFileURL(PEER_MAIN).href)) as NlcModule;
    const llama = await mod.getLlama({ gpu: false, build: "never", logLevel: "error", maxThreads: threads, progressLogs: false });
    return new LlamaCppPeer(llama, threads);
  }

  get description(): string {
    const r = this.llama.llamaCppRelease;
    return `${PEER_PACKAGE}@${PEER_VERSION} (llama.cpp ${r.repo}@${r.release}, ${this.llama.buildType} CPU binary, ${this.threads} threads)`;
  }

  get systemInfo(): string {
    return this.llama.systemInfo;
  }

  async loadModel(ggufPath: string): Promise<LlamaCppModel> {
    return new LlamaCppModel(await this.llama.loadModel({ modelPath: ggufPath }), this.threads);
  }

  async close(): Promise<void> {
    await this.llama.dispose();
  }
}

export class LlamaCppModel {
  constructor(
    readonly model: NlcModel,
    private readonly threads: number,
  ) {}

  /** A context with `sequences` parallel sequences of `contextSize` tokens each; F32 KV on request (default F16). */
  async context(sequences: number, contextSize: number, extra: Partial<NlcContextOptions> & { f32Kv?: boolean } = {}): Promise<NlcContext> {
    const { f32Kv, ...rest } = extra;
    return this.model.createContext({
      sequences, contextSize, batchSize: 512, threads: { ideal: this.threads, min: 1 },
      ...(f32Kv ? { experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32" } : {}),
      ...rest,
    });
  }

  /** Prefill tokens/s of one prompt in a fresh single-sequence context (wall-clock). */
  async prefill(prompt: number[]): Promise<number> {
    const ctx = await this.context(1, prompt.length + 16);
    try {
      const seq = ctx.getSequence();
      const t0 = performance.now();
      await seq.evaluateWithoutGeneratingNewTokens(prompt);
      return prompt.length / ((performance.now() - t0) / 1e3);
    } finally {
      await ctx.dispose();
    }
  }

  /**
   * Aggregate decode tokens/s with one sequence per prompt in one context, as node-llama-cpp batches them: every
   * prompt but its last token is prefilled first (untimed), then `newTokens` greedy tokens each are timed.
   */
  async decode(prompts: number[][], newTokens: number, ctxOptions: Partial<NlcContextOptions> = {}): Promise<number> {
    const ctx = await this.context(prompts.length, Math.max(...prompts.map((p) => p.length)) + newTokens + 16, ctxOptions);
    try {
      return await decodeOn(ctx, prompts, newTokens);
    } finally {
      await ctx.dispose();
    }
  }

  /**
   * Greedy tokens and llama.cpp's top-2 log-probability gap at each step. `exact`: F32 KV cache and no flash attention
   * (its CPU flash attention rounds Q·K through F16), so F32 weights compute in F32 throughout, as ours do.
   */
  async greedy(prompts: number[][], newTokens: number, exact = true, lora?: string): Promise<{ tokens: number[]; gaps: number[] }[]> {
    const ctx = await this.context(prompts.length, Math.max(...prompts.map((p) => p.length)) + newTokens + 16, {
      f32Kv: exact, ...(exact ? { flashAttention: false } : {}), ...(lora ? { lora: { adapters: [{ filePath: lora, scale: 1 }] } } : {}),
    });
    try {
      return await Promise.all(
        prompts.map(async (p) => {
          const seq = ctx.getSequence();
          const tokens: number[] = [], gaps: number[] = [];
          for await (const o of seq.evaluateWithMetadata(p, { probabilities: true }, { temperature: 0 })) {
            tokens.push(o.token);
            const top = [...o.probabilities.values()].sort((a, b) => b - a);
            gaps.push(top.length > 1 && top[1] > 0 ? Math.log(top[0] / top[1]) : Infinity);
            if (tokens.length === newTokens) break;
          }
          return { tokens, gaps };
        }),
      );
    } finally {
      await ctx.dispose();
    }
  }

  async close(): Promise<void> {
    await this.model.dispose();
  }
}

/** Decode throughput on an existing context (one sequence per prompt); see LlamaCppModel.decode. */
export async function decodeOn(ctx: NlcContext, prompts: number[][], newTokens: number): Promise<number> {
  const seqs = prompts.map(() => ctx.getSequence());
  try {
    await Promise.all(seqs.map((s, i) => s.evaluateWithoutGeneratingNewTokens(prompts[i].slice(0, -1))));
    const t0 = performance.now();
    await Promise.all(
      seqs.map(async (s, i) => {
        let n = 0;
        for await (const _t of s.evaluate(prompts[i].slice(-1), { temperature: 0 })) if (++n === newTokens) break;
      }),
    );
    return (prompts.length * newTokens) / ((performance.now() - t0) / 1e3);
  } finally {
    for (const s of seqs) s.dispose();
  }
}

/**
 * Aggregate decode tokens/s over several contexts decoding at once (e.g. one per LoRA adapter, as llama.cpp serves
 * adapters): all prompts prefilled first (untimed), then every context generates `newTokens` per sequence together.
 */
export async function decodeAcross(ctxs: NlcContext[], promptsPerCtx: number[][][], newTokens: number): Promise<number> {
  const seqs = ctxs.map((c, i) => promptsPerCtx[i].map(() => c.getSequence()));
  try {
    await Promise.all(seqs.flatMap((ss, i) => ss.map((s, j) => s.evaluateWithoutGeneratingNewTokens(promptsPerCtx[i][j].slice(0, -1)))));
    const t0 = performance.now();
    await Promise.all(
      seqs.flatMap((ss, i) =>
        ss.map(async (s, j) => {
          let n = 0;
          for await (const _t of s.evaluate(promptsPerCtx[i][j].slice(-1), { temperature: 0 })) if (++n === newTokens) break;
        }),
      ),
    );
    const total = promptsPerCtx.reduce((a, p) => a + p.length, 0) * newTokens;
    return total / ((performance.now() - t0) / 1e3);
  } finally {
    for (const s of seqs.flat()) s.dispose();
  }
}

/** Time to first token per request on one context with a sequence per request, arrivals in seconds from the start. */
export async function ttftOn(model: LlamaCppModel, ps: number[][], arrivals: number[], newTokens: number): Promise<{ ttft: number[]; wall: number }> {
  const ctx = await model.context(ps.length, Math.max(...ps.map((p) => p.length)) + newTokens + 16);
  try {
    const t0 = performance.now();
    const ttft = await Promise.all(
      ps.map(async (prompt, i) => {
        const at = t0 + arrivals[i] * 1e3 - performance.now();
        if (at > 0) await new Promise((r) => setTimeout(r, at));
        const seq = ctx.getSequence();
        const start = performance.now();
        let first = NaN, n = 0;
        try {
          for await (const _t of seq.evaluate(prompt, { temperature: 0 })) {
            if (n++ === 0) first = performance.now();
            if (n === newTokens) break;
          }
        } finally {
          seq.dispose();
        }
        return (first - start) / 1e3;
      }),
    );
    return { ttft, wall: (performance.now() - t0) / 1e3 };
  } finally {
    await ctx.dispose();
  }
}
