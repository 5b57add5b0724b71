// The engine's only door to native code: loads a model directory into the addon, builds each step's typed
// arrays from the scheduler's batch, and returns sampled tokens. Also loads and frees LoRA slots.
import { LORA_TARGETS, type LoraWeights } from "./adapters/types.js";
import { NativeError } from "./errors.js";
import { readModelSpec, type ModelSpec } from "./model/config.js";
import { DTYPE_CODE, type DType } from "./model/safetensors.js";
import { listWeights } from "./model/weights.js";
import { native, type NativeDevice, type NativeMedusa, type NativeModel, type NativeStepInput, type NativeStepOutput } from "./native.js";
import type { LogitBias } from "./sampling.js";

export interface BackendOptions {
  /** KV memory budget in bytes (whole pool, all layers). */
  kvBytes: number;
  blockSize: number;
  maxStepTokens: number;
  maxOutRows: number;
  threads?: number;
  /** Plain reference kernels, single-threaded (tests); always on the CPU. */
  reference?: boolean;
  /**
   * Where the model runs: "cuda", "cpu", or "auto" (the default: cuda when the addon was built with CUDA and a
   * GPU is usable, else cpu). An explicit "cuda" without a usable GPU fails to load with the reason (code EINVAL);
   * it never falls back silently.
   */
  device?: NativeDevice;
  /** Convert weight matrices to this dtype at load; default: as stored. */
  dtype?: DType;
  /**
   * Leave the weights in read-only mappings of their files (the page cache, shared with other processes; a
   * faster start) instead of reading them into huge-page memory, which the CPU backend does by default (decode
   * streams every weight each step, ~10% faster than through 4 KiB pages). CUDA uploads from a mapping anyway.
   */
  mapWeights?: boolean;
  loraSlots: number;
  loraMaxRank: number;
}

/** Sampling settings of one output row, in the engine's terms. */
export interface RowSampling {
  sample: boolean;
  doSample: boolean;
  temperature: number;
  topK: number;
  topP: number;
  typicalP: number;
  minP: number;
  repetitionPenalty: number;
  presencePenalty: number;
  frequencyPenalty: number;
  seed: bigint;
  step: number;
  nTop: number;
  target: number; // -1 = none
  penalties?: { ids: Int32Array; counts: Int32Array };
  logitBias?: LogitBias;
  mask?: Uint32Array; // [ceil(vocab/32)]
}

export interface StepSequence {
  blockTable: ArrayLike<number>;
}

export interface StepToken {
  token: number;
  position: number;
  seq: number; // index into sequences
  adapterSlot: number; // -1 = base
  kvIndex?: number;
  /** Speculative rows: KV indexes from `base` on are visible only where `mask` has their bit (i = index - base). */
  tree?: { base: number; mask: bigint };
}

/** Sampled rows verified together: out rows [first, first+n), node 0 the root, parents[i] < i. */
export interface SampleGroup {
  first: number;
  n: number;
  parents: number[];
  medusa: number; // Medusa set drafting the next tree, -1 = none
}

export interface StepBatch {
  tokens: StepToken[];
  sequences: StepSequence[];
  outRows: number[];
  rows: RowSampling[];
  wantLogits?: boolean;
  wantHidden?: boolean;
  /** Every sampled row belongs to one group; default: a group of one per sampled row, no Medusa. */
  groups?: SampleGroup[];
  /** Whole KV blocks to copy before the step (copy-on-write of shared blocks). */
  blockCopies?: [from: number, to: number][];
  kvMoves?: [seq: number, from: number, to: number][];
  medusaK?: number;
}

export function wrapNative(e: unknown): Error {
  const err = e as Error & { code?: string };
  return typeof err?.code === "string" ? new NativeError(err.message, err.code) : (err as Error);
}

export class Backend {
  /** Bytes per LoRA factor element in a slot (fixed for the model's life; read once). */
  private readonly loraElementBytes: number;

  private constructor(
    readonly spec: ModelSpec,
    private readonly model: NativeModel,
    readonly weightBytesOnDisk: number,
  ) {
    this.loraElementBytes = model.info().loraElementBytes;
  }

  static async load(dir: string, opts: BackendOptions): Promise<Backend> {
    const spec = readModelSpec(dir);
    const w = listWeights(dir);
    const blockBytes = 2 * spec.numLayers * spec.numKvHeads * opts.blockSize * spec.headDim * 4;
    const kvBlocks = Math.max(1, Math.floor(opts.kvBytes / blockBytes));
    try {
      const model = await native().loadModel({
        config: {
          vocab: spec.vocabSize,
          hidden: spec.hiddenSize,
          intermediate: spec.intermediateSize,
          layers: spec.numLayers,
          heads: spec.numHeads,
          kvHeads: spec.numKvHeads,
          headDim: spec.headDim,
          rmsEps: spec.rmsEps,
          tied: spec.tied,
          qkvBias: spec.qkvBias,
          invFreq: spec.invFreq,
          window: spec.window,
        },
        files: w.files,
        tensors: w.tensors.map((t) => ({ name: t.name, file: t.file, dtype: DTYPE_CODE[t.dtype], shape: t.shape, offset: t.offset, nbytes: t.nbytes })),
        kvBlocks,
        blockSize: opts.blockSize,
        maxStepTokens: opts.maxStepTokens,
        maxOutRows: opts.maxOutRows,
        threads: opts.threads ?? 0,
        reference: opts.reference ?? false,
        device: opts.device ?? "auto",
        weightDtype: opts.dtype ? DTYPE_CODE[opts.dtype] : -1,
        mapWeights: opts.mapWeights ?? false,
        loraSlots: opts.loraSlots,
        loraMaxRank: opts.loraMaxRank,
      });
      return new Backend(spec, model, w.bytes);
    } catch (e) {
      throw wrapNative(e);
    }
  }

  info() {
    return this.model.info();
  }

  async step(b: StepBatch): Promise<NativeStepOutput> {
    const T = b.tokens.length, R = b.outRows.length, S = b.sequences.length;
    const tokens = new Int32Array(T), positions = new Int32Array(T), seq = new Int32Array(T), adapter = new Int32Array(T);
    b.tokens.forEach((t, i) => {
      tokens[i] = t.token;
      positions[i] = t.position;
      seq[i] = t.seq;
      adapter[i] = t.adapterSlot;
    });
    const kvIndex = b.tokens.some((t) => t.kvIndex !== undefined) ? Int32Array.from(b.tokens, (t) => t.kvIndex ?? t.position) : undefined;
    const hasTree = b.tokens.some((t) => t.tree);
    const treeBase = hasTree ? Int32Array.from(b.tokens, (t) => t.tree?.base ?? (t.kvIndex ?? t.position) + 1) : undefined;
    const treeMask = hasTree ? BigUint64Array.from(b.tokens, (t) => t.tree?.mask ?? 0n) : undefined;
    const groups = b.groups ?? b.rows.flatMap((r, i) => (r.sample ? [{ first: i, n: 1, parents: [-1], medusa: -1 }] : []));
    const btOffsets = new Int32Array(S + 1);
    let nb = 0;
    b.sequences.forEach((s, i) => {
      btOffsets[i] = nb;
      nb += s.blockTable.length;
    });
    btOffsets[S] = nb;
    const bt = new Int32Array(nb);
    b.sequences.forEach((s, i) => bt.set(s.blockTable, btOffsets[i]));
    const rowI = new Int32Array(R * 10), rowF = new Float32Array(R * 8), rowSeed = new BigUint64Array(R);
    let nPen = 0, nBias = 0, nMask = 0, nTop = 0;
    for (const r of b.rows) {
      nPen += r.penalties?.ids.length ?? 0;
      nBias += r.logitBias?.ids.length ?? 0;
      if (r.mask) nMask++;
      nTop = Math.max(nTop, r.nTop);
    }
    const penIds = new Int32Array(nPen), penCounts = new Int32Array(nPen);
    const biasIds = nBias ? new Int32Array(nBias) : undefined, bias = nBias ? new Float32Array(nBias) : undefined;
    const words = (this.spec.vocabSize + 31) >>> 5;
    const masks = nMask ? new Uint32Array(nMask * words) : undefined;
    let po = 0, bo = 0, mi = 0;
    b.rows.forEach((r, i) => {
      const nb = r.logitBias?.ids.length ?? 0;
      if (nb) {
        biasIds!.set(r.logitBias!.ids, bo);
        bias!.set(r.logitBias!.values, bo);
      }
      const np = r.penalties?.ids.length ?? 0;
      if (np) {
        penIds.set(r.penalties!.ids, po);
        penCounts.set(r.penalties!.counts, po);
      }
      let maskIndex = -1;
      if (r.mask) {
        masks!.set(r.mask, mi * words);
        maskIndex = mi++;
      }
      rowI.set([r.topK, r.nTop, r.target, (r.sample ? 1 : 0) | (r.doSample ? 2 : 0), po, np, maskIndex, r.step, bo, nb], i * 10);
      rowF.set([r.temperature, r.topP, r.typicalP, r.minP, r.repetitionPenalty, r.presencePenalty, r.frequencyPenalty, 0], i * 8);
      rowSeed[i] = r.seed;
      po += np;
      bo += nb;
    });
    const input: NativeStepInput = {
      tokens, positions, kvIndex, seq, adapter, treeBase, treeMask, btOffsets, bt,
      outRows: Int32Array.from(b.outRows), rowI, rowF, rowSeed, penIds, penCounts, biasIds, bias, masks,
      nTop, wantLogits: b.wantLogits, wantHidden: b.wantHidden,
      blockCopies: b.blockCopies?.length ? Int32Array.from(b.blockCopies.flat()) : undefined,
      kvMoves: b.kvMoves?.length ? Int32Array.from(b.kvMoves.flat()) : undefined,
      groups: Int32Array.from(groups.flatMap((g) => [g.first, g.n, g.medusa])),
      groupParents: Int32Array.from(groups.flatMap((g) => g.parents)),
      medusaK: b.medusaK,
    };
    try {
      return await this.model.step(input);
    } catch (e) {
      throw wrapNative(e);
    }
  }

  /** Bytes an adapter occupies in a LoRA slot (its factors as stored there, BF16 or F32). */
  loraSlotBytes(w: LoraWeights): number {
    return (w.sizeBytes / 4) * this.loraElementBytes;
  }

  /** Copies an adapter's A/B matrices into a LoRA slot (off the event loop); resolves to the bytes it occupies. */
  async loraLoad(slot: number, w: LoraWeights): Promise<number> {
    try {
      return await this.model.loraLoad(
        slot,
        w.modules.map((m) => ({ layer: m.layer, target: LORA_TARGETS.indexOf(m.target), rank: m.rank, scale: m.scale, a: m.a, b: m.b })),
      );
    } catch (e) {
      throw wrapNative(e);
    }
  }

  loraFree(slot: number): void {
    this.model.loraFree(slot);
  }

  /** Loads a Medusa head set into a slot (copied). */
  medusaLoad(slot: number, m: NativeMedusa): void {
    try {
      this.model.medusaLoad(slot, m);
    } catch (e) {
      throw wrapNative(e);
    }
  }

  close(): void {
    this.model.close();
  }
}
