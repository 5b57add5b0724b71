// Reads a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors or .bin) into validated LoraWeights.
// Does not fetch adapters (sources/), cache them (registry) or merge them (merge.ts); never trusts a file's key layout blindly.
//
// fan_in_fan_out: PEFT keeps lora_A as [r, in] and lora_B as [out, r] whatever the flag (it only transposes the merged
// delta for Conv1D bases, and resets the flag for nn.Linear ones), so that layout is always accepted. With the flag set,
// the transposed layout ([in, r] / [r, out]) written by other tools is accepted too and transposed back.

import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { AdapterIncompatibleError, NotFoundError } from "../../errors.js";
import { type BaseModelShape, LORA_TARGETS, type LoraModule, type LoraTarget, type LoraWeights, targetDims } from "../types.js";
import { type PeftLoraConfig, isTargeted, moduleHyperparams, parsePeftConfig } from "./peft-config.js";
import { parseTorchArchive } from "./safe-pickle.js";
import { parseSafetensors } from "./safetensors.js";
import { type TensorEntry, formatShape, readWholeFile } from "./tensor.js";

export interface ReadPeftOptions {
  /** Display name used in messages, e.g. the adapter id. */
  name?: string;
}

export type PeftAdapter = LoraWeights & { config: PeftLoraConfig };

const CONFIG_FILE = "adapter_config.json";
const WEIGHT_FILES = ["adapter_model.safetensors", "adapter_model.bin"] as const;

/** Key prefix PEFT adds; some files carry it more than once. */
const PREFIX = /^(?:base_model\.model\.)+/;
const LORA_KEY = /^(.+)\.(lora_A|lora_B)(?:\.([^.]+))?\.weight$/;
const DORA_KEY = /\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?$/;
const LORA_BIAS_KEY = /\.lora_B(?:\.[^.]+)?\.bias$/;
const EMBEDDING_KEY = /^(.+)\.lora_embedding_[AB](?:\.[^.]+)?$/;
const LLAMA_MODULE = /^(?:model\.)?layers\.(\d+)\.(self_attn|mlp)\.([a-z_]+)$/;

const BLOCK_OF: Partial<Record<LoraTarget, string>> = {
  q_proj: "self_attn",
  k_proj: "self_attn",
  v_proj: "self_attn",
  o_proj: "self_attn",
  gate_proj: "mlp",
  up_proj: "mlp",
  down_proj: "mlp",
};

interface Pair {
  layer: number;
  target: LoraTarget;
  moduleName: string;
  a?: TensorEntry;
  b?: TensorEntry;
}

/** The Llama-family target a module path names, or null. */
function llamaTarget(moduleName: string): { layer: number; target: LoraTarget } | null {
  if (moduleName === "lm_head") return { layer: -1, target: "lm_head" };
  const m = LLAMA_MODULE.exec(moduleName);
  if (m === null) return null;
  const target = m[3] as LoraTarget;
  if (BLOCK_OF[target] !== m[2]) return null;
  return { layer: Number(m[1]), target };
}

function shortName(p: { layer: number; target: LoraTarget }, part: "lora_A" | "lora_B"): string {
  return p.layer < 0 ? `${p.target}.${part}` : `layers.${p.layer}.${p.target}.${part}`;
}

/** Collects skipped tensors by reason so a 300-tensor skip is one warning, with an example key. */
class SkipLog {
  private readonly byReason = new Map<string, { count: number; example: string }>();
  add(reason: string, key: string): void {
    const e = this.byReason.get(reason);
    if (e === undefined) this.byReason.set(reason, { count: 1, example: key });
    else e.count++;
  }
  warnings(): string[] {
    return [...this.byReason].map(([reason, e]) => `skipped ${e.count} tensor${e.count === 1 ? "" : "s"} ${reason} (e.g. "${e.example}")`);
  }
}

async function listDir(dir: string, label: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new NotFoundError(`${label}: directory ${dir} does not exist`, "adapter_id");
    if (code === "ENOTDIR") throw new AdapterIncompatibleError(`${label}: ${dir} is a file, not an adapter directory`);
    throw err;
  }
}

function missingFileHint(files: string[]): string {
  if (files.includes("adapters.safetensors")) return "; adapters.safetensors is the MLX-LM layout, not PEFT";
  if (files.includes("config.json")) return "; config.json suggests a full model or another adapter type";
  return "";
}

/** Reads, validates and normalises the PEFT LoRA adapter in `dir` against the base model's shape. */
export async function readPeftAdapter(dir: string, base: BaseModelShape, opts: ReadPeftOptions = {}): Promise<PeftAdapter> {
  const label = opts.name !== undefined ? `adapter "${opts.name}"` : `adapter at ${dir}`;
  const fail = (why: string): never => {
    throw new AdapterIncompatibleError(`${label}: ${why}`);
  };
  const files = await listDir(dir, label);
  const shown = files.slice(0, 10).join(", ") || "nothing";
  if (!files.includes(CONFIG_FILE)) fail(`no ${CONFIG_FILE} in ${dir} (found: ${shown})${missingFileHint(files)}`);
  const config = parsePeftConfig(await readFile(join(dir, CONFIG_FILE), "utf8"), `${label}: ${CONFIG_FILE}`);

  const weightFile = WEIGHT_FILES.find((f) => files.includes(f));
  if (weightFile === undefined) fail(`no ${WEIGHT_FILES.join(" or ")} in ${dir} (found: ${shown})${missingFileHint(files)}`);
  const bytes = await readWholeFile(join(dir, weightFile as string));
  const fileLabel = `${label}: ${weightFile}`;
  const tensors = weightFile === "adapter_model.bin" ? parseTorchArchive(bytes, fileLabel) : parseSafetensors(bytes, fileLabel).tensors;
  if (tensors.size === 0) fail(`${weightFile} holds no tensors`);

  const weights = buildModules(tensors, config, base, label);
  return { ...weights, config };
}

function buildModules(tensors: Map<string, TensorEntry>, config: PeftLoraConfig, base: BaseModelShape, label: string): LoraWeights {
  const fail = (why: string): never => {
    throw new AdapterIncompatibleError(`${label}: ${why}`);
  };
  const skips = new SkipLog();
  const pairs = new Map<string, Pair>();
  const adapterNames = new Set<string>();
  let llamaKeys = 0;
  let firstLlamaKey = "";
  for (const [key, entry] of tensors) {
    const rest = key.replace(PREFIX, "");
    if (DORA_KEY.test(rest)) fail(`tensor "${key}" is a DoRA magnitude vector; DoRA adapters are not supported`);
    if (LORA_BIAS_KEY.test(rest)) fail(`tensor "${key}" is a lora_B bias (lora_bias); it would not be applied, so the adapter is refused`);
    const emb = EMBEDDING_KEY.exec(rest);
    if (emb !== null) {
      skips.add(`of embedding LoRA on ${emb[1]} (not a module this server adapts)`, key);
      continue;
    }
    const m = LORA_KEY.exec(rest);
    if (m === null) {
      skips.add("that are not LoRA factors (no lora_A/lora_B in the name)", key);
      continue;
    }
    const [, moduleName, part, adapterName] = m;
    const where = llamaTarget(moduleName);
    if (where === null) {
      skips.add(`of module ${moduleName.split(".").pop()} (not one of ${LORA_TARGETS.join(", ")})`, key);
      continue;
    }
    if (llamaKeys++ === 0) firstLlamaKey = key;
    if (!isTargeted(config, moduleName)) {
      skips.add("of modules adapter_config.json does not target (target_modules / exclude_modules / layers_to_transform)", key);
      continue;
    }
    if (where.layer >= base.numLayers) {
      fail(`tensor ${shortName(where, part as "lora_A")} is for layer ${where.layer}, but the base model has ${base.numLayers} layers (0–${base.numLayers - 1}) (trained for another base model?)`);
    }
    adapterNames.add(adapterName ?? "");
    const pair = pairs.get(moduleName) ?? { ...where, moduleName };
    const slot = part === "lora_A" ? "a" : "b";
    if (pair[slot] !== undefined) fail(`two tensors for ${shortName(where, part as "lora_A")}: "${pair[slot]?.name}" and "${key}"`);
    pair[slot] = entry;
    pairs.set(moduleName, pair);
  }
  if (adapterNames.size > 1) {
    fail(`the file holds tensors of several adapters (${[...adapterNames].map((n) => n || "unnamed").join(", ")}); save one adapter per directory`);
  }
  if (pairs.size === 0) {
    const example = [...tensors.keys()][0];
    if (llamaKeys > 0) {
      fail(
        `no tensors matched a module that adapter_config.json targets (target_modules, exclude_modules and ` +
          `layers_to_transform leave out all ${llamaKeys} LoRA tensors), e.g. "${firstLlamaKey}"`,
      );
    }
    fail(
      `no tensors matched a module of the base model (${LORA_TARGETS.join(", ")}), e.g. "${example}"; ` +
        "trained for another architecture, or saved in a layout other than PEFT's?",
    );
  }

  const modules: LoraModule[] = [];
  for (const pair of pairs.values()) {
    if (pair.a === undefined || pair.b === undefined) {
      const [has, lacks] = pair.a === undefined ? (["lora_B", "lora_A"] as const) : (["lora_A", "lora_B"] as const);
      fail(`tensor ${shortName(pair, has)} has no matching ${lacks} (an incomplete or damaged file)`);
    }
    modules.push(buildModule(pair, config, base, label));
  }
  modules.sort((x, y) => {
    const lx = x.layer < 0 ? Infinity : x.layer;
    const ly = y.layer < 0 ? Infinity : y.layer;
    return lx - ly || LORA_TARGETS.indexOf(x.target) - LORA_TARGETS.indexOf(y.target);
  });
  const floats = modules.reduce((n, m) => n + m.a.length + m.b.length, 0);
  return {
    modules,
    maxRank: modules.reduce((r, m) => Math.max(r, m.rank), 0),
    warnings: skips.warnings(),
    sizeBytes: 4 * floats,
  };
}

function buildModule(pair: Pair, config: PeftLoraConfig, base: BaseModelShape, label: string): LoraModule {
  const { dIn, dOut } = targetDims(base, pair.target);
  const { rank, scale } = moduleHyperparams(config, pair.moduleName);
  const a = readFactor(pair.a as TensorEntry, [rank, dIn], 1, shortName(pair, "lora_A"), config, label);
  const b = readFactor(pair.b as TensorEntry, [dOut, rank], 0, shortName(pair, "lora_B"), config, label);
  return { layer: pair.layer, target: pair.target, rank, scale, dIn, dOut, a, b };
}

/**
 * Decodes one factor and checks it is `want` ([rank, dIn] for A, [dOut, rank] for B), or its transpose when
 * fan_in_fan_out is set. `baseAxis` is the axis of `want` fixed by the base model (the other is the rank).
 */
function readFactor(
  entry: TensorEntry,
  want: [number, number],
  baseAxis: 0 | 1,
  name: string,
  config: PeftLoraConfig,
  label: string,
): Float32Array {
  const s = entry.shape;
  const is2d = s.length === 2;
  if (is2d && s[0] === want[0] && s[1] === want[1]) return entry.read();
  if (is2d && config.fanInFanOut && s[0] === want[1] && s[1] === want[0]) return transpose(entry.read(), s[0], s[1]);
  const accepted = config.fanInFanOut ? `${formatShape(want)} (or ${formatShape([want[1], want[0]])} with fan_in_fan_out)` : formatShape(want);
  const rankAxis = baseAxis === 0 ? 1 : 0;
  const baseMatches = is2d && (s[baseAxis] === want[baseAxis] || (config.fanInFanOut && s[rankAxis] === want[baseAxis]));
  if (baseMatches) {
    throw new AdapterIncompatibleError(
      `${label}: tensor ${name} has shape ${formatShape(s)}, expected ${accepted}: adapter_config.json gives this module rank ${want[rankAxis]} (r / rank_pattern) — the config and weights disagree`,
    );
  }
  throw new AdapterIncompatibleError(
    `${label}: tensor ${name} has shape ${formatShape(s)}, base expects ${accepted} (trained for another base model?)`,
  );
}

function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = x[i * cols + j];
  return out;
}
