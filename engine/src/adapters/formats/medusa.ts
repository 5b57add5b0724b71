// Reads a Medusa speculative-decoding head set: config.json (medusa_num_heads, medusa_num_layers, version) and
// the heads' safetensors (`medusa_head.{h}.{l}.linear.{weight,bias}` or the same keys without the prefix;
// version 1 adds `{h}.{L}.weight`, each head's own output projection). Validated against the base model.
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";

import { AdapterIncompatibleError, NotFoundError } from "../../errors.js";
import type { BaseModelShape } from "../types.js";
import { parseSafetensors } from "./safetensors.js";
import { type TensorEntry, readWholeFile } from "./tensor.js";

export interface MedusaHeads {
  version: 1 | 2;
  heads: number;
  w: Float32Array; // [heads, hidden, hidden]
  b: Float32Array; // [heads, hidden]
  lm?: Float32Array; // [heads, vocab, hidden], version 1
}

/** Whether a directory holds a Medusa adapter (its config.json names medusa_num_heads). */
export async function isMedusaDir(dir: string): Promise<boolean> {
  try {
    const cfg = JSON.parse(await readFile(path.join(dir, "config.json"), "utf8"));
    return typeof cfg === "object" && cfg !== null && "medusa_num_heads" in cfg;
  } catch {
    return false;
  }
}

export async function readMedusa(dir: string, base: BaseModelShape, name = dir): Promise<MedusaHeads> {
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(await readFile(path.join(dir, "config.json"), "utf8"));
  } catch (e) {
    throw new NotFoundError(`Medusa adapter "${name}": cannot read config.json (${(e as Error).message})`);
  }
  const heads = cfg.medusa_num_heads, layers = cfg.medusa_num_layers ?? 1;
  if (!Number.isInteger(heads) || (heads as number) < 1 || (heads as number) > 16)
    throw new AdapterIncompatibleError(`Medusa adapter "${name}": medusa_num_heads ${JSON.stringify(heads)} must be an integer in [1, 16]`);
  if (layers !== 1) throw new AdapterIncompatibleError(`Medusa adapter "${name}": medusa_num_layers ${JSON.stringify(layers)} is not supported (only 1 residual block per head)`);
  const files = (await readdir(dir)).filter((f) => f.endsWith(".safetensors")).sort();
  if (files.length === 0) throw new NotFoundError(`Medusa adapter "${name}": no .safetensors file of heads in ${dir}`);
  const tensors = new Map<string, TensorEntry>();
  for (const f of files) for (const [k, t] of parseSafetensors(await readWholeFile(path.join(dir, f)), f).tensors) tensors.set(k.replace(/^medusa_head\./, ""), t);
  const n = heads as number, H = base.hiddenSize, V = base.vocabSize;
  // Version: LoRAX's rule — a missing key means 1 unless no head carries its own projection.
  const hasLm = tensors.has(`0.1.weight`);
  const declared = cfg.version === undefined ? undefined : Number(cfg.version);
  const version: 1 | 2 = declared === 2 ? 2 : declared === 1 || hasLm ? 1 : 2;
  if (version === 2 && hasLm) throw new AdapterIncompatibleError(`Medusa adapter "${name}": version 2 heads must not carry their own output projection (0.1.weight found)`);
  const take = (key: string, shape: number[]): Float32Array => {
    const t = tensors.get(key);
    if (!t) throw new AdapterIncompatibleError(`Medusa adapter "${name}": tensor ${key} is missing (expected shape [${shape}])`);
    if (t.shape.join() !== shape.join())
      throw new AdapterIncompatibleError(`Medusa adapter "${name}": tensor ${key} has shape [${t.shape}], base expects [${shape}] (heads trained for another base model?)`);
    return t.read();
  };
  const w = new Float32Array(n * H * H), b = new Float32Array(n * H);
  const lm = version === 1 ? new Float32Array(n * V * H) : undefined;
  for (let h = 0; h < n; h++) {
    w.set(take(`${h}.0.linear.weight`, [H, H]), h * H * H);
    b.set(take(`${h}.0.linear.bias`, [H]), h * H);
    if (lm) lm.set(take(`${h}.1.weight`, [V, H]), h * V * H);
  }
  if (tensors.has(`${n}.0.linear.weight`)) throw new AdapterIncompatibleError(`Medusa adapter "${name}": tensors for more heads than medusa_num_heads ${n}`);
  return { version, heads: n, w, b, lm };
}
