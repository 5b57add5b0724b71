// Writes Medusa head sets for tests: config.json plus medusa_lm_head.safetensors (version 2 heads reuse the
// base lm_head; version 1 heads carry their own), with random weights or with zero weights (then every head
// proposes the base model's own next token: x + silu(0) = x).
import fs from "node:fs";
import path from "node:path";

import { writeSafetensors, type TensorToWrite } from "../../engine/src/model/safetensors.js";
import { normalRng } from "../../scripts/tiny-models.js";

export function writeMedusa(dir: string, o: { hidden: number; vocab: number; heads: number; version?: 1 | 2; seed?: number; zero?: boolean; prefix?: boolean }): void {
  fs.mkdirSync(dir, { recursive: true });
  const rnd = normalRng(o.seed ?? 1);
  const t: TensorToWrite[] = [];
  const pre = o.prefix === false ? "" : "medusa_head.";
  const rand = (n: number, s: number) => Float32Array.from({ length: n }, () => (o.zero ? 0 : rnd() * s));
  for (let h = 0; h < o.heads; h++) {
    t.push({ name: `${pre}${h}.0.linear.weight`, dtype: "F32", shape: [o.hidden, o.hidden], data: rand(o.hidden * o.hidden, 1 / Math.sqrt(o.hidden)) });
    t.push({ name: `${pre}${h}.0.linear.bias`, dtype: "F32", shape: [o.hidden], data: rand(o.hidden, 0.1) });
    if (o.version === 1) t.push({ name: `${pre}${h}.1.weight`, dtype: "F32", shape: [o.vocab, o.hidden], data: rand(o.vocab * o.hidden, 1) });
  }
  writeSafetensors(path.join(dir, "medusa_lm_head.safetensors"), t);
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify({ medusa_num_heads: o.heads, medusa_num_layers: 1, base_model_name_or_path: "tiny", ...(o.version === 1 ? {} : { version: "2" }) }));
}
