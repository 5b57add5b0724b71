// Finds a model directory's safetensors files (single or sharded with an index) and lists every tensor's byte
// range for native mapping. Reads headers only; the weights themselves are mapped by native code.
import fs from "node:fs";
import path from "node:path";

import { readSafetensorsHeader, SafetensorsError, type TensorEntry } from "./safetensors.js";

export interface WeightFiles {
  files: string[];
  tensors: (TensorEntry & { file: number })[];
  bytes: number;
}

export function listWeights(dir: string): WeightFiles {
  const single = path.join(dir, "model.safetensors");
  const index = path.join(dir, "model.safetensors.index.json");
  let files: string[];
  let wanted: Map<string, string> | undefined;
  if (fs.existsSync(index)) {
    let idx: { weight_map?: Record<string, string> };
    try {
      idx = JSON.parse(fs.readFileSync(index, "utf8"));
    } catch (e) {
      throw new SafetensorsError(`cannot parse ${index}: ${(e as Error).message}`);
    }
    if (!idx.weight_map || typeof idx.weight_map !== "object") throw new SafetensorsError(`${index} has no weight_map`);
    wanted = new Map(Object.entries(idx.weight_map));
    files = [...new Set(wanted.values())].sort().map((f) => {
      if (f.includes("/") || f.includes("\\") || f.startsWith(".")) throw new SafetensorsError(`${index} names a shard outside the model directory: ${f}`);
      return path.join(dir, f);
    });
  } else if (fs.existsSync(single)) {
    files = [single];
  } else {
    const bins = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith(".bin")) : [];
    throw new SafetensorsError(
      `no model.safetensors or model.safetensors.index.json in ${dir}` +
        (bins.length ? ` (found ${bins.join(", ")}: PyTorch .bin base weights are not supported, convert them to safetensors)` : ""),
    );
  }
  const tensors: WeightFiles["tensors"] = [];
  const seen = new Map<string, string>();
  let bytes = 0;
  files.forEach((f, i) => {
    for (const t of readSafetensorsHeader(f)) {
      const prev = seen.get(t.name);
      if (prev) throw new SafetensorsError(`tensor ${t.name} appears in both ${prev} and ${f}`);
      seen.set(t.name, f);
      if (wanted && wanted.get(t.name) !== path.basename(f))
        throw new SafetensorsError(`${f} holds ${t.name}, but the index maps it to ${wanted.get(t.name) ?? "no file"}`);
      tensors.push({ ...t, file: i });
      bytes += t.nbytes;
    }
  });
  if (wanted) for (const [name, f] of wanted) if (!seen.has(name)) throw new SafetensorsError(`the index maps ${name} to ${f}, which does not hold it`);
  return { files, tensors, bytes };
}
