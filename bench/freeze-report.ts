/**
 * bench freeze's rows and what is printed from them (pure: unit-tested in
 * test/unit/bench-freeze-report.test.ts). A row is one measurement: a migration through godwit,
 * or CRIU alone (dump and restore of the same kind of workload on one host, called directly,
 * no godwit in the way): the floor godwit's freeze is compared with.
 */
import type { HopStep } from '../lab/hop.js';
import { CONCURRENT_STEP } from '../agent/step-timer.js';
import { lineChartSvg } from './line-chart.js';

export type FreezeKind = 'migration' | 'criu-alone';

/** The phases between lock and unlock, in order. */
export const FREEZE_PHASES = ['LOCK', 'STEER', 'DUMP', 'TRANSFER', 'RESTORE', 'UNLOCK'] as const;
export type FreezePhase = (typeof FREEZE_PHASES)[number];

export interface FreezeRow {
  kind: FreezeKind;
  connections: number;
  memoryMiB: number;
  postCopy: boolean;
  run: number;
  ok: boolean;
  error: string;
  /** Lock to unlock (migration); CRIU's dump + restore (criu-alone). */
  freezeMs: number;
  /** The CRIU processes as the agents timed them (start to exit), or as this bench did (criu-alone). */
  criuDumpMs: number;
  criuRestoreMs: number;
  /** freeze − CRIU dump − CRIU restore: what godwit adds. */
  overheadMs: number;
  /** 100 × overheadMs / (CRIU dump + CRIU restore). */
  overheadPct: number;
  /** Each phase inside the freeze, ms (migration). */
  phases: Partial<Record<FreezePhase, number>>;
  maxStallMs: number;
  /** Connections alive and checked after the move. */
  survived: number;
  bytesLost: number;
  /** The workload's memory verified after the move (null: the workload holds no test memory). */
  memoryIntact: boolean | null;
  /** Post-copy: from the dump to the last page on the target, ms (0 without post-copy). */
  lazyPagesMs: number;
  imageBytes: number;
  criuLogLevel: number;
  steps: HopStep[];
  at: string;
}

/** A row before anything is measured: not ok, every figure 0. */
export function emptyRow(r: Pick<FreezeRow, 'kind' | 'connections' | 'memoryMiB' | 'postCopy' | 'run' | 'criuLogLevel'>): FreezeRow {
  return {
    ...r,
    ok: false,
    error: '',
    freezeMs: 0,
    criuDumpMs: 0,
    criuRestoreMs: 0,
    overheadMs: 0,
    overheadPct: 0,
    phases: {},
    maxStallMs: 0,
    survived: 0,
    bytesLost: 0,
    memoryIntact: null,
    lazyPagesMs: 0,
    imageBytes: 0,
    steps: [],
    at: new Date().toISOString(),
  };
}

/** The freeze's figures of a row from its CRIU times (overhead and its share). */
export function withOverhead<T extends Pick<FreezeRow, 'freezeMs' | 'criuDumpMs' | 'criuRestoreMs'>>(r: T): T & Pick<FreezeRow, 'overheadMs' | 'overheadPct'> {
  const criu = r.criuDumpMs + r.criuRestoreMs;
  const overheadMs = r.freezeMs - criu;
  return { ...r, overheadMs, overheadPct: criu > 0 ? (100 * overheadMs) / criu : 0 };
}

/** Sum of the named steps' times in a phase (both hosts). */
export function stepMs(steps: readonly HopStep[], phase: string, names: readonly string[]): number {
  return steps.filter((s) => s.phase === phase && names.includes(s.step)).reduce((a, s) => a + s.ms, 0);
}

/** The agents' names for the CRIU processes of a dump and a restore (agent/service.ts), plain and post-copy. */
export const CRIU_DUMP_STEPS = ['criu dump', 'criu dump --lazy-pages'] as const;
export const CRIU_RESTORE_STEPS = ['criu restore', 'criu lazy-pages + restore'] as const;

export function median(xs: readonly number[]): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

const num = (x: number, digits = 0) => (Number.isFinite(x) ? x.toFixed(digits) : '-');

function table(head: string[], align: ('l' | 'r')[], rows: string[][]): string {
  const out = [`| ${head.join(' | ')} |`, `|${align.map((a) => (a === 'l' ? ':---' : '---:')).join('|')}|`];
  for (const r of rows) out.push(`| ${r.join(' | ')} |`);
  return out.join('\n');
}

/** One line per measurement. */
export function measurementTable(rows: readonly FreezeRow[]): string {
  return table(
    ['kind', 'conns', 'MiB', 'post-copy', 'run', 'result', 'freeze ms', 'CRIU dump ms', 'CRIU restore ms', 'overhead ms', 'overhead %', 'max stall ms', 'survived', 'lost B', 'memory', 'error'],
    ['l', 'r', 'r', 'l', 'r', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'l', 'l'],
    rows.map((r) => [
      r.kind,
      String(r.connections),
      String(r.memoryMiB),
      r.postCopy ? 'yes' : 'no',
      String(r.run),
      r.ok ? 'ok' : 'FAILED',
      num(r.freezeMs),
      num(r.criuDumpMs),
      num(r.criuRestoreMs),
      num(r.overheadMs),
      num(r.overheadPct),
      r.kind === 'migration' ? num(r.maxStallMs) : '-',
      r.kind === 'migration' ? `${r.survived}/${r.connections}` : '-',
      r.kind === 'migration' ? String(r.bytesLost) : '-',
      r.memoryIntact === null ? '-' : r.memoryIntact ? 'intact' : 'DAMAGED',
      r.error.slice(0, 80),
    ]),
  );
}

interface Group {
  connections: number;
  memoryMiB: number;
  postCopy: boolean;
  rows: FreezeRow[];
  alone: FreezeRow[];
}

/** Successful rows grouped by (connections, memory, post-copy), each with the CRIU-alone rows of its size. */
function groups(rows: readonly FreezeRow[]): Group[] {
  const out = new Map<string, Group>();
  const ok = rows.filter((r) => r.ok);
  for (const r of ok.filter((x) => x.kind === 'migration')) {
    const key = `${r.connections}/${r.memoryMiB}/${r.postCopy}`;
    let g = out.get(key);
    if (!g) {
      g = { connections: r.connections, memoryMiB: r.memoryMiB, postCopy: r.postCopy, rows: [], alone: ok.filter((a) => a.kind === 'criu-alone' && a.connections === r.connections && a.memoryMiB === r.memoryMiB) };
      out.set(key, g);
    }
    g.rows.push(r);
  }
  return [...out.values()].sort((a, b) => a.memoryMiB - b.memoryMiB || a.connections - b.connections || Number(a.postCopy) - Number(b.postCopy));
}

export const TARGETS = { overheadPct: 15, freezeMsAt1000: 400, postCopyRatio: 5 } as const;

/** Medians per size, against the targets. */
export function summaryTable(rows: readonly FreezeRow[]): string {
  const gs = groups(rows);
  const plain = (g: Group) => gs.find((x) => x.connections === g.connections && x.memoryMiB === g.memoryMiB && !x.postCopy);
  return table(
    ['conns', 'MiB', 'post-copy', 'runs', 'freeze ms', 'CRIU dump+restore ms', 'overhead %', `≤ ${TARGETS.overheadPct}%`, 'CRIU alone ms', 'max stall ms', 'freeze ÷ post-copy freeze', 'every page there ms', 'lost B', 'memory'],
    ['r', 'r', 'l', 'r', 'r', 'r', 'r', 'l', 'r', 'r', 'r', 'r', 'r', 'l'],
    gs.map((g) => {
      const freeze = median(g.rows.map((r) => r.freezeMs));
      const pct = median(g.rows.map((r) => r.overheadPct));
      const base = g.postCopy ? plain(g) : undefined;
      const ratio = base ? median(base.rows.map((r) => r.freezeMs)) / freeze : NaN;
      return [
        String(g.connections),
        String(g.memoryMiB),
        g.postCopy ? 'yes' : 'no',
        String(g.rows.length),
        num(freeze),
        num(median(g.rows.map((r) => r.criuDumpMs + r.criuRestoreMs))),
        num(pct),
        pct <= TARGETS.overheadPct ? 'met' : 'missed',
        num(median(g.alone.map((r) => r.freezeMs))),
        num(median(g.rows.map((r) => r.maxStallMs))),
        g.postCopy ? num(ratio, 1) : '',
        g.postCopy ? num(median(g.rows.map((r) => r.lazyPagesMs))) : '',
        String(g.rows.reduce((s, r) => s + r.bytesLost, 0)),
        g.rows.every((r) => r.memoryIntact === null) ? '-' : g.rows.every((r) => r.memoryIntact) ? 'intact' : 'DAMAGED',
      ];
    }),
  );
}

/**
 * Where the freeze went, per size: each phase inside the freeze with its steps (median ms over the
 * runs), the part of the phase no agent step accounts for (controller, RPC, scheduling), and the
 * time between phases (recording state, events).
 */
export function breakdownTable(rows: readonly FreezeRow[]): string {
  const out: string[] = [];
  for (const g of groups(rows)) {
    const lines: string[][] = [];
    const add = (what: string, values: number[]) => {
      const m = median(values);
      if (m >= 0.5) lines.push([what, num(m, 1)]);
    };
    let phasesTotal: number[] = g.rows.map(() => 0);
    for (const phase of FREEZE_PHASES) {
      const phaseMs = g.rows.map((r) => r.phases[phase] ?? 0);
      phasesTotal = phasesTotal.map((t, i) => t + (phaseMs[i] || 0));
      add(`**${phase}**`, phaseMs);
      const names = [...new Set(g.rows.flatMap((r) => r.steps.filter((s) => s.phase === phase).map((s) => `${s.host}: ${s.step}`)))];
      for (const n of names) add(`  ${n}`, g.rows.map((r) => r.steps.filter((s) => s.phase === phase && `${s.host}: ${s.step}` === n).reduce((a, s) => a + s.ms, 0)));
      add('  (no agent step: controller, RPC, waiting)', g.rows.map((r, i) => phaseMs[i] - busiestHost(r.steps, phase)));
    }
    add('**between phases** (state recorded, events)', g.rows.map((r, i) => r.freezeMs - phasesTotal[i]));
    add('**freeze**', g.rows.map((r) => r.freezeMs));
    out.push(`${g.connections} connections, ${g.memoryMiB} MiB, post-copy ${g.postCopy ? 'on' : 'off'} (median of ${g.rows.length})\n\n${table(['phase / step', 'ms'], ['l', 'r'], lines)}`);
  }
  return out.join('\n\n');
}

/** The largest sum of one host's steps in the phase (hosts run in parallel in LOCK; the target's transfer steps nest inside the source's). */
function busiestHost(steps: readonly HopStep[], phase: string): number {
  const per = new Map<string, number>();
  for (const s of steps) if (s.phase === phase && !s.step.startsWith(CONCURRENT_STEP)) per.set(s.host, (per.get(s.host) ?? 0) + s.ms);
  return Math.max(0, ...per.values());
}

/** Freeze against connections: godwit, its CRIU part, CRIU alone; one line per memory size and post-copy. */
export function freezeSvg(rows: readonly FreezeRow[]): string {
  const gs = groups(rows);
  const points = [...new Set(gs.map((g) => g.connections))].sort((a, b) => a - b);
  const colors = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#17becf', '#7f7f7f'];
  const series: { label: string; color: string; values: number[] }[] = [];
  const at = (pick: (g: Group) => number, mem: number, pc: boolean) =>
    points.map((n) => {
      const g = gs.find((x) => x.connections === n && x.memoryMiB === mem && x.postCopy === pc);
      return g ? pick(g) : NaN;
    });
  for (const mem of [...new Set(gs.map((g) => g.memoryMiB))].sort((a, b) => a - b)) {
    for (const pc of [false, true]) {
      if (!gs.some((g) => g.memoryMiB === mem && g.postCopy === pc)) continue;
      const tag = `${mem} MiB${pc ? ', post-copy' : ''}`;
      series.push({ label: `freeze (${tag})`, color: colors[series.length % colors.length], values: at((g) => median(g.rows.map((r) => r.freezeMs)), mem, pc) });
      if (!pc) {
        series.push({ label: `CRIU in it (${tag})`, color: colors[series.length % colors.length], values: at((g) => median(g.rows.map((r) => r.criuDumpMs + r.criuRestoreMs)), mem, pc) });
        series.push({ label: `CRIU alone (${mem} MiB)`, color: colors[series.length % colors.length], values: at((g) => median(g.alone.map((r) => r.freezeMs)), mem, pc) });
      }
    }
  }
  return lineChartSvg({
    title: 'Freeze against live connections (median)',
    points: points.length > 0 ? points : [0],
    xText: (x) => String(x),
    xLabel: 'live TCP connections',
    yLabel: 'ms',
    xScale: 'linear',
    series,
    targetMs: TARGETS.freezeMsAt1000,
    targetLabel: `target ${TARGETS.freezeMsAt1000} ms at 1,000`,
    pointTitle: (s, x, v) => `${s}, ${x} connections: ${v}`,
    rightMargin: 200,
  });
}
