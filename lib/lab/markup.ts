// HTML fragments shared by the experiments' report sections.

import { esc } from './svg';
import { fmt } from './util';

export type Cell = string | number | null | undefined | { html: string } | { text: string; cls: string };

function cell(c: Cell): string {
  if (c === null || c === undefined) return '<td class="na">–</td>';
  if (typeof c === 'number') return `<td class="num">${esc(fmt(c))}</td>`;
  if (typeof c === 'string') return `<td>${esc(c)}</td>`;
  if ('html' in c) return `<td>${c.html}</td>`;
  return `<td class="${esc(c.cls)}">${esc(c.text)}</td>`;
}

export function table(headers: string[], rows: Cell[][], caption?: string): string {
  return (
    `<table>${caption ? `<caption>${esc(caption)}</caption>` : ''}<thead><tr>${headers.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead>` +
    `<tbody>${rows.map((r) => `<tr>${r.map(cell).join('')}</tr>`).join('')}</tbody></table>`
  );
}

/** A cell marked good (0 of something bad) or bad (more than 0). */
export function zeroGood(n: number | null | undefined): Cell {
  if (n === null || n === undefined || !Number.isFinite(n)) return null;
  return { text: fmt(n), cls: n === 0 ? 'num good' : 'num bad' };
}

export function figure(svg: string, caption: string): string {
  return `<figure>${svg}<figcaption>${esc(caption)}</figcaption></figure>`;
}

export function para(text: string): string {
  return `<p>${esc(text)}</p>`;
}
