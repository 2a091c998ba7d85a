// report.html (self-contained: inline CSS and SVG, no scripts) and the terminal summary.

import { breakdownBars } from './experiments/breakdown';
import { figure } from './markup';
import { esc } from './svg';
import type { ExperimentReport, Headline, LabReport } from './types';
import { fmt } from './util';

export interface Renderers {
  [name: string]: (r: ExperimentReport) => string;
}

function verdict(h: Headline): '' | 'better' | 'worse' | 'same' {
  if (h.kvfs === null || h.local === null || !Number.isFinite(h.kvfs) || !Number.isFinite(h.local)) return '';
  if (h.kvfs === h.local) return 'same';
  const kvfsBetter = h.better === 'lower' ? h.kvfs < h.local : h.kvfs > h.local;
  return kvfsBetter ? 'better' : 'worse';
}

const CSS = `
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:0 0 6px}
.meta{color:#555;font-size:12px;margin-bottom:12px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:14px 18px;margin:18px 0}
table{border-collapse:collapse;font-size:12px;margin:10px 0;width:100%}
th,td{border-bottom:1px solid #e3e3e3;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f2f2f2;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.na{color:#aaa;text-align:center}
.good{color:#1e7d3c;font-weight:600}.bad{color:#b1271b;font-weight:600}
td.better{background:#e8f6ec}td.worse{background:#fbeaea}
.finding{border-left:4px solid #d95f02;background:#fff7f0;padding:8px 12px;margin:8px 0;font-size:14px}
.question{color:#444;font-style:italic;margin:2px 0 8px}
.status-failed{border-color:#b1271b}.status-skipped{opacity:.8}
.error{color:#b1271b;white-space:pre-wrap;font-family:monospace;font-size:12px}
figure{margin:10px 0}figcaption{font-size:12px;color:#555}
details{margin:6px 0;font-size:12px}pre{white-space:pre-wrap;font-size:11px;background:#f6f6f6;padding:6px}
.summary td.finding-cell{font-size:12px;color:#333}
.how{font-size:13px;color:#333}
nav a{margin-right:10px;font-size:13px}
`;

export function renderHtml(report: LabReport, renderers: Renderers): string {
  const exps = report.order.map((n) => report.experiments[n]).filter((e): e is ExperimentReport => Boolean(e));
  const summaryRows = exps
    .map((e) => {
      const heads = e.headline.length ? e.headline : [{ label: e.status === 'ok' ? '—' : e.status, unit: '', kvfs: null, local: null, better: 'lower' as const }];
      return heads
        .map((h, i) => {
          const v = verdict(h);
          const first = i === 0;
          return (
            `<tr>${first ? `<td rowspan="${heads.length}"><a href="#${e.name}">${esc(e.title)}</a></td>` : ''}` +
            `<td>${esc(h.label)}${h.unit ? ` <span style="color:#777">(${esc(h.unit)})</span>` : ''}</td>` +
            `<td class="num ${v}">${esc(fmt(h.kvfs))}</td><td class="num">${esc(fmt(h.local))}</td>` +
            `${first ? `<td rowspan="${heads.length}" class="finding-cell">${esc(e.status === 'ok' ? e.finding : `${e.status}: ${e.error ?? ''}`)}</td>` : ''}</tr>`
          );
        })
        .join('');
    })
    .join('');
  const sections = exps
    .map((e) => {
      let body = '';
      if (e.status === 'ok') {
        try {
          body = renderers[e.name]?.(e) ?? '';
        } catch (err) {
          body = `<p class="error">could not draw this section: ${esc((err as Error).message)}</p>`;
        }
      }
      const own = e.name !== 'breakdown' && e.breakdown.length ? figure(breakdownBars(e.breakdown, false), 'Where the time went in the kvfs daemons during each phase (etcd / Redis / daemon + FUSE path).') : '';
      return (
        `<section id="${e.name}" class="status-${e.status}"><h2>${esc(e.title)}</h2><p class="question">${esc(e.question)}</p>` +
        (e.status === 'ok' ? `<div class="finding">${esc(e.finding)}</div>` : `<p class="error">${esc(e.status)}: ${esc(e.error ?? '')}</p>`) +
        body +
        own +
        (e.notes.length ? `<details><summary>notes</summary><ul>${e.notes.map((n) => `<li>${esc(n)}</li>`).join('')}</ul></details>` : '') +
        `<details><summary>configuration (${fmt(e.seconds)} s)</summary><pre>${esc(JSON.stringify(e.config, null, 2))}</pre></details></section>`
      );
    })
    .join('\n');
  const m = report.machine as { cpus?: number; cpuModel?: string; memoryBytes?: number; kernel?: string; node?: string; loadAverageAtStart?: number[]; loadAverageAtEnd?: number[] };
  const s = report.servers as { meta?: string; data?: string; etcdVersion?: string; redisVersion?: string; redisAppendfsync?: string; started?: boolean };
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kvfs lab report</title><meta name="viewport" content="width=device-width,initial-scale=1"><style>${CSS}</style></head>
<body><main>
<h1>kvfs lab: where consistency and latency break down</h1>
<div class="meta">${esc(report.startedAt)} · ${fmt(report.seconds)} s · <code>${esc(report.command)}</code>${report.quick ? ' · <b>quick run</b> (fewer iterations)' : ''} · seed ${report.seed}<br>
${esc(`${m.cpus} × ${m.cpuModel}, ${fmt((m.memoryBytes ?? 0) / 2 ** 30)} GiB, Linux ${m.kernel}, Node ${m.node}, load average ${(m.loadAverageAtStart ?? []).join(' ')} at the start${m.loadAverageAtEnd ? `, ${m.loadAverageAtEnd.join(' ')} at the end` : ''}`)}<br>
${esc(`metadata ${s.meta} (etcd ${s.etcdVersion ?? '?'}), blocks ${s.data} (Redis ${s.redisVersion ?? '?'}${s.redisAppendfsync ? `, appendfsync ${s.redisAppendfsync}` : ''})${s.started ? ', both started by the lab on loopback' : ''}; local baseline: ${report.local.fstype} (${report.local.device}) at ${report.local.dir}`)}</div>
<nav>${exps.map((e) => `<a href="#${e.name}">${esc(e.name)}</a>`).join('')}</nav>
<section id="summary"><h2>Summary: kvfs beside the local disk</h2>
<table class="summary"><colgroup><col style="width:12%"><col style="width:22%"><col style="width:8%"><col style="width:8%"><col></colgroup><thead><tr><th>experiment</th><th>measure</th><th>kvfs</th><th>local disk</th><th>finding (from the numbers below)</th></tr></thead><tbody>${summaryRows}</tbody></table>
<p class="how">How to read it: each row puts one kvfs figure beside the same workload on a directory of the local disk (green: kvfs did better, red: worse; where kvfs uses two mounts, the local figure has the same processes sharing one local directory, as on one host). Latencies are milliseconds measured by the application; "lost" counts are things the application was told had succeeded and that were not there afterwards. Every experiment below has its charts, its table, its exact configuration, and where the time went inside the kvfs daemons (etcd, Redis, or the daemon and FUSE path).</p>
</section>
${sections}
</main></body></html>
`;
}

function pad(text: string, n: number): string {
  return text.length >= n ? text.slice(0, n) : text + ' '.repeat(n - text.length);
}

function wrap(text: string, width: number, indent: string): string {
  const words = text.split(' ');
  const lines: string[] = [];
  let line = '';
  for (const w of words) {
    if (line && line.length + 1 + w.length > width) {
      lines.push(line);
      line = w;
    } else line = line ? `${line} ${w}` : w;
  }
  if (line) lines.push(line);
  return lines.map((l) => indent + l).join('\n');
}

export function terminalSummary(report: LabReport): string {
  const out: string[] = [];
  out.push(`${pad('experiment', 11)} ${pad('measure', 60)} ${pad('kvfs', 10)} ${pad('local', 10)}`);
  out.push('-'.repeat(94));
  const exps = report.order.map((n) => report.experiments[n]).filter((e): e is ExperimentReport => Boolean(e));
  for (const e of exps) {
    if (e.status !== 'ok') {
      out.push(`${pad(e.name, 11)} ${e.status}: ${e.error ?? ''}`.slice(0, 200));
      continue;
    }
    e.headline.forEach((h, i) => {
      out.push(`${pad(i === 0 ? e.name : '', 11)} ${pad(`${h.label}${h.unit ? ` (${h.unit})` : ''}`, 60)} ${pad(fmt(h.kvfs), 10)} ${pad(fmt(h.local), 10)}`);
    });
  }
  out.push('');
  out.push('Findings:');
  for (const e of exps) if (e.status === 'ok') out.push(wrap(`${e.name}: ${e.finding}`, 100, '  '));
  return out.join('\n');
}
