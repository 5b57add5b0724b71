// The benchmark section contract: each file in bench/sections/ default-exports a BenchSection, and the runner
// (bench/run.ts) gives every section the same BenchContext. Sections own their measurements; the runner owns files.
import type { DType } from "../../engine/src/model/safetensors.js";
import type { ChartSpec } from "./chart.js";
import type { LlamaCppPeer } from "./llama-cpp.js";

/** One line of the run's summary table: a headline figure, preferably a ratio measured in this run. */
export interface SummaryRow {
  figure: string;
  value: string;
  /** The target, as text ("≥ 1.2×"). */
  target?: string;
  /** Whether the target is met (undefined: no target). */
  met?: boolean;
}

export interface SectionResult {
  /** Everything measured, as plain JSON (numbers in base units: tokens/s, bytes, seconds). */
  json: unknown;
  charts?: ChartSpec[];
  summary?: SummaryRow[];
  /** Set when the section could not run; the reason is printed and stored. */
  skipped?: string;
}

export interface Hardware {
  /** Memory read bandwidth, bytes/s (native probe, all threads). */
  bandwidth: number;
  /** FMA throughput, FLOP/s (native probe, all threads). */
  fma: number;
  threads: number;
  cpu: string;
  memoryBytes: number;
}

export interface BenchContext {
  quick: boolean;
  hardware: Hardware;
  log(line: string): void;
  /** llama.cpp, installed on first call and opened once; undefined (see peerUnavailable) when it cannot be. */
  peer(): Promise<LlamaCppPeer | undefined>;
  readonly peerUnavailable: string | undefined;
  /** The HF directory of the bench model in this dtype (written on first use). */
  benchModel(dtype: DType): string;
  /** Its GGUF file for llama.cpp (converted on first use). */
  benchGguf(dtype: DType): string;
  /** Scratch space kept between runs (.cache/bench). */
  cacheDir: string;
  /** Results of the sections that ran before this one, by name. */
  results: ReadonlyMap<string, SectionResult>;
}

export interface BenchSection {
  name: string;
  /** One line on what it measures (printed, and copied into the results). */
  describe: string;
  run(ctx: BenchContext): Promise<SectionResult>;
}

export const skipped = (reason: string, json: unknown = null): SectionResult => ({ json, skipped: reason });

export const ratio = (a: number, b: number): number => (b > 0 && Number.isFinite(a) && Number.isFinite(b) ? a / b : NaN);
export const fmtX = (x: number): string => (Number.isFinite(x) ? `${x.toFixed(2)}×` : "n/a");
export const fmtRate = (x: number): string => (Number.isFinite(x) ? `${x.toFixed(x >= 100 ? 0 : 1)} tok/s` : "n/a");
