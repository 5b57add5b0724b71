// Benchmark charts: a small SVG builder for grouped bars and line plots, rendered to PNG by resvg (no browser).
// It draws what a section's ChartSpec says; which numbers to plot belongs to the sections.
import fs from "node:fs";

import { Resvg } from "@resvg/resvg-js";

export interface RefLine {
  y: number;
  label: string;
  dashed?: boolean;
}

export interface BarChart {
  kind: "bars";
  file: string; // e.g. "engine-vs-llamacpp.png"
  title: string;
  subtitle?: string;
  yLabel: string;
  categories: string[];
  series: { name: string; values: (number | null)[] }[];
  /** Per category, a target drawn as a short red tick across the group (null: none). */
  targets?: (number | null)[];
  refLines?: RefLine[];
  format?: (v: number) => string;
}

export interface LineChart {
  kind: "lines";
  file: string;
  title: string;
  subtitle?: string;
  xLabel: string;
  yLabel: string;
  /** Place x on a log2 axis (adapter counts, concurrency). */
  xLog2?: boolean;
  series: { name: string; points: [number, number][] }[];
  refLines?: RefLine[];
  format?: (v: number) => string;
}

export type ChartSpec = BarChart | LineChart;

const W = 900, H = 500;
const M = { left: 80, right: 200, top: 80, bottom: 70 };
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"];
const FONT = "DejaVu Sans, Liberation Sans, Arial, sans-serif";

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const defaultFormat = (v: number) => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2));

/** Round tick values covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, count = 6): number[] {
  if (!(hi > lo)) hi = lo + 1;
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((k) => k * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  const first = Math.floor(lo / step), last = Math.ceil(hi / step - 1e-9);
  for (let k = first; k <= last; k++) out.push(Number((k * step).toPrecision(12)));
  return out;
}

function text(x: number, y: number, s: string, o: { size?: number; anchor?: string; weight?: string; fill?: string; rotate?: number } = {}): string {
  const rot = o.rotate ? ` transform="rotate(${o.rotate} ${x} ${y})"` : "";
  return `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" font-family="${FONT}" font-size="${o.size ?? 13}" text-anchor="${o.anchor ?? "start"}" font-weight="${o.weight ?? "normal"}" fill="${o.fill ?? "#222"}"${rot}>${esc(s)}</text>`;
}

/** Splits text into lines of at most `max` characters at spaces. */
export function wrap(s: string, max: number): string[] {
  const lines: string[] = [];
  let cur = "";
  for (const word of s.split(" ")) {
    if (cur && cur.length + 1 + word.length > max) {
      lines.push(cur);
      cur = word;
    } else cur = cur ? `${cur} ${word}` : word;
  }
  if (cur) lines.push(cur);
  return lines;
}

function frame(spec: ChartSpec, parts: string[]): string {
  const head = [
    `<rect width="${W}" height="${H}" fill="white"/>`,
    text(M.left, 26, spec.title, { size: 18, weight: "bold" }),
    ...wrap(spec.subtitle ?? "", 115).slice(0, 2).map((l, i) => text(M.left, 45 + i * 15, l, { size: 12, fill: "#555" })),
    text(22, M.top + (H - M.top - M.bottom) / 2, spec.yLabel, { size: 13, anchor: "middle", rotate: -90 }),
  ];
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}">${[...head, ...parts].join("")}</svg>`;
}

function legend(names: string[], extra: { label: string; color: string; dashed?: boolean }[] = []): string[] {
  const x = W - M.right + 20;
  const out: string[] = [];
  names.forEach((n, i) => {
    const y = M.top + 10 + i * 22;
    out.push(`<rect x="${x}" y="${y - 10}" width="14" height="14" fill="${PALETTE[i % PALETTE.length]}"/>`, text(x + 20, y + 2, n, { size: 12 }));
  });
  extra.forEach((e, j) => {
    const y = M.top + 10 + (names.length + j) * 22;
    out.push(`<line x1="${x}" y1="${y - 3}" x2="${x + 14}" y2="${y - 3}" stroke="${e.color}" stroke-width="2.5"${e.dashed ? ' stroke-dasharray="4 3"' : ""}/>`, text(x + 20, y + 2, e.label, { size: 12 }));
  });
  return out;
}

function yAxis(lo: number, hi: number, fmt: (v: number) => string): { ticks: number[]; y: (v: number) => number; parts: string[] } {
  const ticks = niceTicks(lo, hi);
  const t0 = ticks[0], t1 = ticks[ticks.length - 1];
  const y = (v: number) => H - M.bottom - ((v - t0) / (t1 - t0)) * (H - M.top - M.bottom);
  const parts = ticks.map(
    (t) => `<line x1="${M.left}" y1="${y(t)}" x2="${W - M.right}" y2="${y(t)}" stroke="#e5e5e5"/>` + text(M.left - 8, y(t) + 4, fmt(t), { size: 11, anchor: "end" }),
  );
  parts.push(`<line x1="${M.left}" y1="${M.top}" x2="${M.left}" y2="${H - M.bottom}" stroke="#444"/>`, `<line x1="${M.left}" y1="${H - M.bottom}" x2="${W - M.right}" y2="${H - M.bottom}" stroke="#444"/>`);
  return { ticks, y, parts };
}

function refLineParts(lines: RefLine[] | undefined, y: (v: number) => number): string[] {
  return (lines ?? []).map(
    (r) =>
      `<line x1="${M.left}" y1="${y(r.y)}" x2="${W - M.right}" y2="${y(r.y)}" stroke="#444" stroke-width="1.5"${r.dashed === false ? "" : ' stroke-dasharray="6 4"'}/>` +
      text(W - M.right - 4, y(r.y) - 5, r.label, { size: 11, anchor: "end", fill: "#444" }),
  );
}

export function barSvg(spec: BarChart): string {
  const fmt = spec.format ?? defaultFormat;
  const vals = spec.series.flatMap((s) => s.values.filter((v): v is number => v !== null && Number.isFinite(v)));
  const extras = [...(spec.targets ?? []).filter((v): v is number => v !== null), ...(spec.refLines ?? []).map((r) => r.y)];
  const hi = Math.max(0, ...vals, ...extras) * 1.08 || 1;
  const { y, parts } = yAxis(0, hi, fmt);
  const plotW = W - M.left - M.right;
  const groupW = plotW / Math.max(1, spec.categories.length);
  const barW = Math.min(60, (groupW * 0.75) / Math.max(1, spec.series.length));
  spec.categories.forEach((c, ci) => {
    const gx = M.left + ci * groupW + (groupW - barW * spec.series.length) / 2;
    spec.series.forEach((s, si) => {
      const v = s.values[ci];
      const x = gx + si * barW;
      if (v === null || !Number.isFinite(v)) {
        parts.push(text(x + barW / 2, y(0) - 6, "n/a", { size: 10, anchor: "middle", fill: "#999" }));
        return;
      }
      parts.push(
        `<rect x="${x.toFixed(1)}" y="${y(v).toFixed(1)}" width="${(barW - 2).toFixed(1)}" height="${(y(0) - y(v)).toFixed(1)}" fill="${PALETTE[si % PALETTE.length]}"/>`,
        text(x + (barW - 2) / 2, y(v) - 5, fmt(v), { size: 11, anchor: "middle" }),
      );
    });
    const t = spec.targets?.[ci];
    if (t !== null && t !== undefined) {
      const x0 = gx - 6, x1 = gx + barW * spec.series.length + 4;
      parts.push(`<line x1="${x0}" y1="${y(t)}" x2="${x1}" y2="${y(t)}" stroke="#d62728" stroke-width="2.5"/>`);
    }
    parts.push(text(M.left + ci * groupW + groupW / 2, H - M.bottom + 20, c, { size: 12, anchor: "middle" }));
  });
  parts.push(...refLineParts(spec.refLines, y));
  parts.push(...legend(spec.series.map((s) => s.name), spec.targets?.some((t) => t !== null) ? [{ label: "target", color: "#d62728" }] : []));
  return frame(spec, parts);
}

export function lineSvg(spec: LineChart): string {
  const fmt = spec.format ?? defaultFormat;
  const pts = spec.series.flatMap((s) => s.points).filter(([x, v]) => Number.isFinite(x) && Number.isFinite(v));
  const xs = pts.map(([x]) => (spec.xLog2 ? Math.log2(x) : x));
  const xlo = Math.min(...xs), xhi = Math.max(...xs);
  const ymax = Math.max(0, ...pts.map(([, v]) => v), ...(spec.refLines ?? []).map((r) => r.y)) * 1.08 || 1;
  const { y, parts } = yAxis(0, ymax, fmt);
  const span = xhi - xlo || 1;
  const x = (v: number) => M.left + 20 + (((spec.xLog2 ? Math.log2(v) : v) - xlo) / span) * (W - M.left - M.right - 40);
  const xTicks = [...new Set(pts.map(([px]) => px))].sort((a, b) => a - b);
  for (const t of xTicks) parts.push(text(x(t), H - M.bottom + 20, String(t), { size: 11, anchor: "middle" }), `<line x1="${x(t)}" y1="${H - M.bottom}" x2="${x(t)}" y2="${H - M.bottom + 5}" stroke="#444"/>`);
  parts.push(text(M.left + (W - M.left - M.right) / 2, H - M.bottom + 45, spec.xLabel, { size: 13, anchor: "middle" }));
  parts.push(...refLineParts(spec.refLines, y));
  spec.series.forEach((s, si) => {
    const color = PALETTE[si % PALETTE.length];
    const ok = s.points.filter(([px, v]) => Number.isFinite(px) && Number.isFinite(v)).sort((a, b) => a[0] - b[0]);
    if (ok.length > 1) parts.push(`<polyline fill="none" stroke="${color}" stroke-width="2.5" points="${ok.map(([px, v]) => `${x(px).toFixed(1)},${y(v).toFixed(1)}`).join(" ")}"/>`);
    for (const [px, v] of ok) parts.push(`<circle cx="${x(px).toFixed(1)}" cy="${y(v).toFixed(1)}" r="4" fill="${color}"/>`, text(x(px) + 6, y(v) - 7, fmt(v), { size: 10, fill: color }));
  });
  parts.push(...legend(spec.series.map((s) => s.name)));
  return frame(spec, parts);
}

export function chartSvg(spec: ChartSpec): string {
  return spec.kind === "bars" ? barSvg(spec) : lineSvg(spec);
}

/** Renders a chart to PNG bytes with the system's fonts (DejaVu on Debian). */
export function renderPng(spec: ChartSpec): Buffer {
  const r = new Resvg(chartSvg(spec), { font: { loadSystemFonts: true, defaultFontFamily: "DejaVu Sans" }, fitTo: { mode: "width", value: W } });
  return Buffer.from(r.render().asPng());
}

export function writePng(spec: ChartSpec, file: string): void {
  fs.writeFileSync(file, renderPng(spec));
}
