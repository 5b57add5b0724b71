// The in-process batching engine: accepts generation requests, runs the scheduler's steps on the backend one
// at a time, and turns sampled tokens into per-request events (text deltas, logprobs, finish reasons).
// It owns sequences, stop handling and detokenization; HTTP shapes live in server/, tensors in native/.
import { EventEmitter } from "node:events";
import crypto from "node:crypto";

import { AsyncQueue } from "./async-queue.js";
import { Backend, type BackendOptions, type RowSampling, type StepBatch } from "./backend.js";
import { CancelledError, LoraserveError, OverloadedError, ValidationError } from "./errors.js";
import type { ModelSpec } from "./model/config.js";
import { PenaltyState, usesPenalties, validateSampling, type SamplingParams } from "./sampling.js";
import { Scheduler, Sequence, type AdapterGate, type BatchEntry, type StepStats } from "./scheduler.js";
import { TreeSizer, lookupDraft, medusaDraft, medusaTreeShape, pathOf, shapeTopK, treeMasks, type Draft, type TreeShape } from "./speculation.js";
import { StopMatcher } from "./stop.js";
import { IncrementalDecoder, Tokenizer, type ChatMessage } from "./tokenizer.js";
import { compileResponseFormat, GrammarVocab, vocabInputFromTokenizerJson, type CompiledGrammar, type GrammarMatcher, type ResponseFormat } from "./structured/index.js";

/** A grammar matcher as the engine's per-sequence constraint. */
function matcherConstraint(m: GrammarMatcher): TokenConstraint {
  return {
    mask: (out) => m.fillMask(out),
    accept: (t) => void m.accept(t),
    isTerminated: () => m.isTerminated(),
    dispose: () => m.dispose(),
    maskAfter: (path, out) => {
      let n = 0;
      for (const t of path) {
        if (!m.accept(t)) break;
        n++;
      }
      const ok = n === path.length;
      if (ok) m.fillMask(out);
      if (n > 0) m.rollback(n);
      return ok;
    },
  };
}

/** No tokenizer we serve packs more characters than this into one token (a run of spaces or a long word). */
const MAX_CHARS_PER_TOKEN = 64;

export interface EngineOptions extends Omit<BackendOptions, "loraSlots" | "loraMaxRank"> {
  maxBatchPrefillTokens: number;
  maxBatchTotalTokens?: number; // default: the KV pool's capacity
  maxWaitingTokens: number;
  waitingServedRatio: number;
  maxConcurrentRequests: number;
  maxInputLength?: number; // default: maxTotalTokens - 1
  maxTotalTokens?: number; // default: min(model context, KV capacity)
  loraSlots?: number;
  loraMaxRank?: number;
  /** Prompt-lookup speculation depth when no Medusa heads apply (0 = off). */
  speculativeTokens?: number;
  /** Most nodes in a Medusa candidate tree (default 8). */
  medusaTreeSize?: number;
  /** Propose every draft token each step (whole Medusa tree, whole lookup chain), rather than as many as pay off. */
  fixedSpeculation?: boolean;
  /** Keep the KV of full blocks by prefix and start new requests past the longest one held (default on). */
  prefixCaching?: boolean;
}

export interface TopToken {
  id: number;
  logprob: number;
  text: string;
}

export interface PromptToken {
  id: number;
  text: string;
  logprob: number | null; // null for the first token
}

/** How a sequence ended; carried by its last token event. */
export interface FinishInfo {
  reason: "length" | "stop" | "eos";
  stopSequence?: string;
  /** The whole generated text (stop sequence excluded). */
  text: string;
  generatedTokens: number;
  promptTokens: number;
  /** Prompt tokens whose KV the prefix cache held (0 for the n - 1 sequences that share the first one's). */
  cachedTokens: number;
  seed: bigint;
  cumulativeLogprob: number;
  /** Milliseconds from arrival to first scheduling, and from first scheduling to the end. */
  queueMs: number;
  inferenceMs: number;
}

export type GenerationEvent =
  | { type: "prompt"; tokens: PromptToken[] }
  | {
      type: "token";
      index: number; // which of the request's n sequences
      id: number;
      /** The token's own text. */
      text: string;
      /** Text that became safe to show with this token (may be ""; stop sequences and partial characters are
       * held back; on the last token it includes whatever was held). */
      delta: string;
      logprob: number;
      special: boolean;
      top?: TopToken[];
      /** Present on the sequence's last token. */
      finish?: FinishInfo;
    };

export interface GenerateRequest {
  prompt: number[];
  params: SamplingParams;
  /** Sequences sampled from this prompt (n / best_of); they share its KV blocks. */
  n?: number;
  signal?: AbortSignal;
  /** Adapter identity for the gate (null = base model). */
  adapterKey?: string | null;
  /** The adapter's KV identity for the prefix cache (AdapterLease.kvKey; absent: adapterKey, else the base model). */
  kvKey?: string;
  /** Optional per-sequence token mask provider (structured output). */
  constraint?: () => TokenConstraint;
  /** Called once when the request's sequences all left the engine (release adapter refs etc.). */
  onSettled?: () => void;
  /** Native Medusa set to draft with (a request's own Medusa adapter); default: the server's, if any. */
  medusa?: number;
}

/** A per-sequence grammar: which tokens may come next, and what was chosen. */
export interface TokenConstraint {
  mask(out: Uint32Array): void;
  accept(token: number): void;
  /** The grammar is complete: EOS is now the only way forward. */
  isTerminated(): boolean;
  /** The sequence ended: free what the constraint holds. */
  dispose?(): void;
  /**
   * The mask after `path` would be accepted (the state is left as it was), or undefined if a token of the path is
   * not allowed: for speculative draft rows.
   */
  maskAfter?(path: readonly number[], out: Uint32Array): boolean;
}

/** What a request asks of adapters: one adapter by id, or a merge of several. */
export type AdapterRequest =
  | { id: string; source?: string; token?: string }
  | { merged: { ids: string[]; weights?: number[]; mergeStrategy?: string; density?: number; majoritySignMethod?: string }; source?: string; token?: string };

/** An adapter held for one request: its scheduler key (null: no LoRA), chat template, or the native Medusa set
 * it drafts with; released when the request ends. */
export interface AdapterLease {
  key: string | null;
  /** What a sequence's KV depends on besides its tokens: these loaded weights (absent: the base model's KV). */
  kvKey?: string;
  chatTemplate?: string;
  medusa?: number;
  release(): void;
}

/** Resolves, checks access to and fetches adapters; gates scheduling on their residency. */
export interface AdapterProvider {
  acquire(req: AdapterRequest, signal?: AbortSignal): Promise<AdapterLease>;
  readonly gate: AdapterGate;
  /** Called while sequences wait with nothing runnable (adapters loading or rotating). */
  tick?(): void;
}

/** A prompt: text, token ids, or a chat (and the tools its template is to render). */
export type PromptInput = { text: string; addSpecialTokens?: boolean } | { tokens: number[] } | { messages: ChatMessage[]; tools?: unknown[] };

export interface SubmitRequest {
  input: PromptInput;
  adapter?: AdapterRequest;
  params: SamplingParams;
  n?: number;
  /** Keep only the last `truncate` prompt tokens. */
  truncate?: number;
  /** Generate until the context is full (params.maxNewTokens is replaced by what fits after the prompt). */
  fillContext?: boolean;
  signal?: AbortSignal;
  /** Structured output: every token is masked to keep the output valid JSON (for this schema). */
  responseFormat?: { format: ResponseFormat; path: string; param: string };
}

export interface Submission {
  promptIds: number[];
  /** The rendered prompt text (chat template applied), when the input was text or messages. */
  promptText?: string;
  adapterKey: string | null;
  events: AsyncIterable<GenerationEvent>;
}

export interface StepEvent {
  stats: StepStats;
  micros: number;
  tokens: number;
}

interface SeqOut {
  request: RequestState;
  index: number;
  params: SamplingParams;
  seed: bigint;
  penalties?: PenaltyState;
  decoder: IncrementalDecoder;
  stop: StopMatcher;
  cumLogprob: number;
  constraint?: TokenConstraint;
  /** How this sequence speculates: Medusa set, prompt-lookup depth, or not at all. */
  spec?: { medusa?: number; lookup?: number };
  done: boolean;
  /** Prompt tokens with log-probabilities gathered over prefill chunks. */
  promptAcc?: PromptToken[];
}

interface RequestState {
  queue: AsyncQueue<GenerationEvent>;
  seqs: Sequence[];
  open: number;
  promptTokens: number;
  settled: boolean;
  onSettled?: () => void;
  /** Removes the request's abort listener (a caller may reuse one signal for many requests). */
  unlisten?: () => void;
}

export class Engine extends EventEmitter {
  readonly scheduler: Scheduler;
  readonly maxTotalTokens: number;
  readonly maxInputLength: number;
  private outs = new Map<Sequence, SeqOut>();
  private inflight = 0;
  private running = false;
  private stopped = false;
  private wake?: () => void;
  private readonly vocabWords: number;

  constructor(
    readonly backend: Backend,
    readonly tokenizer: Tokenizer,
    readonly opts: EngineOptions,
  ) {
    super();
    const info = backend.info();
    const capacity = info.kvBlocks * info.blockSize;
    this.maxTotalTokens = Math.min(opts.maxTotalTokens ?? Math.min(backend.spec.maxPositions, capacity), capacity);
    this.maxInputLength = Math.min(opts.maxInputLength ?? this.maxTotalTokens - 1, this.maxTotalTokens - 1);
    this.scheduler = new Scheduler({
      blockSize: info.blockSize,
      numBlocks: info.kvBlocks,
      maxBatchPrefillTokens: Math.min(opts.maxBatchPrefillTokens, info.maxStepTokens),
      maxStepTokens: info.maxStepTokens,
      maxBatchTotalTokens: opts.maxBatchTotalTokens ?? capacity,
      maxOutRows: info.maxOutRows,
      maxWaitingTokens: opts.maxWaitingTokens,
      waitingServedRatio: opts.waitingServedRatio,
      prefixCaching: opts.prefixCaching ?? true,
    });
    this.vocabWords = (backend.spec.vocabSize + 31) >>> 5;
    if (opts.speculativeTokens && !opts.fixedSpeculation) this.lookupSizer = new TreeSizer(opts.speculativeTokens);
  }

  static async create(modelDir: string, opts: EngineOptions): Promise<Engine> {
    const backend = await Backend.load(modelDir, { ...opts, loraSlots: opts.loraSlots ?? 0, loraMaxRank: opts.loraMaxRank ?? 128 });
    const tokenizer = Tokenizer.load(modelDir, backend.spec.eosTokenIds);
    return new Engine(backend, tokenizer, opts);
  }

  get spec(): ModelSpec {
    return this.backend.spec;
  }

  private adapters?: AdapterProvider;
  private grammarVocab?: Promise<GrammarVocab>;

  /** Compiles a response format against this tokenizer's vocabulary (built once, grammars cached by schema). */
  private compileGrammar(rf: NonNullable<SubmitRequest["responseFormat"]>): Promise<CompiledGrammar> {
    this.grammarVocab ??= GrammarVocab.create(vocabInputFromTokenizerJson(this.tokenizer.json, this.tokenizer.eosIds, this.spec.vocabSize));
    return this.grammarVocab.then((v) => compileResponseFormat(v, rf.format, { path: rf.path, param: rf.param }));
  }

  setAdapterProvider(p: AdapterProvider): void {
    this.adapters = p;
    this.scheduler.setGate(p.gate);
  }

  /**
   * Takes a request from the API layer: acquires its adapter (access check and fetch) while the prompt is
   * tokenized and validated, then queues it. Every failure happens here, before any event is produced.
   */
  async submit(req: SubmitRequest): Promise<Submission> {
    if (this.stopped) throw new OverloadedError("the server is shutting down");
    if (this.inflight >= this.opts.maxConcurrentRequests)
      throw new OverloadedError(`${this.inflight} requests in flight, the limit is ${this.opts.maxConcurrentRequests}: retry shortly`);
    validateSampling(req.params, this.spec.vocabSize);
    const grammarP = req.responseFormat ? this.compileGrammar(req.responseFormat) : undefined;
    grammarP?.catch(() => {});
    const leaseP = req.adapter
      ? this.adapters
        ? this.adapters.acquire(req.adapter, req.signal)
        : Promise.reject(new ValidationError("this server has no adapter support configured", "adapter_id"))
      : undefined;
    let lease: AdapterLease | undefined;
    try {
      let ids: number[], text: string | undefined;
      if ("messages" in req.input) {
        lease = await leaseP;
        ({ ids, text } = this.tokenizer.applyChatTemplate(req.input.messages, { template: lease?.chatTemplate, tools: req.input.tools }));
      } else if ("text" in req.input) {
        text = req.input.text;
        // Tokenizing runs on the event loop: refuse text that cannot fit before spending time on it.
        const maxChars = (req.truncate ? Infinity : this.maxInputLength) * MAX_CHARS_PER_TOKEN;
        if (text.length > maxChars)
          throw new ValidationError(`the prompt has ${text.length} characters, more than ${this.maxInputLength} tokens can hold: shorten it or set truncate`, "inputs");
        ids = this.tokenizer.encode(text, req.input.addSpecialTokens ?? true);
        lease = await leaseP;
      } else {
        ids = req.input.tokens;
        lease = await leaseP;
      }
      const fill = req.fillContext ? this.maxTotalTokens - Math.min(ids.length, req.truncate ?? ids.length) : 0;
      const params = req.fillContext ? { ...req.params, maxNewTokens: Math.max(1, fill) } : req.params;
      const prompt = this.validatePrompt(ids, params.maxNewTokens, req.truncate);
      const grammar = await grammarP;
      const events = this.generate({
        prompt, params, n: req.n, signal: req.signal, adapterKey: lease?.key ?? null, kvKey: lease?.kvKey, medusa: lease?.medusa,
        constraint: grammar ? () => matcherConstraint(grammar.matcher()) : undefined, onSettled: () => lease?.release(),
      });
      return { promptIds: prompt, promptText: text, adapterKey: lease?.key ?? null, events };
    } catch (e) {
      if (lease) lease.release();
      else leaseP?.then((l) => l.release(), () => {});
      throw e;
    }
  }

  get requestsInFlight(): number {
    return this.inflight;
  }

  /** Checks a prompt against the limits; returns it truncated to `truncate` tokens from the left if asked. */
  validatePrompt(prompt: number[], maxNewTokens: number, truncate?: number): number[] {
    if (truncate !== undefined && prompt.length > truncate) prompt = prompt.slice(prompt.length - truncate);
    if (prompt.length === 0) throw new ValidationError("the prompt is empty: give at least one token of input", "inputs");
    if (prompt.length > this.maxInputLength)
      throw new ValidationError(`the prompt has ${prompt.length} tokens, more than max_input_length ${this.maxInputLength}: shorten it or set truncate`, "inputs");
    if (prompt.length + maxNewTokens > this.maxTotalTokens)
      throw new ValidationError(
        `prompt (${prompt.length} tokens) + max_new_tokens (${maxNewTokens}) = ${prompt.length + maxNewTokens} exceeds max_total_tokens ${this.maxTotalTokens}: lower max_new_tokens`,
        "max_new_tokens",
      );
    const V = this.backend.spec.vocabSize;
    const bad = prompt.findIndex((t) => !Number.isInteger(t) || t < 0 || t >= V);
    if (bad >= 0) throw new ValidationError(`token id ${prompt[bad]} at position ${bad} is out of range [0, ${V})`, "inputs");
    return prompt;
  }

  /** Starts a generation; iterate the result for events. Throws Overloaded or Validation errors at once. */
  generate(req: GenerateRequest): AsyncIterable<GenerationEvent> {
    if (this.stopped) throw new OverloadedError("the server is shutting down");
    if (this.inflight >= this.opts.maxConcurrentRequests)
      throw new OverloadedError(`${this.inflight} requests in flight, the limit is ${this.opts.maxConcurrentRequests}: retry shortly`);
    validateSampling(req.params, this.spec.vocabSize);
    const prompt = this.validatePrompt(req.prompt, req.params.maxNewTokens);
    const n = req.n ?? 1;
    if (!Number.isInteger(n) || n < 1) throw new ValidationError(`n must be an integer ≥ 1, got ${n}`, "n");
    if (req.signal?.aborted) throw new CancelledError();

    const state: RequestState = { queue: undefined!, seqs: [], open: n, promptTokens: prompt.length, settled: false, onSettled: req.onSettled };
    state.queue = new AsyncQueue<GenerationEvent>(() => this.cancelRequest(state));
    // Random seeds stay below 2^53 so that clients can send them back as JSON numbers.
    const baseSeed = req.params.seed ?? crypto.randomBytes(8).readBigUInt64LE() % (1n << 53n);
    for (let i = 0; i < n; i++) {
      const seq = new Sequence(prompt, prompt.length, i === 0 && req.params.promptLogprobs, req.adapterKey ?? null, Date.now());
      seq.kvSalt = req.kvKey ?? req.adapterKey ?? "";
      state.seqs.push(seq);
      this.outs.set(seq, {
        request: state,
        index: i,
        params: req.params,
        seed: BigInt.asUintN(64, baseSeed + BigInt(i)),
        penalties: usesPenalties(req.params) ? new PenaltyState(prompt, req.params.repetitionPenalty !== 1) : undefined,
        decoder: new IncrementalDecoder(this.tokenizer, prompt),
        stop: new StopMatcher(req.params.stop),
        cumLogprob: 0,
        constraint: undefined,
        spec: undefined,
        done: false,
      });
    }
    for (const seq of state.seqs) {
      const out = this.outs.get(seq)!;
      out.constraint = req.constraint?.();
      out.spec = this.specFor(req, out.constraint);
    }
    state.seqs[0].children = state.seqs.slice(1);
    this.scheduler.add(state.seqs[0]);
    for (const c of state.seqs.slice(1)) this.scheduler.add(c, true);
    this.inflight++;
    const signal = req.signal;
    if (signal) {
      const onAbort = () => this.cancelRequest(state);
      signal.addEventListener("abort", onAbort, { once: true });
      state.unlisten = () => signal.removeEventListener("abort", onAbort);
    }
    this.kick();
    return state.queue;
  }

  // ---- speculative decoding ----

  private defaultMedusa?: { set: number; heads: number };
  private medusaShape?: TreeShape;
  private medusaK = 1;
  /** How many nodes of medusaShape the next step proposes, and whether it runs the heads. */
  private treeSizer?: TreeSizer;
  private medusaHeadsOn = true;
  /** How many tokens of a prompt-lookup chain the next step proposes (a chain is a tree of one path per depth). */
  private lookupSizer?: TreeSizer;
  /** Draft tokens proposed and accepted, and verification steps, since start (for /metrics). */
  specProposed = 0;
  specAccepted = 0;
  specSteps = 0;

  /** Makes a native Medusa set the default drafter of every request. */
  setDefaultMedusa(set: number, heads: number): void {
    this.defaultMedusa = { set, heads };
    this.medusaShape = medusaTreeShape(heads, this.opts.medusaTreeSize ?? 8);
    this.medusaK = shapeTopK(this.medusaShape);
    this.treeSizer = this.opts.fixedSpeculation ? undefined : new TreeSizer(this.medusaShape.length);
  }

  get medusaHeads(): number | undefined {
    return this.defaultMedusa?.heads;
  }

  /** Speculation is off for penalised requests (their penalties would change along a draft). */
  private specFor(req: GenerateRequest, constraint?: TokenConstraint): SeqOut["spec"] {
    if (usesPenalties(req.params) || (constraint && !constraint.maskAfter)) return undefined;
    const medusa = req.medusa ?? this.defaultMedusa?.set;
    if (medusa !== undefined) {
      if (!this.medusaShape) throw new ValidationError("a Medusa adapter was given, but speculation is not set up on this server", "adapter_id");
      return { medusa };
    }
    return this.opts.speculativeTokens ? { lookup: this.opts.speculativeTokens } : undefined;
  }

  private cancelRequest(state: RequestState): void {
    if (state.settled) return;
    for (const s of state.seqs) this.scheduler.cancel(s);
    state.queue.fail(new CancelledError());
    this.settle(state);
    this.kick();
  }

  private settle(state: RequestState): void {
    if (state.settled) return;
    state.settled = true;
    state.unlisten?.();
    this.inflight--;
    for (const s of state.seqs) {
      this.outs.get(s)?.constraint?.dispose?.();
      this.outs.delete(s);
    }
    state.onSettled?.();
  }

  /** Wakes the loop (an adapter became active, a request arrived). */
  kick(): void {
    if (this.wake) {
      const w = this.wake;
      this.wake = undefined;
      w();
    }
    if (!this.running) {
      this.running = true;
      void this.loop();
    }
  }

  /** Stops accepting requests; resolves when in-flight ones are done. */
  async drain(): Promise<void> {
    this.stopped = true;
    while (this.inflight > 0) await new Promise((r) => setTimeout(r, 20));
  }

  private async loop(): Promise<void> {
    try {
      for (;;) {
        const plan = this.scheduler.schedule();
        if (!plan) {
          if (!this.scheduler.hasWork()) break;
          // Work exists but nothing fits now (adapters loading or rotating): wait for a kick or the next tick.
          await new Promise<void>((r) => {
            this.wake = r;
            setTimeout(r, 20);
          });
          this.wake = undefined;
          this.adapters?.tick?.();
          continue;
        }
        await this.runStep(plan.entries, plan.stats, plan.blockCopies);
      }
    } finally {
      this.running = false;
      if (this.scheduler.hasWork()) this.kick();
    }
  }

  /** Medusa tree sizes chosen, by size, since start (for the bench). */
  readonly treeSizes = new Map<number, number>();
  /** The draft size the last step chose per sequence (Medusa tree nodes or lookup length), for /metrics. */
  draftSize?: number;

  private async runStep(entries: BatchEntry[], stats: StepStats, blockCopies: [number, number][]): Promise<void> {
    const started = performance.now();
    const batch: StepBatch = { tokens: [], sequences: [], outRows: [], rows: [], groups: [], blockCopies, kvMoves: [], medusaK: this.medusaK };
    const groupOf = new Map<Sequence, number>(); // group index of a sequence's sampled rows
    const promptRowsOf = new Map<Sequence, number>(); // first out-row index of a sequence's prompt rows
    entries.forEach((e, si) => {
      const seq = e.seq, out = this.outs.get(seq)!;
      batch.sequences.push({ blockTable: seq.blocks });
      for (const [from, to] of seq.kvMoves) batch.kvMoves!.push([si, from, to]);
      seq.kvMoves = [];
      const base = batch.tokens.length;
      const draft = e.start >= seq.promptLen && e.count > 1 ? seq.draft : undefined;
      const plain = draft ? 1 : e.count;
      for (let i = 0; i < plain; i++)
        batch.tokens.push({ token: seq.tokens[e.start + i], position: e.start + i, seq: si, adapterSlot: seq.adapterSlot });
      if (e.promptRows > 0) {
        promptRowsOf.set(seq, batch.outRows.length);
        for (let i = 0; i < e.promptRows; i++) {
          batch.outRows.push(base + i);
          batch.rows.push(this.rowSampling(out, seq, false, seq.tokens[e.start + i + 1]));
        }
      }
      if (!e.sample) return;
      // The sampled rows: the last token, then (speculating) one row per draft node at KV index root+node.
      const first = batch.outRows.length;
      const root = e.start + plain - 1;
      batch.outRows.push(base + plain - 1);
      batch.rows.push(this.rowSampling(out, seq, true, -1));
      const parents = [-1];
      if (draft) {
        const masks = treeMasks(draft);
        draft.tokens.forEach((t, i) => {
          batch.outRows.push(batch.tokens.length);
          batch.tokens.push({ token: t, position: root + draft.depths[i], kvIndex: root + 1 + i, seq: si, adapterSlot: seq.adapterSlot, tree: { base: root + 1, mask: masks[i] } });
          const row = this.rowSampling(out, seq, true, -1);
          // A constrained sequence's draft row samples under the grammar state after its path.
          if (out.constraint && row.mask) out.constraint.maskAfter!(pathOf(draft, i + 1), row.mask);
          batch.rows.push(row);
          parents.push(draft.parents[i]);
        });
        this.specProposed += draft.tokens.length;
      }
      groupOf.set(seq, batch.groups!.length);
      batch.groups!.push({ first, n: parents.length, parents, medusa: this.medusaHeadsOn ? (out.spec?.medusa ?? -1) : -1 });
    });
    let result;
    try {
      result = await this.backend.step(batch);
    } catch (e) {
      // A failed step fails the requests in it (a server-side fault: the engine built the step), not the server.
      const err = new LoraserveError("internal", `step failed: ${(e as Error).message}`);
      for (const en of entries) {
        const out = this.outs.get(en.seq);
        this.scheduler.finish(en.seq);
        if (out) {
          out.request.queue.fail(err);
          this.settle(out.request);
        }
      }
      return;
    }
    this.emit("step", { stats, micros: result.micros, tokens: batch.tokens.length } satisfies StepEvent);

    // What each sequence gains: accepted draft tokens then the bonus token; KV then reaches root + accepted + 1.
    const gained = new Map<Sequence, { tokens: number[]; computed?: number; logprobs: number[]; rows: number[] }>();
    const medusaNext: [Sequence, number][] = []; // sequences that draft with Medusa next step, and their group
    const nTop = result.topIds.length / Math.max(1, batch.outRows.length);
    for (const [seq, g] of groupOf) {
      if (!this.outs.has(seq) || seq.cancelled) continue;
      const grp = batch.groups![g];
      const draft = grp.n > 1 ? seq.draft : undefined;
      const a = result.accepted[g];
      const tokens: number[] = [], logprobs: number[] = [], rows: number[] = [];
      let parentRow = grp.first;
      for (let j = 0; j < a; j++) {
        const node = result.path[g * result.maxNodes + j];
        tokens.push(draft!.tokens[node - 1]);
        logprobs.push(result.pathLogprobs[g * result.maxNodes + j]);
        rows.push(parentRow);
        parentRow = grp.first + node;
      }
      tokens.push(result.bonus[g]);
      logprobs.push(result.bonusLogprobs[g]);
      rows.push(result.lastRow[g]);
      const entry = entries.find((x) => x.seq === seq)!;
      const root = entry.start + (draft ? 0 : entry.count - 1);
      if (draft) {
        this.specAccepted += a;
        this.specSteps++;
        const accepted: number[] = [];
        for (let j = 0; j < a; j++) {
          const node = result.path[g * result.maxNodes + j];
          accepted.push(node);
          if (node !== j + 1) seq.kvMoves.push([root + node, root + j + 1]);
        }
        if (draft.shapeIndex) this.treeSizer?.observeDraft(draft.shapeIndex, accepted);
        else this.lookupSizer?.observeDraft(draft.depths.map((d) => d - 1), accepted);
      }
      gained.set(seq, { tokens, computed: root + 1 + a, logprobs, rows });
      seq.draft = undefined;
      const out = this.outs.get(seq)!;
      if (out.spec?.medusa !== undefined) medusaNext.push([seq, g]);
    }
    // The next step's Medusa drafts: as many nodes of the tree as pay for themselves now (maybe none).
    if (medusaNext.length > 0) {
      const plan = this.treeSizer?.plan(medusaNext.length, entries.length - medusaNext.length, result.medusaHeads > 0) ?? { size: result.medusaHeads > 0 ? this.medusaShape!.length : 0, heads: true };
      this.medusaHeadsOn = plan.heads;
      this.treeSizes.set(plan.size, (this.treeSizes.get(plan.size) ?? 0) + 1);
      this.draftSize = plan.size;
      const k = this.medusaK, shape = this.medusaShape!.slice(0, plan.size);
      if (plan.size > 0)
        for (const [seq, g] of medusaNext)
          seq.draft = medusaDraft(shape, result.medusaIds.subarray(g * result.medusaHeads * k, (g + 1) * result.medusaHeads * k), result.medusaHeads, k);
    }
    this.scheduler.commit(entries, gained);
    // Prompt-lookup chains for the next step: as long as pays off now (0: none).
    let lookupLen: number | undefined;
    if (this.lookupSizer) {
      const lookups = entries.filter((e) => this.outs.get(e.seq)?.spec?.lookup !== undefined).length;
      if (lookups > 0) this.draftSize = lookupLen = this.lookupSizer.plan(lookups, entries.length - lookups, true).size;
    }

    for (const e of entries) {
      const seq = e.seq, out = this.outs.get(seq);
      if (!out || seq.cancelled) continue;
      const pr = promptRowsOf.get(seq);
      if (pr !== undefined) this.emitPromptRows(out, seq, e, pr, result.targetLogprobs);
      const got = gained.get(seq);
      if (!got) continue;
      seq.promptLogprobs = false;
      const before = seq.tokens.length - got.tokens.length;
      for (let j = 0; j < got.tokens.length && !out.done; j++) {
        const r = got.rows[j];
        this.onToken(out, seq, got.tokens[j], got.logprobs[j], out.params.topLogprobs, result.topIds.subarray(r * nTop, r * nTop + nTop), result.topLogprobs.subarray(r * nTop, r * nTop + nTop), before + j + 1 - seq.promptLen);
      }
      if (!out.done && out.spec?.lookup && lookupLen !== 0) seq.draft = lookupDraft(seq.tokens, lookupLen ?? out.spec.lookup);
      if (!out.done && seq.draft && out.constraint) seq.draft = this.grammarDraft(out.constraint, seq.draft);
    }
    // The cost side of the tree size: wall time of pure decode steps (engine work included) by token count.
    if (stats.prefillTokens === 0) {
      const wall = performance.now() - started;
      this.treeSizer?.observeStep(batch.tokens.length, result.micros / 1e3, result.medusaHeads > 0 ? result.medusaMicros / 1e3 : 0, wall);
      this.lookupSizer?.observeStep(batch.tokens.length, result.micros / 1e3, 0, wall);
    }
  }

  /** The draft without the nodes the grammar would refuse (and their subtrees), renumbered. */
  private grammarDraft(c: TokenConstraint, d: Draft): Draft | undefined {
    const keep: Draft = { tokens: [], parents: [], depths: [], shapeIndex: d.shapeIndex ? [] : undefined };
    const newIndex = new Map<number, number>([[0, 0]]);
    const mask = new Uint32Array(this.vocabWords);
    for (let i = 0; i < d.tokens.length; i++) {
      const parent = newIndex.get(d.parents[i]);
      if (parent === undefined) continue;
      const path = pathOf(keep, parent);
      if (!c.maskAfter!(path, mask) || !((mask[d.tokens[i] >>> 5] >>> (d.tokens[i] & 31)) & 1)) continue;
      keep.tokens.push(d.tokens[i]);
      keep.parents.push(parent);
      keep.depths.push(d.depths[i]);
      keep.shapeIndex?.push(d.shapeIndex![i]);
      newIndex.set(i + 1, keep.tokens.length);
    }
    return keep.tokens.length ? keep : undefined;
  }

  private rowSampling(out: SeqOut, seq: Sequence, sample: boolean, target: number): RowSampling {
    const p = out.params;
    let mask: Uint32Array | undefined;
    if (sample && out.constraint) {
      mask = new Uint32Array(this.vocabWords);
      if (out.constraint.isTerminated()) for (const id of this.tokenizer.eosIds) mask[id >>> 5] |= 1 << (id & 31);
      else out.constraint.mask(mask);
    }
    return {
      sample,
      doSample: p.doSample,
      temperature: p.temperature,
      topK: p.topK,
      topP: p.topP,
      typicalP: p.typicalP,
      minP: p.minP,
      repetitionPenalty: p.repetitionPenalty,
      presencePenalty: p.presencePenalty,
      frequencyPenalty: p.frequencyPenalty,
      seed: out.seed,
      step: seq.generated,
      nTop: sample ? p.topLogprobs : 0,
      target,
      penalties: sample ? out.penalties?.arrays() : undefined,
      logitBias: sample ? p.logitBias : undefined,
      mask,
    };
  }

  /** Prompt log-probabilities: rows [start, start+n) give the logprob of the token after each. */
  private emitPromptRows(out: SeqOut, seq: Sequence, e: BatchEntry, firstRow: number, lps: Float32Array): void {
    if (e.start === 0) out.promptAcc = [{ id: seq.tokens[0], text: this.tokenizer.decode([seq.tokens[0]], false), logprob: null }];
    const acc = (out.promptAcc ??= []);
    for (let i = 0; i < e.promptRows; i++) {
      const id = seq.tokens[e.start + i + 1];
      acc.push({ id, text: this.tokenizer.decode([id], false), logprob: lps[firstRow + i] });
    }
    if (e.start + e.promptRows >= seq.promptLen - 1) {
      out.request.queue.push({ type: "prompt", tokens: acc });
      out.promptAcc = undefined;
    }
  }

  private onToken(out: SeqOut, seq: Sequence, id: number, logprob: number, nTop: number, topIds: Int32Array, topLps: Float32Array, generated: number): void {
    const p = out.params;
    out.cumLogprob += logprob;
    out.penalties?.add(id);
    out.constraint?.accept(id);
    const isEos = !p.ignoreEos && this.tokenizer.eosIds.includes(id);
    const piece = isEos ? { text: "" as string, stop: undefined as string | undefined } : out.stop.push(out.decoder.push(id));
    let reason: FinishInfo["reason"] | undefined;
    if (isEos) reason = "eos";
    else if (piece.stop !== undefined) reason = "stop";
    else if (generated >= p.maxNewTokens) reason = "length";
    let delta = piece.text;
    let finish: FinishInfo | undefined;
    if (reason) {
      if (reason !== "stop") delta += out.stop.push(out.decoder.flush()).text + out.stop.flush();
      this.scheduler.finish(seq);
      out.done = true;
      const now = Date.now();
      const started = seq.firstScheduledAt ?? now;
      finish = {
        reason,
        stopSequence: piece.stop,
        text: out.stop.fullText,
        generatedTokens: generated,
        promptTokens: out.request.promptTokens,
        cachedTokens: seq.cachedTokens,
        seed: out.seed,
        cumulativeLogprob: out.cumLogprob,
        queueMs: started - seq.arrival,
        inferenceMs: now - started,
      };
    }
    out.request.queue.push({
      type: "token",
      index: out.index,
      id,
      text: this.tokenizer.decode([id], false),
      delta,
      logprob,
      special: this.tokenizer.isSpecial(id),
      top: nTop > 0 ? Array.from(topIds.subarray(0, nTop), (tid, i) => ({ id: tid, logprob: topLps[i], text: this.tokenizer.decode([tid], false) })) : undefined,
      finish,
    });
    if (finish && --out.request.open === 0) {
      out.request.queue.end();
      this.settle(out.request);
    }
  }
}
