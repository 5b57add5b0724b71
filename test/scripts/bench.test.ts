// Tests for the benchmark harness's own pieces (bench/lib, bench/sections): the section registry's contract, chart
// rendering to PNG, and the statistics helpers. No engine or llama.cpp runs here; `npm run bench` does that.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

import { describe, expect, it } from "vitest";

import { chartSvg, niceTicks, renderPng, wrap, type ChartSpec } from "../../bench/lib/chart.js";
import { median, percentile, prompts } from "../../bench/lib/measure.js";
import type { BenchSection } from "../../bench/lib/section.js";

const SECTIONS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "bench", "sections");

describe("bench sections", () => {
  it("each file default-exports { name, describe, run } with a unique name", async () => {
    const files = fs.readdirSync(SECTIONS).filter((f) => f.endsWith(".ts")).sort();
    expect(files.length).toBeGreaterThanOrEqual(5);
    const names: string[] = [];
    for (const f of files) {
      const s = ((await import(pathToFileURL(path.join(SECTIONS, f)).href)) as { default: BenchSection }).default;
      expect(typeof s.name, f).toBe("string");
      expect(typeof s.describe, f).toBe("string");
      expect(typeof s.run, f).toBe("function");
      names.push(s.name);
    }
    expect(new Set(names).size).toBe(names.length);
    for (const n of ["hardware", "engine-core", "correctness", "multi-lora", "ttft"]) expect(names).toContain(n);
  });
});

describe("charts", () => {
  const bars: ChartSpec = {
    kind: "bars", file: "x.png", title: "Ratios & <things>", subtitle: "a ".repeat(100), yLabel: "×", categories: ["a", "b"],
    series: [{ name: "F32", values: [1.5, null] }, { name: "BF16", values: [0.5, 2.5] }], targets: [2, null], refLines: [{ y: 1, label: "parity" }],
  };
  const lines: ChartSpec = {
    kind: "lines", file: "y.png", title: "t", xLabel: "adapters", yLabel: "ratio", xLog2: true,
    series: [{ name: "ours", points: [[1, 0.9], [8, 0.8], [128, NaN]] }, { name: "one point", points: [[8, 0.5]] }],
  };

  it("render to PNG without a browser", () => {
    for (const c of [bars, lines]) {
      const png = renderPng(c);
      expect(png.subarray(1, 4).toString("latin1")).toBe("PNG");
      expect(png.length).toBeGreaterThan(2000);
    }
  });

  it("escape text, mark missing values and draw targets", () => {
    const svg = chartSvg(bars);
    expect(svg).toContain("Ratios &amp; &lt;things&gt;");
    expect(svg).toContain("n/a");
    expect(svg).toContain("#d62728");
  });

  it("pick round ticks that cover the data", () => {
    expect(niceTicks(0, 5.6)).toEqual([0, 1, 2, 3, 4, 5, 6]);
    expect(niceTicks(0, 0.83)).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1]);
    const t = niceTicks(0, 137);
    expect(t[t.length - 1]).toBeGreaterThanOrEqual(137);
  });

  it("wrap subtitles at word boundaries", () => {
    expect(wrap("aa bb cc dd", 5)).toEqual(["aa bb", "cc dd"]);
    expect(wrap("", 5)).toEqual([]);
  });
});

describe("statistics", () => {
  it("median and nearest-rank percentiles ignore NaN", () => {
    expect(median([3, 1, NaN, 2])).toBe(2);
    expect(median([4, 1, 2, 3])).toBe(2.5);
    expect(median([])).toBeNaN();
    const xs = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(percentile(xs, 50)).toBe(50);
    expect(percentile(xs, 99)).toBe(99);
    expect(percentile(xs, 100)).toBe(100);
    expect(percentile([5], 90)).toBe(5);
  });

  it("prompts are distinct, of the asked length, inside the ordinary vocab range", () => {
    const ps = prompts(32, 16, 1);
    expect(ps.length).toBe(32);
    expect(new Set(ps.map((p) => p.join(","))).size).toBe(32);
    for (const p of ps) {
      expect(p.length).toBe(16);
      for (const t of p) expect(t >= 300 && t < 31300).toBe(true);
    }
  });
});
