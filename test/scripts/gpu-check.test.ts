// scripts/gpu-check.sh is what a GPU machine runs, with minutes of device time and no second chance: here it
// must build (nvcc + g++, the same sources as the addon's native code) and pass its self-test, in which the CPU
// backend stands in for CUDA. Skipped, with the reason, where no CUDA toolkit is installed.
import { execFileSync, spawnSync } from "node:child_process";
import path from "node:path";

import { describe, expect, it } from "vitest";

const root = path.resolve(import.meta.dirname, "../..");
const toolkit = execFileSync("sh", [path.join(root, "native/src/cuda/find-cuda.sh")], { encoding: "utf8" }).trim();

describe("scripts/gpu-check.sh", () => {
  it("builds the GPU check and passes its self-test (CPU standing in for CUDA)", (ctx) => {
    if (!toolkit) {
      console.log("skipped: no CUDA toolkit (native/src/cuda/find-cuda.sh found no nvcc with libcudart_static.a)");
      ctx.skip();
    }
    const r = spawnSync("bash", [path.join(root, "scripts/gpu-check.sh"), "--self-test", "--quick"], { cwd: root, encoding: "utf8", timeout: 600_000 });
    const out = `${r.stdout}\n${r.stderr}`;
    expect(out, out.slice(-3000)).toMatch(/gpu-check: built build\/gpu-check\/gpu_check/);
    expect(out).toMatch(/gpu-check: all passed/);
    expect(r.status, out.slice(-3000)).toBe(0);
  }, 600_000);
});
