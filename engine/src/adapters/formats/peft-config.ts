// Parses PEFT `adapter_config.json` into a normalised LoRA config and answers PEFT's per-module questions
// (is it targeted, which rank and alpha). Refuses features that would change the math if ignored. No weight files here.

import { readFile } from "node:fs/promises";
import { AdapterIncompatibleError } from "../../errors.js";
import { type BaseModelShape, LORA_TARGETS, type LoraTarget } from "../types.js";

/** How `target_modules` selects modules, in PEFT's terms. */
export type TargetModules =
  | { kind: "names"; names: string[] } // a module is targeted if its name equals an entry or ends with "." + entry
  | { kind: "regex"; pattern: string } // a plain string: re.fullmatch against the module name
  | { kind: "all-linear" } // every linear layer except the output head
  | { kind: "default" }; // null: PEFT's per-architecture default, q_proj and v_proj for Llama, Mistral and Qwen2

export interface PeftLoraConfig {
  peftType: "LORA";
  taskType: string | null;
  baseModelNameOrPath: string | null;
  peftVersion: string | null;
  r: number;
  loraAlpha: number;
  useRslora: boolean;
  targetModules: TargetModules;
  excludeModules: TargetModules | null;
  /** Pattern → rank, in file order: the first pattern matching a module wins. */
  rankPattern: Array<[string, number]>;
  /** Pattern → alpha, in file order. */
  alphaPattern: Array<[string, number]>;
  fanInFanOut: boolean;
  /** null: every layer. */
  layersToTransform: number[] | null;
  layersPattern: string[] | null;
}

/** PEFT's default targets for the Llama family when `target_modules` is null. */
const DEFAULT_TARGETS: readonly LoraTarget[] = ["q_proj", "v_proj"];

/** `init_lora_weights` values that only change how training starts; the others rewrite the base weights. */
const HARMLESS_INITS = new Set<unknown>([true, false, "gaussian", "eva", "orthogonal"]);
const BASE_REWRITING_INITS = ["pissa", "olora", "corda", "loftq", "lora_ga"];

/** `use_*` keys this parser knows; an unknown one that is switched on is refused, as it may change the math. */
const KNOWN_FLAGS = new Set(["use_dora", "use_qalora", "use_bdlora", "use_rslora"]);

/** The module name a Llama-family model gives a target: `model.layers.3.self_attn.q_proj`, `lm_head`. */
export function llamaModuleName(layer: number, target: LoraTarget): string {
  if (target === "lm_head") return "lm_head";
  const block = target === "gate_proj" || target === "up_proj" || target === "down_proj" ? "mlp" : "self_attn";
  return `model.layers.${layer}.${block}.${target}`;
}

/** Python `re` syntax that JavaScript spells differently; the rest of the common subset is shared. */
function pythonRegexToJs(pattern: string): string {
  return pattern
    .replace(/\(\?P</g, "(?<")
    .replace(/\(\?P=(\w+)\)/g, "\\k<$1>")
    .replace(/\\Z/g, "$")
    .replace(/\\A/g, "^");
}

function compileRegex(source: string, what: string, label: string): RegExp {
  try {
    return new RegExp(source);
  } catch (err) {
    throw new AdapterIncompatibleError(`${label}: ${what} is not a regular expression this server can read (${(err as Error).message})`);
  }
}

function isEmpty(v: unknown): boolean {
  if (v === null || v === undefined || v === false) return true;
  if (Array.isArray(v)) return v.length === 0;
  if (typeof v === "object") return Object.keys(v as object).length === 0;
  return false;
}

function notPeftReason(obj: Record<string, unknown>): string {
  const keys = Object.keys(obj);
  if ("fine_tune_type" in obj || "lora_parameters" in obj) {
    return "this is an MLX-LM adapter config (fine_tune_type/lora_parameters), not a PEFT adapter_config.json; convert the adapter to the PEFT layout";
  }
  if ("model_type" in obj || "architectures" in obj) {
    return `this is a model config.json (model_type ${JSON.stringify(obj.model_type ?? null)}), not a PEFT adapter config; the directory seems to hold a full model, not an adapter`;
  }
  return `no peft_type: not a PEFT adapter config (keys: ${keys.slice(0, 8).join(", ") || "none"})`;
}

/** Features this server cannot honour, each named with its value and why it matters. */
function unsupportedFeatures(c: Record<string, unknown>): string[] {
  const out: string[] = [];
  const show = (v: unknown) => JSON.stringify(v);
  if (c.use_dora === true) out.push("use_dora: true (DoRA rescales each output column by a learned magnitude this server does not apply)");
  if (!isEmpty(c.modules_to_save)) out.push(`modules_to_save ${show(c.modules_to_save)} (the adapter replaces whole modules)`);
  if (c.bias !== undefined && c.bias !== null && c.bias !== "none") out.push(`bias ${show(c.bias)} (trained bias vectors are not applied)`);
  if (c.lora_bias === true) out.push("lora_bias: true (lora_B carries a bias that is not applied)");
  if (c.use_qalora === true) out.push("use_qalora: true (QA-LoRA pools the input in groups)");
  if (!isEmpty(c.layer_replication)) out.push(`layer_replication ${show(c.layer_replication)} (the adapter expects a model with duplicated layers)`);
  if (!isEmpty(c.target_parameters)) out.push(`target_parameters ${show(c.target_parameters)} (LoRA on raw parameters, e.g. MoE experts)`);
  if (!isEmpty(c.trainable_token_indices)) out.push(`trainable_token_indices ${show(c.trainable_token_indices)} (trained embedding rows are not applied)`);
  if (!isEmpty(c.alora_invocation_tokens)) out.push(`alora_invocation_tokens ${show(c.alora_invocation_tokens)} (activated LoRA switches on mid-sequence)`);
  if (!isEmpty(c.arrow_config)) out.push("arrow_config (Arrow routes each token among several LoRA experts)");
  if (!isEmpty(c.use_bdlora)) out.push(`use_bdlora ${show(c.use_bdlora)} (block-diagonal LoRA factors)`);
  if (!isEmpty(c.enable_lora)) out.push(`enable_lora ${show(c.enable_lora)} (the pre-0.3 PEFT MergedLinear layout for fused layers)`);
  const init = c.init_lora_weights;
  if (init !== undefined && init !== null && !HARMLESS_INITS.has(init)) {
    const rewrites = typeof init === "string" && BASE_REWRITING_INITS.some((p) => init.toLowerCase().startsWith(p));
    out.push(
      rewrites
        ? `init_lora_weights ${show(init)} (this initialisation rewrites the base weights; convert the adapter to plain LoRA before serving it)`
        : `init_lora_weights ${show(init)} (an initialisation this server does not know)`,
    );
  }
  for (const [key, value] of Object.entries(c)) {
    if (key.startsWith("use_") && !KNOWN_FLAGS.has(key) && !isEmpty(value)) {
      out.push(`${key} ${show(value)} (an option this server does not know; it may change how the adapter is applied)`);
    }
  }
  return out;
}

/** Parses the text of an adapter_config.json. `label` (e.g. `adapter "x": adapter_config.json`) starts every error. */
export function parsePeftConfig(text: string, label: string): PeftLoraConfig {
  const fail = (why: string): never => {
    throw new AdapterIncompatibleError(`${label}: ${why}`);
  };
  if (text.trim() === "") fail("the file is empty");
  if (text.startsWith("version https://git-lfs.github.com/spec/")) {
    fail("the file is a Git LFS pointer, not the config; fetch the real file (git lfs pull) and try again");
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    fail(`not JSON (${(err as Error).message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) fail("JSON but not an object; not a PEFT adapter config");
  const c = raw as Record<string, unknown>;
  if (!("peft_type" in c)) fail(notPeftReason(c));
  if (c.peft_type !== "LORA") {
    fail(`peft_type ${JSON.stringify(c.peft_type)} is not supported; only LoRA adapters (peft_type "LORA") are served`);
  }
  const refused = unsupportedFeatures(c);
  if (refused.length > 0) fail(`uses ${refused.length === 1 ? "a feature" : "features"} this server cannot honour: ${refused.join("; ")}`);

  const str = (key: string): string | null => {
    const v = c[key];
    if (v === undefined || v === null) return null;
    if (typeof v !== "string") fail(`${key} is ${JSON.stringify(v)}, expected a string or null`);
    return v as string;
  };
  const positiveInt = (v: unknown, what: string): number => {
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) fail(`${what} is ${JSON.stringify(v)}, expected a positive integer`);
    return v as number;
  };
  const finite = (v: unknown, what: string): number => {
    if (typeof v !== "number" || !Number.isFinite(v)) fail(`${what} is ${JSON.stringify(v)}, expected a number`);
    return v as number;
  };
  const pattern = (key: string, value: (v: unknown, what: string) => number): Array<[string, number]> => {
    const v = c[key];
    if (v === undefined || v === null) return [];
    if (typeof v !== "object" || Array.isArray(v)) fail(`${key} is ${JSON.stringify(v)}, expected an object of pattern → value`);
    return Object.entries(v as Record<string, unknown>).map(([p, x]) => {
      compileRegex(patternRegexSource(p), `${key} key ${JSON.stringify(p)}`, label);
      return [p, value(x, `${key}[${JSON.stringify(p)}]`)];
    });
  };
  const modules = (key: string, allowDefault: boolean): TargetModules | null => {
    const v = c[key];
    if (v === undefined || v === null) return allowDefault ? { kind: "default" } : null;
    if (typeof v === "string") {
      if (allowDefault && v.toLowerCase() === "all-linear") return { kind: "all-linear" };
      compileRegex(`^(?:${pythonRegexToJs(v)})$`, `${key} ${JSON.stringify(v)}`, label);
      return { kind: "regex", pattern: v };
    }
    if (!Array.isArray(v) || !v.every((x) => typeof x === "string")) fail(`${key} is ${JSON.stringify(v)}, expected a list of module names, a regex string or null`);
    return { kind: "names", names: [...new Set(v as string[])] };
  };

  const flag = (key: string): boolean => {
    const v = c[key] ?? false;
    if (typeof v !== "boolean") fail(`${key} is ${JSON.stringify(v)}, expected true, false or null`);
    return v as boolean;
  };

  let layersToTransform: number[] | null = null;
  const ltt = c.layers_to_transform;
  if (typeof ltt === "number") layersToTransform = [nonNegativeInt(ltt, "layers_to_transform", fail)];
  else if (Array.isArray(ltt)) {
    layersToTransform = ltt.length === 0 ? null : ltt.map((x, i) => nonNegativeInt(x, `layers_to_transform[${i}]`, fail));
  } else if (ltt !== undefined && ltt !== null) fail(`layers_to_transform is ${JSON.stringify(ltt)}, expected an integer, a list of integers or null`);

  let layersPattern: string[] | null = null;
  const lp = c.layers_pattern;
  if (typeof lp === "string") layersPattern = lp === "" ? null : [lp];
  else if (Array.isArray(lp) && lp.every((x) => typeof x === "string")) layersPattern = lp.length === 0 ? null : (lp as string[]);
  else if (lp !== undefined && lp !== null) fail(`layers_pattern is ${JSON.stringify(lp)}, expected a string, a list of strings or null`);

  return {
    peftType: "LORA",
    taskType: str("task_type"),
    baseModelNameOrPath: str("base_model_name_or_path"),
    peftVersion: str("peft_version"),
    r: positiveInt(c.r ?? 8, "r"),
    loraAlpha: finite(c.lora_alpha ?? 8, "lora_alpha"),
    useRslora: flag("use_rslora"),
    targetModules: modules("target_modules", true) as TargetModules,
    excludeModules: modules("exclude_modules", false),
    rankPattern: pattern("rank_pattern", positiveInt),
    alphaPattern: pattern("alpha_pattern", finite),
    fanInFanOut: flag("fan_in_fan_out"),
    layersToTransform,
    layersPattern,
  };
}

function nonNegativeInt(v: unknown, what: string, fail: (why: string) => never): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) fail(`${what} is ${JSON.stringify(v)}, expected a non-negative integer`);
  return v as number;
}

/** Reads and parses an adapter_config.json from disk. */
export async function readPeftConfig(path: string, label = path): Promise<PeftLoraConfig> {
  return parsePeftConfig(await readFile(path, "utf8"), label);
}

/** PEFT's get_pattern_key: a pattern matches a module name in full or after any ".". */
function patternRegexSource(p: string): string {
  return `^(?:.*\\.)?(?:${pythonRegexToJs(p)})$`;
}

function matchesSelector(sel: TargetModules, name: string, allLinear: (name: string) => boolean): boolean {
  switch (sel.kind) {
    case "names":
      return sel.names.some((n) => name === n || name.endsWith(`.${n}`));
    case "regex":
      return new RegExp(`^(?:${pythonRegexToJs(sel.pattern)})$`).test(name);
    case "all-linear":
      return allLinear(name);
    case "default":
      return DEFAULT_TARGETS.some((t) => name.endsWith(`.${t}`));
  }
}

/** The Llama-family linear layers "all-linear" resolves to: every projection, not the output head. */
function isLlamaLinear(name: string): boolean {
  return LORA_TARGETS.some((t) => t !== "lm_head" && name.endsWith(`.${t}`));
}

/**
 * Whether PEFT would put a LoRA on the module `name` (check_target_module_exists): exclude_modules first, then
 * target_modules; layers_to_transform only narrows a list match that is not an exact name.
 */
export function isTargeted(config: PeftLoraConfig, name: string): boolean {
  if (config.excludeModules !== null && matchesSelector(config.excludeModules, name, () => false)) return false;
  const sel = config.targetModules;
  if (!matchesSelector(sel, name, isLlamaLinear)) return false;
  if (sel.kind === "regex" || (sel.kind === "names" && sel.names.includes(name)) || config.layersToTransform === null) return true;
  const index = layerIndexOf(config, name);
  return index !== null && config.layersToTransform.includes(index);
}

/** The layer number PEFT reads from a module name for layers_to_transform; null when none is found. */
function layerIndexOf(config: PeftLoraConfig, name: string): number | null {
  const patterns = config.layersPattern === null ? ["[^.]*"] : config.layersPattern.map(pythonRegexToJs);
  for (const p of patterns) {
    const m = new RegExp(`^.*\\.${p}\\.(\\d+)\\.`).exec(name);
    if (m !== null) return Number(m[1]);
  }
  return null;
}

function lookupPattern(patterns: Array<[string, number]>, name: string): number | undefined {
  for (const [p, v] of patterns) if (new RegExp(patternRegexSource(p)).test(name)) return v;
  return undefined;
}

/** Rank, alpha and scale of the LoRA on module `name`: rank_pattern/alpha_pattern first, then r/lora_alpha. */
export function moduleHyperparams(config: PeftLoraConfig, name: string): { rank: number; alpha: number; scale: number } {
  const rank = lookupPattern(config.rankPattern, name) ?? config.r;
  const alpha = lookupPattern(config.alphaPattern, name) ?? config.loraAlpha;
  return { rank, alpha, scale: config.useRslora ? alpha / Math.sqrt(rank) : alpha / rank };
}

function describeTargets(sel: TargetModules): string {
  switch (sel.kind) {
    case "names":
      return `[${sel.names.join(", ")}]`;
    case "regex":
      return JSON.stringify(sel.pattern);
    case "all-linear":
      return '"all-linear"';
    case "default":
      return `null (PEFT's default: ${DEFAULT_TARGETS.join(", ")})`;
  }
}

export interface PlannedModule {
  layer: number; // -1 for lm_head
  target: LoraTarget;
  name: string;
}

/**
 * The modules of a Llama-family base model this config would adapt, from the config alone (no weights).
 * Refuses a config that adapts none of them.
 */
export function plannedTargets(
  config: PeftLoraConfig,
  base: BaseModelShape,
  label = "adapter_config.json",
): { targets: LoraTarget[]; modules: PlannedModule[] } {
  const modules: PlannedModule[] = [];
  for (let layer = 0; layer < base.numLayers; layer++) {
    for (const target of LORA_TARGETS) {
      if (target === "lm_head") continue;
      const name = llamaModuleName(layer, target);
      if (isTargeted(config, name)) modules.push({ layer, target, name });
    }
  }
  if (isTargeted(config, "lm_head")) modules.push({ layer: -1, target: "lm_head", name: "lm_head" });
  if (modules.length === 0) {
    throw new AdapterIncompatibleError(
      `${label}: no target module of the base model matches target_modules ${describeTargets(config.targetModules)}; ` +
        `this server adapts ${LORA_TARGETS.join(", ")} of Llama-family models (trained for another architecture?)`,
    );
  }
  const targets = LORA_TARGETS.filter((t) => modules.some((m) => m.target === t));
  return { targets, modules };
}
