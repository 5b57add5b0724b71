// The typed face of the native addon (build/Release/loraserve_native.node): its functions and the shapes of
// what they take and return. Only backend.ts, the benchmarks and kernel tests import this file.
import fs from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

export interface NativeTensorRef {
  name: string;
  file: number;
  dtype: number; // 0 F32, 1 F16, 2 BF16
  shape: number[];
  offset: number;
  nbytes: number;
}

export interface NativeLoadOptions {
  config: {
    vocab: number;
    hidden: number;
    intermediate: number;
    layers: number;
    heads: number;
    kvHeads: number;
    headDim: number;
    rmsEps: number;
    tied: boolean;
    qkvBias: boolean;
    invFreq: Float32Array; // [headDim/2]
    window: Int32Array; // [layers], 0 = full attention
  };
  files: string[];
  tensors: NativeTensorRef[];
  kvBlocks: number;
  blockSize: number;
  maxStepTokens: number;
  maxOutRows: number;
  threads: number;
  reference: boolean;
  /** cpu | cuda | auto (cuda when `cuda.usable`, else cpu; reference forces cpu). */
  device: NativeDevice;
  weightDtype: number; // -1 = as stored
  /** Keep weights in file mappings instead of reading them into huge-page memory (CPU backend). */
  mapWeights: boolean;
  loraSlots: number;
  loraMaxRank: number;
}

/** One step's input; see DESIGN.md "The native step contract". Row layouts are fixed by native/src/addon.cc. */
export interface NativeStepInput {
  tokens: Int32Array; // [T]
  positions: Int32Array; // [T]
  kvIndex?: Int32Array; // [T] logical KV slot written (default: positions)
  seq: Int32Array; // [T] index into the step's sequences
  adapter: Int32Array; // [T] LoRA slot, -1 = base
  treeBase?: Int32Array; // [T]
  treeMask?: BigUint64Array; // [T]
  btOffsets: Int32Array; // [S+1]
  bt: Int32Array; // block ids, all sequences flattened
  outRows: Int32Array; // [R]
  /** [R, 10]: top_k, n_top, target id, flags (1 sample, 2 do_sample), pen offset, pen count, mask index, step, bias offset, bias count. */
  rowI: Int32Array;
  /** [R, 8]: temperature, top_p, typical_p, min_p, repetition, presence, frequency penalties, unused. */
  rowF: Float32Array;
  rowSeed: BigUint64Array; // [R]
  penIds?: Int32Array;
  penCounts?: Int32Array;
  biasIds?: Int32Array; // logit bias: token ids, rows' ranges given by rowI
  bias?: Float32Array; // added to those tokens' logits
  masks?: Uint32Array; // [M, ceil(vocab/32)]
  nTop: number;
  wantLogits?: boolean;
  wantHidden?: boolean;
  blockCopies?: Int32Array; // [C, 2]: (source block, destination block), copied first (copy-on-write)
  kvMoves?: Int32Array; // [M, 3]: (sequence, from KV index, to KV index), applied before the forward pass
  groups?: Int32Array; // [G, 3]: (first out row, nodes, medusa set or -1); every sampled row in one group
  groupParents?: Int32Array; // per group, n parents (root -1)
  medusaK?: number;
}

export interface NativeStepOutput {
  tokens: Int32Array; // [R], -1 where not sampled
  logprobs: Float32Array; // [R]
  targetLogprobs: Float32Array; // [R]
  topIds: Int32Array; // [R, nTop]
  topLogprobs: Float32Array; // [R, nTop]
  logits?: Float32Array; // [R, vocab]
  hidden?: Float32Array; // [R, hidden]
  maxNodes: number;
  accepted: Int32Array; // [G]
  path: Int32Array; // [G, maxNodes]
  pathLogprobs: Float32Array; // [G, maxNodes]
  bonus: Int32Array; // [G]
  bonusLogprobs: Float32Array; // [G]
  lastRow: Int32Array; // [G]
  medusaHeads: number;
  medusaIds: Int32Array; // [G, medusaHeads, medusaK]
  micros: number;
  /** Of micros, the Medusa heads' (0 when none ran). */
  medusaMicros: number;
}

export interface NativeMedusa {
  heads: number;
  ownLmHead: boolean;
  w: Float32Array; // [heads, hidden, hidden]
  b: Float32Array; // [heads, hidden]
  lm?: Float32Array; // [heads, vocab, hidden] (version 1)
}

export interface NativeLoraModule {
  layer: number; // -1 = lm_head
  target: number; // index in LORA_TARGETS
  rank: number;
  scale: number;
  a: Float32Array; // [rank, dIn]
  b: Float32Array; // [dOut, rank]
}

export interface NativeModel {
  step(input: NativeStepInput): Promise<NativeStepOutput>;
  info(): {
    backend: string;
    threads: number;
    weightBytes: number;
    /** The weights were read into (huge-page) memory; false: they stay in file mappings (--mmap-weights, CUDA, or too little memory free). */
    weightsInMemory: boolean;
    /** Bytes per LoRA factor element in a slot: 2 (BF16, CPU with a half-precision base model) or 4. */
    loraElementBytes: number;
    kvBytes: number;
    kvBlocks: number;
    blockSize: number;
    maxStepTokens: number;
    maxOutRows: number;
  };
  /** Copies the matrices into a slot on a worker thread; resolves to the bytes the slot holds. */
  loraLoad(slot: number, modules: NativeLoraModule[]): Promise<number>;
  loraFree(slot: number): void;
  medusaLoad(slot: number, m: NativeMedusa): void;
  close(): void;
}

export type NativeDevice = "cpu" | "cuda" | "auto";

/** What the addon knows of CUDA; reading it the first time initialises the CUDA runtime (fine without a GPU). */
export interface NativeCudaInfo {
  compiled: boolean; // the CUDA backend was built in (nvcc was present at build time)
  usable: boolean; // compiled, a GPU is present and the built kernels run on it
  devices: number;
  name: string; // GPU 0
  computeCapability: string; // "9.0"
  sms: number;
  memoryBytes: number;
  runtimeVersion: number;
  driverVersion: number;
  error: string; // why not usable
}

/** Where kernel() runs an op: true / "reference" = CPU reference, false / "cpu" = CPU fast, "cuda". */
export type KernelDevice = boolean | "reference" | "cpu" | "cpu-avx512" | "cpu-avx2" | "cuda";

export interface NativeAddon {
  loadModel(opts: NativeLoadOptions): Promise<NativeModel>;
  kernel(name: string, device: KernelDevice, args: Record<string, unknown>): any;
  readonly cuda: NativeCudaInfo;
  probe(what: "bandwidth" | "fma", threads?: number): number;
  /** A whole file, read on a worker thread into addon-owned memory (rejects with the path and the OS error). */
  readFile(path: string): Promise<ArrayBuffer>;
  fastKernels: boolean;
  /** The fast CPU backend's name here: "cpu-avx512bf16" (AVX-512VL GEMM, BF16 weights through AVX-512 BF16 dot
   * products), "cpu-avx512" (AVX-512VL GEMM), "cpu-avx2", or "cpu-reference". */
  cpuBackend: string;
}

function findAddon(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const p = path.join(dir, "build", "Release", "loraserve_native.node");
    if (fs.existsSync(p)) return p;
    dir = path.dirname(dir);
  }
  throw new Error("native addon build/Release/loraserve_native.node not found: run `npm install` (or `make build`)");
}

let addon: NativeAddon | undefined;
export function native(): NativeAddon {
  addon ??= createRequire(import.meta.url)(findAddon()) as NativeAddon;
  return addon;
}
