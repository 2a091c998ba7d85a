// Inline SVG charts for report.html: line/step charts (CDFs, timelines, scatter), grouped bars
// and 100 % stacked bars. No scripts, no external assets.

import { fmt } from './util';

export const COLORS = {
  kvfs: '#d95f02',
  kvfsOff: '#7570b3',
  local: '#1b9e77',
  etcd: '#4e79a7',
  redis: '#e15759',
  daemon: '#bab0ac',
  bad: '#c0392b',
  good: '#27ae60',
};
export const PALETTE = ['#d95f02', '#7570b3', '#1b9e77', '#e7298a', '#66a61e', '#e6ab02', '#a6761d', '#4e79a7', '#666666'];

export function esc(text: unknown): string {
  return String(text).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

export interface Series {
  name: string;
  color?: string;
  points: Array<[number, number]>;
  /** Draw dots instead of a line. */
  dots?: boolean;
  dashed?: boolean;
  /** Draw as a step function (CDFs). */
  step?: boolean;
}

interface Axis {
  min: number;
  max: number;
  log: boolean;
  map(v: number): number;
  ticks: Array<{ v: number; label: string }>;
}

function niceStep(span: number, count: number): number {
  const raw = span / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag;
}

function tickLabel(v: number): string {
  const a = Math.abs(v);
  if (a === 0) return '0';
  if (a >= 1e6) return `${+(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toPrecision(3)}k`;
  if (a >= 1) return String(+v.toPrecision(4));
  return String(+v.toPrecision(2));
}

function makeAxis(values: number[], log: boolean, from: number, to: number, fixedMin?: number, fixedMax?: number): Axis {
  let vals = values.filter((v) => Number.isFinite(v));
  if (log) vals = vals.filter((v) => v > 0);
  let min = fixedMin ?? (vals.length ? Math.min(...vals) : 0);
  let max = fixedMax ?? (vals.length ? Math.max(...vals) : 1);
  if (log) {
    if (!(min > 0)) min = max > 0 ? max / 100 : 0.01;
    if (!(max > 0)) max = 1;
    let lo = Math.floor(Math.log10(min));
    let hi = Math.ceil(Math.log10(max));
    if (hi === lo) hi = lo + 1;
    if (fixedMin !== undefined) lo = Math.log10(fixedMin);
    if (fixedMax !== undefined) hi = Math.log10(fixedMax);
    const ticks: Axis['ticks'] = [];
    const decades = hi - lo;
    for (let d = Math.floor(lo); d <= Math.ceil(hi); d++) {
      for (const m of decades <= 2 ? [1, 2, 5] : decades <= 4 ? [1, 3] : [1]) {
        const v = m * 10 ** d;
        if (v >= 10 ** lo * 0.999 && v <= 10 ** hi * 1.001) ticks.push({ v, label: tickLabel(v) });
      }
    }
    return { min: 10 ** lo, max: 10 ** hi, log, ticks, map: (v) => from + ((Math.log10(Math.max(v, 10 ** lo)) - lo) / (hi - lo)) * (to - from) };
  }
  if (max === min) {
    max = min + (min === 0 ? 1 : Math.abs(min) * 0.1);
  }
  const step = niceStep(max - min, 5);
  if (fixedMin === undefined) min = Math.floor(min / step) * step;
  if (fixedMax === undefined) max = Math.ceil(max / step) * step;
  const ticks: Axis['ticks'] = [];
  for (let v = min; v <= max + step * 1e-9; v += step) ticks.push({ v: +v.toPrecision(12), label: tickLabel(+v.toPrecision(12)) });
  return { min, max, log, ticks, map: (v) => from + ((v - min) / (max - min || 1)) * (to - from) };
}

function legend(items: Array<{ name: string; color: string; dashed?: boolean; box?: boolean }>, x: number, y: number): string {
  let out = '';
  let cx = x;
  let cy = y;
  for (const it of items) {
    const w = 30 + it.name.length * 6.6;
    if (cx + w > x + 560 && cx > x) {
      cx = x;
      cy += 16;
    }
    out += it.box
      ? `<rect x="${cx}" y="${cy - 8}" width="14" height="10" fill="${it.color}"/>`
      : `<line x1="${cx}" y1="${cy - 3}" x2="${cx + 16}" y2="${cy - 3}" stroke="${it.color}" stroke-width="2.5"${it.dashed ? ' stroke-dasharray="5 3"' : ''}/>`;
    out += `<text x="${cx + 20}" y="${cy + 1}" font-size="11">${esc(it.name)}</text>`;
    cx += w;
  }
  return out;
}

function legendRows(count: number, names: string[]): number {
  let rows = 1;
  let w = 0;
  for (const n of names.slice(0, count)) {
    const iw = 30 + n.length * 6.6;
    if (w + iw > 560 && w > 0) {
      rows++;
      w = 0;
    }
    w += iw;
  }
  return rows;
}

export interface LineChartOptions {
  series: Series[];
  xLabel: string;
  yLabel: string;
  logX?: boolean;
  logY?: boolean;
  xMin?: number;
  xMax?: number;
  yMin?: number;
  yMax?: number;
  width?: number;
  height?: number;
  /** Shaded x ranges (e.g. when a server was paused). */
  bands?: Array<{ from: number; to: number; label: string; color?: string }>;
  /** Horizontal reference lines. */
  hlines?: Array<{ y: number; label: string; color?: string }>;
}

export function lineChart(o: LineChartOptions): string {
  const width = o.width ?? 640;
  const names = o.series.map((s) => s.name);
  const legendH = 16 * legendRows(names.length, names) + 6;
  const height = (o.height ?? 300) + legendH;
  const left = 62;
  const right = 16;
  const top = 10 + legendH;
  const bottom = 44;
  const xs = o.series.flatMap((s) => s.points.map((p) => p[0])).concat((o.bands ?? []).flatMap((b) => [b.from, b.to]));
  const ys = o.series.flatMap((s) => s.points.map((p) => p[1])).concat((o.hlines ?? []).map((h) => h.y));
  const X = makeAxis(xs, Boolean(o.logX), left, width - right, o.xMin, o.xMax);
  const Y = makeAxis(ys, Boolean(o.logY), height - bottom, top, o.yMin, o.yMax);
  const clampX = (v: number) => Math.min(width - right, Math.max(left, X.map(v)));
  const clampY = (v: number) => Math.min(height - bottom, Math.max(top, Y.map(v)));
  let svg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" font-family="sans-serif" role="img">`;
  svg += `<rect x="0" y="0" width="${width}" height="${height}" fill="#fff"/>`;
  for (const b of o.bands ?? []) {
    const x1 = clampX(b.from);
    const x2 = clampX(b.to);
    svg += `<rect x="${x1}" y="${top}" width="${Math.max(1, x2 - x1)}" height="${height - bottom - top}" fill="${b.color ?? '#f4d03f'}" opacity="0.25"/>`;
    svg += `<text x="${x1 + 3}" y="${height - bottom - 4}" font-size="10" fill="#555">${esc(b.label)}</text>`;
  }
  for (const t of Y.ticks) {
    const y = Y.map(t.v);
    svg += `<line x1="${left}" y1="${y}" x2="${width - right}" y2="${y}" stroke="#e5e5e5"/>`;
    svg += `<text x="${left - 5}" y="${y + 4}" font-size="10" text-anchor="end" fill="#444">${esc(t.label)}</text>`;
  }
  for (const t of X.ticks) {
    const x = X.map(t.v);
    svg += `<line x1="${x}" y1="${top}" x2="${x}" y2="${height - bottom}" stroke="#f0f0f0"/>`;
    svg += `<text x="${x}" y="${height - bottom + 14}" font-size="10" text-anchor="middle" fill="#444">${esc(t.label)}</text>`;
  }
  svg += `<rect x="${left}" y="${top}" width="${width - left - right}" height="${height - top - bottom}" fill="none" stroke="#999"/>`;
  for (const h of o.hlines ?? []) {
    const y = clampY(h.y);
    svg += `<line x1="${left}" y1="${y}" x2="${width - right}" y2="${y}" stroke="${h.color ?? '#888'}" stroke-dasharray="4 3"/>`;
    svg += `<text x="${width - right - 4}" y="${y - 3}" font-size="10" text-anchor="end" fill="${h.color ?? '#666'}">${esc(h.label)}</text>`;
  }
  o.series.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length];
    const pts = s.points.filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
    if (pts.length === 0) return;
    if (s.dots) {
      const step = Math.max(1, Math.floor(pts.length / 3000));
      const r = pts.length < 100 ? 3.5 : pts.length < 1000 ? 2.4 : 1.8;
      for (let k = 0; k < pts.length; k += step) {
        svg += `<circle cx="${clampX(pts[k][0]).toFixed(1)}" cy="${clampY(pts[k][1]).toFixed(1)}" r="${r}" fill="${color}" fill-opacity="0.75"/>`;
      }
      return;
    }
    let d = '';
    pts.forEach((p, k) => {
      const x = clampX(p[0]).toFixed(1);
      const y = clampY(p[1]).toFixed(1);
      if (k === 0) d += `M${x},${y}`;
      else if (s.step) d += `H${x}V${y}`;
      else d += `L${x},${y}`;
    });
    svg += `<path d="${d}" fill="none" stroke="${color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`;
  });
  svg += `<text x="${(left + width - right) / 2}" y="${height - 8}" font-size="11" text-anchor="middle">${esc(o.xLabel)}</text>`;
  svg += `<text x="14" y="${(top + height - bottom) / 2}" font-size="11" text-anchor="middle" transform="rotate(-90 14 ${(top + height - bottom) / 2})">${esc(o.yLabel)}</text>`;
  svg += legend(
    o.series.map((s, i) => ({ name: s.name, color: s.color ?? PALETTE[i % PALETTE.length], dashed: s.dashed, box: s.dots })),
    left,
    16,
  );
  return `${svg}</svg>`;
}

export interface BarGroup {
  label: string;
  values: Array<{ name: string; value: number | null; color?: string; note?: string }>;
}

export interface BarChartOptions {
  groups: BarGroup[];
  yLabel: string;
  logY?: boolean;
  width?: number;
  height?: number;
  unit?: string;
}

/** Grouped vertical bars with the value written above each bar; null values are marked n/a. */
export function barChart(o: BarChartOptions): string {
  const width = o.width ?? 640;
  const names = [...new Set(o.groups.flatMap((g) => g.values.map((v) => v.name)))];
  const colorOf = (name: string, given?: string) => given ?? PALETTE[names.indexOf(name) % PALETTE.length];
  const legendH = 16 * legendRows(names.length, names) + 6;
  const height = (o.height ?? 280) + legendH;
  const left = 62;
  const right = 12;
  const top = 14 + legendH;
  const bottom = 48;
  const vals = o.groups.flatMap((g) => g.values.map((v) => v.value ?? NaN)).filter((v) => Number.isFinite(v));
  const positive = vals.filter((v) => v > 0);
  // Log scale: start below the smallest positive value, so that it still shows as a bar.
  const Y = makeAxis(o.logY ? [...vals, ...(positive.length ? [Math.min(...positive) / 2] : [])] : [0, ...vals], Boolean(o.logY), height - bottom, top, o.logY ? undefined : 0);
  let svg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" font-family="sans-serif" role="img">`;
  svg += `<rect x="0" y="0" width="${width}" height="${height}" fill="#fff"/>`;
  for (const t of Y.ticks) {
    const y = Y.map(t.v);
    svg += `<line x1="${left}" y1="${y}" x2="${width - right}" y2="${y}" stroke="#e5e5e5"/>`;
    svg += `<text x="${left - 5}" y="${y + 4}" font-size="10" text-anchor="end" fill="#444">${esc(t.label)}</text>`;
  }
  const gw = (width - left - right) / Math.max(1, o.groups.length);
  const base = height - bottom;
  o.groups.forEach((g, gi) => {
    const n = g.values.length;
    const bw = Math.min(40, (gw * 0.8) / Math.max(1, n));
    const x0 = left + gi * gw + (gw - bw * n) / 2;
    g.values.forEach((v, vi) => {
      const x = x0 + vi * bw;
      if (v.value === null || !Number.isFinite(v.value)) {
        svg += `<text x="${x + bw / 2}" y="${base - 4}" font-size="9" text-anchor="middle" fill="#999">n/a</text>`;
        return;
      }
      const y = o.logY && v.value <= 0 ? base : Y.map(v.value);
      svg += `<rect x="${x + 1}" y="${Math.min(y, base)}" width="${bw - 2}" height="${Math.max(0.5, Math.abs(base - y))}" fill="${colorOf(v.name, v.color)}"><title>${esc(`${g.label} ${v.name}: ${fmt(v.value, o.unit)}`)}</title></rect>`;
      svg += `<text x="${x + bw / 2}" y="${Math.min(y, base) - 3}" font-size="9" text-anchor="middle" fill="#333">${esc(v.note ?? fmt(v.value))}</text>`;
    });
    const words = g.label.split(' ');
    const lines: string[] = [];
    for (const w of words) {
      const last = lines[lines.length - 1];
      if (last !== undefined && (last + ' ' + w).length * 6 < gw) lines[lines.length - 1] = `${last} ${w}`;
      else lines.push(w);
    }
    lines.slice(0, 3).forEach((l, li) => {
      svg += `<text x="${left + gi * gw + gw / 2}" y="${base + 14 + li * 11}" font-size="10" text-anchor="middle">${esc(l)}</text>`;
    });
  });
  svg += `<line x1="${left}" y1="${base}" x2="${width - right}" y2="${base}" stroke="#999"/>`;
  svg += `<text x="14" y="${(top + base) / 2}" font-size="11" text-anchor="middle" transform="rotate(-90 14 ${(top + base) / 2})">${esc(o.yLabel)}</text>`;
  svg += legend(
    names.map((n) => ({ name: n, color: colorOf(n, o.groups.flatMap((g) => g.values).find((v) => v.name === n)?.color), box: true })),
    left,
    16,
  );
  return `${svg}</svg>`;
}

export interface StackedRow {
  label: string;
  parts: Array<{ name: string; value: number; color: string }>;
  note?: string;
}

/** Horizontal bars, each split into shares of 100 %. */
export function stackedBars(rows: StackedRow[], width = 640): string {
  const names: Array<{ name: string; color: string }> = [];
  for (const r of rows) for (const p of r.parts) if (!names.some((n) => n.name === p.name)) names.push({ name: p.name, color: p.color });
  const legendH = 22;
  const rowH = 20;
  const labelW = 210;
  const noteW = 110;
  const height = legendH + rows.length * rowH + 30;
  let svg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" font-family="sans-serif" role="img">`;
  svg += `<rect x="0" y="0" width="${width}" height="${height}" fill="#fff"/>`;
  svg += legend(names.map((n) => ({ ...n, box: true })), labelW, 14);
  const barW = width - labelW - noteW;
  rows.forEach((r, i) => {
    const y = legendH + i * rowH + 4;
    svg += `<text x="${labelW - 6}" y="${y + 12}" font-size="10" text-anchor="end">${esc(r.label)}</text>`;
    const total = r.parts.reduce((a, p) => a + Math.max(0, p.value), 0);
    let x = labelW;
    for (const p of r.parts) {
      const w = total > 0 ? (Math.max(0, p.value) / total) * barW : 0;
      if (w > 0) {
        svg += `<rect x="${x.toFixed(1)}" y="${y}" width="${w.toFixed(1)}" height="${rowH - 5}" fill="${p.color}"><title>${esc(`${r.label}: ${p.name} ${((100 * p.value) / total).toFixed(1)} %`)}</title></rect>`;
        if (w > 28) svg += `<text x="${(x + w / 2).toFixed(1)}" y="${y + 11}" font-size="9" text-anchor="middle" fill="#fff">${Math.round((100 * p.value) / total)}%</text>`;
      }
      x += w;
    }
    if (total === 0) svg += `<text x="${labelW + 4}" y="${y + 12}" font-size="10" fill="#999">no data</text>`;
    if (r.note) svg += `<text x="${labelW + barW + 6}" y="${y + 12}" font-size="10" fill="#444">${esc(r.note)}</text>`;
  });
  const axisY = legendH + rows.length * rowH + 10;
  for (const pct of [0, 25, 50, 75, 100]) {
    const x = labelW + (pct / 100) * barW;
    svg += `<text x="${x}" y="${axisY + 8}" font-size="9" text-anchor="middle" fill="#666">${pct}%</text>`;
  }
  return `${svg}</svg>`;
}
