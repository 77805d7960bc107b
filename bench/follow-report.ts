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
import { fmt, lineChartSvg } from './line-chart.js';

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

const SERIES = [
  { key: 'exportMs', label: 'export', color: '#2166ac' },
  { key: 'importMs', label: 'import', color: '#1b7837' },
  { key: 'totalMs', label: 'export + import', color: '#b2182b' },
] as const;

/** Export, import and their sum (ms) against entries (log scale), with the target as a dashed line. */
export function handoffSvg(rows: readonly HandoffRow[]): string {
  return lineChartSvg({
    title: 'Steering state handoff: export + import through the image file',
    points: rows.map((r) => r.entries),
    xText: (n) => n.toLocaleString('en-US'),
    xLabel: 'flow entries handed off (log scale)',
    xScale: 'log',
    series: SERIES.map((s) => ({ label: s.label, color: s.color, values: rows.map((r) => r[s.key]) })),
    targetMs: HANDOFF_TARGET_MS,
    targetLabel: `target ${HANDOFF_TARGET_MS} ms`,
    pointTitle: (series, n, v) => `${series} of ${n} entries: ${v} ms`,
    rightMargin: 150,
  });
}

