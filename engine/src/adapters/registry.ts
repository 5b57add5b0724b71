// The adapter registry: every adapter the server knows, keyed by source and id, through the states
// downloading → on_disk → host (parsed weights in memory) → active (in a native LoRA slot) and back; the
// active pool's count cap and byte budget with LRU eviction of idle adapters; pins; rotation of the active set
// when more adapters are wanted than fit; names registered through the admin routes; merged adapters.
// It is the engine's AdapterProvider and the scheduler's AdapterGate. Fetching is sources/, parsing formats/.
import fs from "node:fs";
import path from "node:path";

import type { Backend } from "../backend.js";
import type { AdapterLease, AdapterProvider, AdapterRequest } from "../engine.js";
import { AdapterIncompatibleError, NotFoundError, ValidationError } from "../errors.js";
import type { AdapterGate, Sequence } from "../scheduler.js";
import { isMedusaDir, readMedusa } from "./formats/medusa.js";
import { readPeftAdapter } from "./formats/peft.js";
import { mergeAdapters, mergeCacheKey, validateMergeParams, type MergeParams } from "./merge.js";
import { SOURCE_NAMES, type AdapterSources, type SourceName } from "./sources/index.js";
import type { BaseModelShape, LoraWeights } from "./types.js";

export type AdapterState = "downloading" | "on_disk" | "in_memory" | "active" | "errored";

export interface RegistryLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface RegistryOptions {
  backend: Backend;
  sources: AdapterSources;
  /** Native LoRA slots (the count cap). */
  maxActive: number;
  /** Bytes the active pool may hold. */
  activeBudgetBytes: number;
  /** Bytes of parsed adapters kept in host memory beyond the active ones. */
  hostBudgetBytes: number;
  /** The active set rotates at least this often when adapters wait for a slot. */
  cycleTimeMs: number;
  maxMergeIds: number;
  logger: RegistryLogger;
  /** Wakes the engine loop when an adapter became active. */
  wake: () => void;
  /** Every state change (for metrics). */
  onTransition?: (name: string, from: AdapterState | "new", to: AdapterState | "removed") => void;
  /** Head count of the server's default Medusa adapter, if any: request Medusa adapters must match it. */
  medusaHeads?: () => number | undefined;
}

interface Entry {
  key: string;
  /** This load of the adapter (a new entry for the same key may hold other weights): names its KV in the prefix cache. */
  load: number;
  /** What users call it (the id as requested, or a registered name). */
  name: string;
  source: SourceName | "merge";
  id: string;
  state: AdapterState;
  weights?: LoraWeights;
  chatTemplate?: string;
  error?: string;
  slot: number;
  /** Running sequences using the slot. */
  inUse: number;
  /** Requests holding a lease (queued or running). */
  leases: number;
  pinned: boolean;
  lastUsed: number;
  activatedAt: number;
  /** Refuses new sequences so its slot frees for adapters that wait (rotation). */
  draining: boolean;
  /** Since when sequences wait for this adapter to become active (0 = nobody waits). */
  wantedSince: number;
  /** A sequence was admitted since the last activation: until then the slot is not taken away (no thrash). */
  served: boolean;
  loading?: Promise<void>;
  activating?: Promise<void>;
  /** A Medusa head set instead of a LoRA: its native slot. */
  medusa?: { slot: number; heads: number };
  /** Milliseconds of the last cold load: fetching the files, parsing them, copying them into a slot. */
  timings: { fetchMs: number; parseMs: number; activateMs: number };
}

export interface AdapterInfo {
  timings: Entry["timings"];
  name: string;
  key: string;
  source: string;
  id: string;
  state: AdapterState;
  pinned: boolean;
  bytes: number;
  error?: string;
}

export class AdapterRegistry implements AdapterProvider {
  private entries = new Map<string, Entry>();
  private named = new Map<string, { id: string; source: SourceName }>();
  private slots: (Entry | null)[];
  readonly shape: BaseModelShape;
  evictions = 0;
  activations = 0;
  private nextMedusaSlot = 1; // slot 0 is the server's default set

  constructor(private readonly o: RegistryOptions) {
    this.slots = new Array(o.maxActive).fill(null);
    const s = o.backend.spec;
    this.shape = {
      numLayers: s.numLayers, hiddenSize: s.hiddenSize, intermediateSize: s.intermediateSize, numHeads: s.numHeads,
      numKvHeads: s.numKvHeads, headDim: s.headDim, vocabSize: s.vocabSize,
    };
  }

  // ---- names (vLLM admin routes) ----

  /** A registered name's target, if `name` is one. */
  resolveName(name: string): { id: string; source: SourceName } | undefined {
    return this.named.get(name);
  }

  /** Registers `name` for an adapter, loads it to host memory now (so errors surface), and pins it if asked. */
  async register(name: string, id: string, source: SourceName, token: string | undefined, pinned: boolean): Promise<AdapterInfo> {
    const lease = await this.acquire({ id, source, token });
    try {
      this.named.set(name, { id, source });
      const e = this.entries.get(keyOf(source, id))!;
      if (pinned && !e.medusa) {
        e.pinned = true;
        await this.activate(e);
        if (e.state !== "active") throw new ValidationError(`adapter "${name}" cannot be pinned: every LoRA slot is pinned or busy (--max-active-adapters ${this.o.maxActive})`, "pinned");
      }
      return this.info(e, name);
    } finally {
      lease.release();
    }
  }

  /** Forgets a name; its adapter leaves memory once no request uses it. */
  unregister(name: string): AdapterInfo {
    const t = this.named.get(name);
    if (!t) throw new NotFoundError(`no adapter is registered as "${name}"`, "lora_name");
    this.named.delete(name);
    const e = this.entries.get(keyOf(t.source, t.id));
    if (!e) return { name, key: "", source: t.source, id: t.id, state: "errored", pinned: false, bytes: 0, timings: { fetchMs: 0, parseMs: 0, activateMs: 0 } };
    e.pinned = false;
    this.dropIfIdle(e);
    return this.info(e, name);
  }

  // ---- requests ----

  async acquire(req: AdapterRequest, signal?: AbortSignal): Promise<AdapterLease> {
    if ("merged" in req) return this.acquireMerged(req, signal);
    const named = this.named.get(req.id);
    const source = (named?.source ?? req.source ?? "hub") as SourceName;
    const id = named?.id ?? req.id;
    if (!(SOURCE_NAMES as readonly string[]).includes(source))
      throw new ValidationError(`adapter_source "${source}" is not one of ${SOURCE_NAMES.join(", ")}`, "adapter_source");
    // SPEC §3: access is checked for every request, cached adapter or not.
    await this.o.sources.checkAccess(source, id, req.token, signal);
    const key = keyOf(source, id);
    let e = this.entries.get(key);
    if (!e || e.state === "errored") {
      e = this.newEntry(key, req.id, source, id);
      e.loading = this.loadToHost(e, req.token, signal);
    }
    if (e.loading) await e.loading;
    if (e.state === "errored") throw new AdapterIncompatibleError(e.error ?? `adapter "${e.name}" failed to load`);
    return this.lease(e);
  }

  private newEntry(key: string, name: string, source: Entry["source"], id: string): Entry {
    const e: Entry = {
      key, load: ++loads, name, source, id, state: "downloading", slot: -1, inUse: 0, leases: 0, pinned: false,
      lastUsed: Date.now(), activatedAt: 0, draining: false, wantedSince: 0, served: false,
      timings: { fetchMs: 0, parseMs: 0, activateMs: 0 },
    };
    this.entries.set(key, e);
    this.o.onTransition?.(name, "new", "downloading");
    return e;
  }

  private lease(e: Entry): AdapterLease & { key: string | null } {
    e.leases++;
    e.lastUsed = Date.now();
    let released = false;
    return {
      key: e.medusa ? null : e.key,
      kvKey: e.medusa ? undefined : `${e.key}#${e.load}`,
      medusa: e.medusa?.slot,
      chatTemplate: e.chatTemplate,
      release: () => {
        if (released) return;
        released = true;
        e.leases--;
        this.dropIfIdle(e);
      },
    };
  }

  private async loadToHost(e: Entry, token: string | undefined, signal?: AbortSignal): Promise<void> {
    try {
      const t0 = performance.now();
      const fetched = await this.o.sources.fetch(e.source as SourceName, e.id, token, signal);
      const t1 = performance.now();
      e.timings.fetchMs = t1 - t0;
      try {
        this.setState(e, "on_disk");
        if (await isMedusaDir(fetched.dir)) {
          const m = await readMedusa(fetched.dir, this.shape, e.name);
          const want = this.o.medusaHeads?.();
          if (m.version !== 2) throw new ValidationError(`Medusa adapter "${e.name}" is version 1 (own output projections): only version 2 heads can be chosen per request`, "adapter_id");
          if (want !== undefined && m.heads !== want)
            throw new ValidationError(`Medusa adapter "${e.name}" has ${m.heads} heads; this server speculates with ${want} (--adapter-id): use heads of the same count`, "adapter_id");
          const slot = this.nextMedusaSlot++;
          this.o.backend.medusaLoad(slot, { heads: m.heads, ownLmHead: false, w: m.w, b: m.b });
          e.medusa = { slot, heads: m.heads };
          this.setState(e, "active");
          return;
        }
        const w = await readPeftAdapter(fetched.dir, this.shape, { name: e.name });
        for (const warning of w.warnings) this.o.logger.warn({ adapter: e.name }, warning);
        e.weights = w;
        e.timings.parseMs = performance.now() - t1;
        e.chatTemplate = readChatTemplate(fetched.dir);
        this.setState(e, "in_memory");
      } finally {
        fetched.release();
      }
      this.trimHost();
    } catch (err) {
      // A failed load is not cached: the next request tries again.
      this.entries.delete(e.key);
      e.error = (err as Error).message;
      this.o.onTransition?.(e.name, e.state, "removed");
      e.state = "errored";
      throw err;
    } finally {
      e.loading = undefined;
    }
  }

  private async acquireMerged(req: Extract<AdapterRequest, { merged: unknown }>, signal?: AbortSignal): Promise<AdapterLease> {
    const m = req.merged;
    const params: MergeParams = { weights: m.weights, mergeStrategy: (m.mergeStrategy ?? "linear") as MergeParams["mergeStrategy"], density: m.density, majoritySignMethod: m.majoritySignMethod as MergeParams["majoritySignMethod"] };
    validateMergeParams(m.ids, params, this.o.maxMergeIds);
    // Every component is fetched with this request's token: access is checked per adapter.
    const parts = await Promise.all(m.ids.map((id) => this.acquire({ id, source: req.source, token: req.token }, signal)));
    try {
      if (parts.some((p) => p.key === null)) throw new ValidationError("merged_adapters can only merge LoRA adapters (a Medusa adapter was named)", "merged_adapters");
      const key = `merge:${mergeCacheKey(parts.map((p) => p.key!), params)}`;
      let e = this.entries.get(key);
      if (!e) {
        e = this.newEntry(key, `merge(${m.ids.join("+")})`, "merge", key);
        const weights = parts.map((p) => this.entries.get(p.key!)!.weights!);
        try {
          e.weights = mergeAdapters(weights, params, { maxIds: this.o.maxMergeIds, ids: m.ids });
        } catch (err) {
          this.entries.delete(key);
          throw err;
        }
        e.chatTemplate = this.entries.get(parts[0].key!)!.chatTemplate;
        this.setState(e, "in_memory");
        this.trimHost();
      }
      return this.lease(e);
    } finally {
      for (const p of parts) p.release();
    }
  }

  // ---- the scheduler's gate ----

  readonly gate: AdapterGate = {
    acquire: (seq: Sequence) => {
      if (seq.adapterKey === null) return true;
      const e = this.entries.get(seq.adapterKey);
      if (!e) return false;
      if (e.state === "active" && !e.draining) {
        seq.adapterSlot = e.slot;
        e.inUse++;
        e.served = true;
        e.lastUsed = Date.now();
        return true;
      }
      if (e.state === "in_memory" || e.state === "active") {
        e.wantedSince ||= Date.now();
        if (e.state === "in_memory") void this.activate(e);
        this.rotate();
      }
      return false;
    },
    release: (seq: Sequence) => {
      if (seq.adapterKey === null) return;
      const e = this.entries.get(seq.adapterKey);
      if (!e) return;
      e.inUse--;
      seq.adapterSlot = -1;
      if (e.inUse === 0) this.activateWaiting();
    },
  };

  /** Puts an adapter into a native slot, evicting idle LRU adapters if needed; no-op if nothing can go. */
  private activate(e: Entry): Promise<void> {
    if (e.state === "active") return Promise.resolve();
    if (e.activating) return e.activating;
    const bytes = this.o.backend.loraSlotBytes(e.weights!);
    if (bytes > this.o.activeBudgetBytes)
      return Promise.reject(new AdapterIncompatibleError(`adapter "${e.name}" needs ${bytes} bytes, more than the adapter memory budget ${this.o.activeBudgetBytes} (--adapter-memory-bytes)`));
    let slot = this.slots.indexOf(null);
    while (slot < 0 || this.activeBytes() + bytes > this.o.activeBudgetBytes) {
      const victim = this.lruIdleActive();
      if (!victim) return Promise.resolve(); // stays wanted; retried when a slot frees
      const freed = victim.slot;
      this.evict(victim);
      if (slot < 0) slot = freed;
    }
    this.slots[slot] = e; // reserved while the copy runs
    e.slot = slot;
    e.activating = (async () => {
      try {
        const t0 = performance.now();
        await this.o.backend.loraLoad(slot, e.weights!);
        e.timings.activateMs = performance.now() - t0;
        e.activatedAt = Date.now();
        e.draining = false;
        e.wantedSince = 0;
        e.served = false;
        this.activations++;
        this.setState(e, "active");
        this.o.wake();
      } catch (err) {
        this.slots[slot] = null;
        e.slot = -1;
        this.o.logger.warn({ adapter: e.name, err: (err as Error).message }, "adapter activation failed");
      } finally {
        e.activating = undefined;
      }
    })();
    return e.activating;
  }

  private activeBytes(): number {
    let b = 0;
    for (const s of this.slots) if (s?.weights) b += this.o.backend.loraSlotBytes(s.weights);
    return b;
  }

  /** The least recently used active adapter that no sequence uses and that has served since it came in. */
  private lruIdleActive(): Entry | undefined {
    const now = Date.now();
    let best: Entry | undefined;
    for (const s of this.slots)
      if (s && s.state === "active" && s.inUse === 0 && !s.pinned && !s.activating && (s.served || now - s.activatedAt > this.o.cycleTimeMs) && (!best || s.lastUsed < best.lastUsed))
        best = s;
    return best;
  }

  private evict(e: Entry): void {
    this.o.backend.loraFree(e.slot);
    this.slots[e.slot] = null;
    e.slot = -1;
    e.draining = false;
    this.evictions++;
    this.setState(e, "in_memory");
  }

  /** When adapters wait and no slot is idle, active ones past their cycle time stop admitting (drain). */
  private rotate(): void {
    if (this.lruIdleActive() || this.slots.includes(null)) return;
    const now = Date.now();
    for (const s of this.slots)
      if (s && s.state === "active" && !s.pinned && !s.draining && now - s.activatedAt >= this.o.cycleTimeMs && s.wantedSince === 0) {
        s.draining = true;
        this.o.logger.info({ adapter: s.name }, "adapter draining: others wait for a slot");
      }
  }

  /** A slot went idle: activate the adapter that has waited longest. */
  private activateWaiting(): void {
    const waiting = [...this.entries.values()].filter((x) => x.wantedSince > 0 && x.state === "in_memory" && !x.activating).sort((a, b) => a.wantedSince - b.wantedSince);
    if (waiting.length > 0) void this.activate(waiting[0]);
  }

  /** Called periodically by the engine loop's idle wait: keeps rotation going without new arrivals. */
  tick(): void {
    if ([...this.entries.values()].some((x) => x.wantedSince > 0)) {
      this.rotate();
      this.activateWaiting();
    }
  }

  // ---- memory ----

  private trimHost(): void {
    let total = 0;
    const candidates: Entry[] = [];
    for (const e of this.entries.values()) {
      if (e.state !== "in_memory") continue;
      total += e.weights?.sizeBytes ?? 0;
      if (e.leases === 0 && !e.pinned && e.wantedSince === 0) candidates.push(e);
    }
    candidates.sort((a, b) => a.lastUsed - b.lastUsed);
    for (const e of candidates) {
      if (total <= this.o.hostBudgetBytes) break;
      total -= e.weights?.sizeBytes ?? 0;
      this.remove(e);
    }
  }

  private dropIfIdle(e: Entry): void {
    const stillNamed = [...this.named.values()].some((t) => keyOf(t.source, t.id) === e.key);
    if (e.leases === 0 && e.inUse === 0 && !e.pinned && !stillNamed && e.state === "in_memory") this.trimHost();
  }

  private remove(e: Entry): void {
    if (e.slot >= 0) this.evict(e);
    this.entries.delete(e.key);
    e.weights = undefined;
    this.o.onTransition?.(e.name, e.state, "removed");
  }

  private setState(e: Entry, to: AdapterState): void {
    const from = e.state;
    e.state = to;
    this.o.logger.info({ adapter: e.name, from, to, slot: e.slot >= 0 ? e.slot : undefined }, "adapter state");
    this.o.onTransition?.(e.name, from, to);
  }

  /**
   * The server's --adapter-id, when it is a Medusa adapter: loads it into the default slot 0 and returns its
   * head count; undefined when it is a LoRA (then it is the default LoRA adapter).
   */
  async loadDefaultMedusa(id: string, source: SourceName, token: string | undefined): Promise<number | undefined> {
    const fetched = await this.o.sources.fetch(source, id, token);
    try {
      if (!(await isMedusaDir(fetched.dir))) return undefined;
      const m = await readMedusa(fetched.dir, this.shape, id);
      this.o.backend.medusaLoad(0, { heads: m.heads, ownLmHead: m.version === 1, w: m.w, b: m.b, lm: m.lm });
      this.o.logger.info({ adapter: id, heads: m.heads, version: m.version }, "Medusa heads loaded: speculative decoding on");
      return m.heads;
    } finally {
      fetched.release();
    }
  }

  // ---- introspection ----

  private info(e: Entry, name = e.name): AdapterInfo {
    return { name, key: e.key, source: e.source, id: e.id, state: e.state, pinned: e.pinned, bytes: e.weights?.sizeBytes ?? 0, error: e.error, timings: { ...e.timings } };
  }

  list(): AdapterInfo[] {
    const out: AdapterInfo[] = [];
    const namedKeys = new Map<string, string>();
    for (const [n, t] of this.named) namedKeys.set(keyOf(t.source, t.id), n);
    for (const e of this.entries.values()) out.push(this.info(e, namedKeys.get(e.key) ?? e.name));
    return out;
  }

  /** Display name of a scheduler key. */
  nameOf(key: string): string {
    return this.entries.get(key)?.name ?? key;
  }

  get activeCount(): number {
    return this.slots.filter(Boolean).length;
  }
}

/** Adapter loads so far: each entry's `load`. */
let loads = 0;

export function keyOf(source: string, id: string): string {
  return source === "local" ? `local:${path.resolve(id)}` : `${source}:${id}`;
}

function readChatTemplate(dir: string): string | undefined {
  const p = path.join(dir, "tokenizer_config.json");
  if (!fs.existsSync(p)) return undefined;
  try {
    const t = JSON.parse(fs.readFileSync(p, "utf8")).chat_template;
    return typeof t === "string" ? t : undefined;
  } catch {
    return undefined;
  }
}
