// Small helpers of `kvfs lab`: a clock shared by every process, statistics, a seeded random
// number generator, number formatting.

/**
 * Milliseconds on CLOCK_MONOTONIC. process.hrtime reads the same clock in every process on the
 * host, so timestamps taken by the lab, its workers and their children can be compared directly.
 */
export function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** The q-quantile (0..1) of sorted values, by linear interpolation; NaN when empty. */
export function quantileSorted(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

export interface Distribution {
  n: number;
  min: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
}

export function distribution(values: number[]): Distribution {
  const s = [...values].sort((a, b) => a - b);
  const sum = s.reduce((a, b) => a + b, 0);
  return {
    n: s.length,
    min: s.length ? s[0] : NaN,
    mean: s.length ? sum / s.length : NaN,
    p50: quantileSorted(s, 0.5),
    p90: quantileSorted(s, 0.9),
    p99: quantileSorted(s, 0.99),
    p999: quantileSorted(s, 0.999),
    max: s.length ? s[s.length - 1] : NaN,
  };
}

/** Points of an empirical CDF, thinned to at most `max` points (always keeping both ends). */
export function cdfPoints(values: number[], max = 300): Array<[number, number]> {
  const s = [...values].sort((a, b) => a - b);
  const n = s.length;
  if (n === 0) return [];
  const step = Math.max(1, Math.floor(n / max));
  const points: Array<[number, number]> = [];
  for (let i = 0; i < n; i += step) points.push([s[i], (i + 1) / n]);
  if (points[points.length - 1][1] !== 1) points.push([s[n - 1], 1]);
  return points;
}

/** Rounds for JSON (keeps reports small without losing meaning). */
export function round(value: number, digits = 3): number {
  if (!Number.isFinite(value)) return value;
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

export function roundAll<T>(value: T, digits = 3): T {
  if (typeof value === 'number') return round(value, digits) as T;
  if (Array.isArray(value)) return value.map((v) => roundAll(v, digits)) as T;
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = roundAll(v, digits);
    return out as T;
  }
  return value;
}

/** mulberry32: a small seeded PRNG, so a run's random choices can be repeated with --seed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A number for people: a few significant digits, no exponent for ordinary magnitudes. */
export function fmt(value: number | null | undefined, unit = ''): string {
  if (value === null || value === undefined || Number.isNaN(value)) return '–';
  if (!Number.isFinite(value)) return value > 0 ? '∞' : '-∞';
  const a = Math.abs(value);
  let text: string;
  if (a === 0) text = '0';
  else if (Number.isInteger(value) && a < 1e7) text = String(value);
  else if (a >= 1000) text = value.toFixed(0);
  else if (a >= 100) text = value.toFixed(0);
  else if (a >= 10) text = value.toFixed(1);
  else if (a >= 1) text = value.toFixed(2);
  else if (a >= 0.01) text = value.toFixed(3);
  else text = value.toPrecision(2);
  return unit ? `${text} ${unit}` : text;
}

/** "3.2×" style ratio text, or undefined when it cannot be computed. */
export function ratio(a: number, b: number): number | undefined {
  if (!Number.isFinite(a) || !Number.isFinite(b) || b === 0) return undefined;
  return a / b;
}

/** Sorted integers -> [[from, to], ...] (inclusive ranges). */
export function toRanges(sortedInts: number[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const v of sortedInts) {
    const last = out[out.length - 1];
    if (last && v === last[1] + 1) last[1] = v;
    else if (!last || v > last[1]) out.push([v, v]);
  }
  return out;
}

export function fromRanges(ranges: Array<[number, number]>): Set<number> {
  const s = new Set<number>();
  for (const [a, b] of ranges) for (let v = a; v <= b; v++) s.add(v);
  return s;
}

export function countBy<T>(items: T[], key: (t: T) => string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const it of items) {
    const k = key(it);
    out[k] = (out[k] ?? 0) + 1;
  }
  return out;
}

export function sum(values: number[]): number {
  return values.reduce((a, b) => a + b, 0);
}

export function plural(n: number, one: string, many = `${one}s`): string {
  return `${fmt(n)} ${n === 1 ? one : many}`;
}

/** The largest of many numbers (no argument-count limit, unlike Math.max(...xs)); `empty` if none. */
export function maxOf(values: Iterable<number>, empty = 0): number {
  let m = -Infinity;
  for (const v of values) if (v > m) m = v;
  return m === -Infinity ? empty : m;
}
