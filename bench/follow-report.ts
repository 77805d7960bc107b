/**
 * The pure half of `npm run bench -- follow` (bench/follow.ts): the rows each kind of
 * measurement yields, their summaries, the readable tables and the plot. No I/O here.
 *
 * Kinds: "handoff" (bench/follow-handoff.ts: a workload's steering map state exported from one
 * host's pinned maps, through the image's file, into another's) and "migration" (added by
 * bench/follow-migration.ts: migrations in the routed lab). A kind's rows go to stdout as JSON
 * lines with --json, one per measured size, with the fields issue 9 names first.
 */
import { median } from './lock-report.js';

/** Issue 9's target: 100,000 flow entries exported and imported within this. */
export const HANDOFF_TARGET_MS = 100;
export const HANDOFF_TARGET_ENTRIES = 100_000;

/** One export + import of one workload's steering state through the file. */
export interface HandoffRun {
  /** Flow entries of the workload on the source host (the handoff's size). */
  entries: number;
  /** Other entries beside them (another workload's), which must stay behind. */
  others: number;
  /** Reverse-NAT entries of the workload moved along. */
  rnat: number;
  run: number;
  /** exportWorkload (batch walks + selection + counters) and the file written. */
  exportMs: number;
  /** The file read and checked, and importWorkload (batch updates + counters). */
  importMs: number;
  /** The parts: maps read and selected / file written / file read + checked / maps written. */
  exportMapsMs: number;
  writeFileMs: number;
  readFileMs: number;
  importMapsMs: number;
  fileBytes: number;
  /**
   * CPU time (user + system, every thread of the bench process: syscalls and page faults
   * included) of the export and of the import. On a shared machine the wall times above grow
   * with the other tenants' load; these do not.
   */
  exportCpuMs: number;
  importCpuMs: number;
  /** Exported entries (flows + rnat) not on the target afterwards with the same value. */
  lost: number;
  /** Count and sha256 of the target's selected entries equal the source's, every section. */
  digestOk: boolean;
}

/** The `--json` line of one size: median times over its runs, and the worst loss. */
export interface HandoffRow {
  kind: 'handoff';
  entries: number;
  exportMs: number;
  importMs: number;
  lost: number;
  totalMs: number;
  /** The fastest run's export + import (a shared machine's noise inflates the median). */
  bestTotalMs: number;
  exportMapsMs: number;
  writeFileMs: number;
  readFileMs: number;
  importMapsMs: number;
  exportCpuMs: number;
  importCpuMs: number;
  fileBytes: number;
  rnat: number;
  others: number;
  runs: number;
  digestOk: boolean;
  at: string;
}

const round = (v: number) => Math.round(v * 100) / 100;

/** One row per size (ascending), from that size's runs. */
export function summarizeHandoff(runs: readonly HandoffRun[], at = new Date().toISOString()): HandoffRow[] {
  const sizes = [...new Set(runs.map((r) => r.entries))].sort((a, b) => a - b);
  return sizes.map((entries) => {
    const rs = runs.filter((r) => r.entries === entries);
    const med = (f: (r: HandoffRun) => number) => round(median(rs.map(f))!);
    return {
      kind: 'handoff',
      entries,
      exportMs: med((r) => r.exportMs),
      importMs: med((r) => r.importMs),
      lost: Math.max(...rs.map((r) => r.lost)),
      totalMs: med((r) => r.exportMs + r.importMs),
      bestTotalMs: round(Math.min(...rs.map((r) => r.exportMs + r.importMs))),
      exportMapsMs: med((r) => r.exportMapsMs),
      writeFileMs: med((r) => r.writeFileMs),
      readFileMs: med((r) => r.readFileMs),
      importMapsMs: med((r) => r.importMapsMs),
      exportCpuMs: med((r) => r.exportCpuMs),
      importCpuMs: med((r) => r.importCpuMs),
      fileBytes: rs[0].fileBytes,
      rnat: rs[0].rnat,
      others: rs[0].others,
      runs: rs.length,
      digestOk: rs.every((r) => r.digestOk),
      at,
    };
  });
}

/** Whether a size meets the target (sizes other than the target's are scaled to it linearly, for a hint only). */
export function handoffVerdict(r: HandoffRow): string {
  if (r.lost > 0 || !r.digestOk) return `LOST ${r.lost}`;
  if (r.entries !== HANDOFF_TARGET_ENTRIES) return '-';
  return r.totalMs <= HANDOFF_TARGET_MS ? `ok (<= ${HANDOFF_TARGET_MS} ms)` : `missed (> ${HANDOFF_TARGET_MS} ms)`;
}

const HANDOFF_HEADER = ['entries', 'export ms', 'import ms', 'total ms', 'best total', 'maps read', 'file write', 'file read', 'maps write', 'export CPU', 'import CPU', 'file KB', 'lost', 'digest', 'target'];

export function handoffTable(rows: readonly HandoffRow[]): string {
  const body = rows.map((r) => [
    String(r.entries), fmt(r.exportMs), fmt(r.importMs), fmt(r.totalMs), fmt(r.bestTotalMs), fmt(r.exportMapsMs), fmt(r.writeFileMs), fmt(r.readFileMs), fmt(r.importMapsMs),
    fmt(r.exportCpuMs), fmt(r.importCpuMs), fmt(r.fileBytes / 1024), String(r.lost), r.digestOk ? 'equal' : 'DIFFERS', handoffVerdict(r),
  ]);
  return markdown(HANDOFF_HEADER, body);
}

/** A Markdown table, numbers right-aligned. */
export function markdown(header: readonly string[], body: readonly string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: readonly string[]) => `| ${cells.map((c, i) => c.padStart(widths[i])).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 1) + ':').join('|')}|`, ...body.map(line)].join('\n');
}

function fmt(v: number): string {
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

const SERIES = [
  { key: 'exportMs', label: 'export', color: '#2166ac' },
  { key: 'importMs', label: 'import', color: '#1b7837' },
  { key: 'totalMs', label: 'export + import', color: '#b2182b' },
] as const;

/** Export, import and their sum (ms) against entries (log scale), with the target as a dashed line. */
export function handoffSvg(rows: readonly HandoffRow[]): string {
  const W = 720;
  const H = 420;
  const m = { left: 70, right: 150, top: 40, bottom: 52 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const sorted = [...rows].sort((a, b) => a.entries - b.entries);
  const top = niceCeil(Math.max(HANDOFF_TARGET_MS * 1.2, ...sorted.map((r) => r.totalMs)));
  const lo = Math.log10(Math.max(1, Math.min(...sorted.map((r) => r.entries), 1000)));
  const hi = Math.max(lo + 1, Math.log10(Math.max(...sorted.map((r) => r.entries), 1)));
  const x = (n: number) => m.left + ((Math.log10(n) - lo) / (hi - lo)) * pw;
  const y = (v: number) => m.top + ph - (v / top) * ph;
  const p: string[] = [];
  p.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  p.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  p.push(`<text x="${m.left + pw / 2}" y="22" text-anchor="middle" font-size="15">${esc('Steering state handoff: export + import through the image file')}</text>`);
  for (let i = 0; i <= 5; i++) {
    const v = (top / 5) * i;
    p.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${y(v).toFixed(1)}" y2="${y(v).toFixed(1)}" stroke="#e3e3e3"/>`);
    p.push(`<text x="${m.left - 6}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end">${fmt(v)} ms</text>`);
  }
  for (const r of sorted) p.push(`<text x="${x(r.entries).toFixed(1)}" y="${m.top + ph + 18}" text-anchor="middle">${r.entries.toLocaleString('en-US')}</text>`);
  p.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${m.top + ph}" y2="${m.top + ph}" stroke="black"/>`);
  p.push(`<line x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${m.top + ph}" stroke="black"/>`);
  p.push(`<text x="${m.left + pw / 2}" y="${H - 12}" text-anchor="middle">flow entries handed off (log scale)</text>`);
  p.push(`<line data-target="${HANDOFF_TARGET_MS}" x1="${m.left}" x2="${m.left + pw}" y1="${y(HANDOFF_TARGET_MS).toFixed(1)}" y2="${y(HANDOFF_TARGET_MS).toFixed(1)}" stroke="#555" stroke-dasharray="6 4"/>`);
  p.push(`<text x="${m.left + pw + 6}" y="${(y(HANDOFF_TARGET_MS) + 4).toFixed(1)}">target ${HANDOFF_TARGET_MS} ms</text>`);
  let legendY = m.top + 10;
  for (const s of SERIES) {
    p.push(`<polyline data-series="${s.label}" fill="none" stroke="${s.color}" stroke-width="2" points="${sorted.map((r) => `${x(r.entries).toFixed(1)},${y(r[s.key]).toFixed(1)}`).join(' ')}"/>`);
    for (const r of sorted) p.push(`<circle cx="${x(r.entries).toFixed(1)}" cy="${y(r[s.key]).toFixed(1)}" r="3.5" fill="${s.color}"><title>${s.label} of ${r.entries} entries: ${fmt(r[s.key])} ms</title></circle>`);
    p.push(`<line x1="${m.left + pw + 14}" x2="${m.left + pw + 38}" y1="${legendY + 30}" y2="${legendY + 30}" stroke="${s.color}" stroke-width="2"/>`);
    p.push(`<text x="${m.left + pw + 44}" y="${legendY + 34}">${s.label}</text>`);
    legendY += 20;
  }
  p.push('</svg>');
  return p.join('\n') + '\n';
}

/** 1, 2, 5 x 10^k at or above v. */
function niceCeil(v: number): number {
  const d = 10 ** Math.floor(Math.log10(v));
  for (const k of [1, 2, 5, 10]) if (k * d >= v) return k * d;
  return 10 * d;
}
