/**
 * The pure half of `npm run bench -- steer-converge`: percentiles over ack latencies, the table,
 * the JSON line and the SVG plot. No I/O here (bench/steer-converge.ts runs the fleet).
 */
import { fmt, lineChartSvg } from './line-chart.js';

/** One agent's ack of one measured change. */
export interface AckSample {
  agents: number;
  change: number;
  generation: number;
  host: string;
  /** Controller accepted the change (KV stored it) -> the agent's kernel held it (its ack's timestamp). */
  latencyMs: number;
  /** The agent's own data-plane apply time within that. */
  applyMs: number;
}

export interface ConvergeRow {
  bench: 'steer-converge';
  agents: number;
  changes: number;
  /** Acks measured: agents x changes when every agent acked every change. */
  acks: number;
  /** Over every (change, agent) ack latency. */
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Per change, the slowest agent (the fleet converged): median and p99 over changes. */
  convergeP50Ms: number;
  convergeP99Ms: number;
  /** The agents' own apply time (median): the rest is NATS, the KV watch and the ack's way back. */
  applyP50Ms: number;
  /** Acks that never came within the bench's wait (0 when the fleet always converged). */
  missing: number;
  /** CPU time (user + system) per change: one agent's, the controller's, nats-server's. */
  agentMsPerApply?: number;
  /** One agent's CPU per second with no change going on (heartbeats, timers, GC). */
  agentIdleMsPerSec?: number;
  /** agentMsPerApply less that idle rate over the measured changes' time: the change's own cost. */
  agentNetMsPerApply?: number;
  controllerMsPerChange?: number;
  natsMsPerChange?: number;
  /** nice value nats-server and the controller ran at. */
  infraNice?: number;
  at: string;
}

/** Nearest-rank percentile (p in 0..100) of the values; NaN when there are none. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const s = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * s.length);
  return s[Math.min(s.length - 1, Math.max(0, rank - 1))];
}

export function summarize(agents: number, changes: number, samples: readonly AckSample[], at = new Date().toISOString()): ConvergeRow {
  const lat = samples.map((s) => s.latencyMs);
  const perChange = new Map<number, number>();
  for (const s of samples) perChange.set(s.change, Math.max(perChange.get(s.change) ?? 0, s.latencyMs));
  const converge = [...perChange.values()];
  const round = (v: number) => Math.round(v * 100) / 100;
  return {
    bench: 'steer-converge',
    agents,
    changes,
    acks: samples.length,
    p50Ms: round(percentile(lat, 50)),
    p99Ms: round(percentile(lat, 99)),
    maxMs: round(Math.max(...lat)),
    convergeP50Ms: round(percentile(converge, 50)),
    convergeP99Ms: round(percentile(converge, 99)),
    applyP50Ms: round(percentile(samples.map((s) => s.applyMs), 50)),
    missing: agents * changes - samples.length,
    at,
  };
}

const HEADER = ['agents', 'changes', 'acks', 'p50 ms', 'p99 ms', 'max ms', 'converged p50', 'converged p99', 'apply p50', 'agent CPU ms', 'agent net CPU ms', 'ctl CPU ms', 'nats CPU ms', 'missing'];

export function table(rows: readonly ConvergeRow[]): string {
  const body = rows.map((r) =>
    [r.agents, r.changes, r.acks, r.p50Ms, r.p99Ms, r.maxMs, r.convergeP50Ms, r.convergeP99Ms, r.applyP50Ms, r.agentMsPerApply, r.agentNetMsPerApply, r.controllerMsPerChange, r.natsMsPerChange, r.missing].map((v) =>
      typeof v === 'number' ? fmt(v) : '-',
    ),
  );
  const widths = HEADER.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padStart(widths[i])).join(' | ')} |`;
  return [line(HEADER), `|${widths.map((w) => '-'.repeat(w + 1) + ':').join('|')}|`, ...body.map(line)].join('\n');
}

const SERIES = [
  { key: 'p50Ms', label: 'p50', color: '#1b7837' },
  { key: 'p99Ms', label: 'p99', color: '#2166ac' },
  { key: 'maxMs', label: 'max', color: '#b2182b' },
] as const;

/** Ack latency (p50, p99, max) against the number of agents, with the p99 target as a dashed line. */
export function convergeSvg(rows: readonly ConvergeRow[], opts: { targetMs?: number; title?: string } = {}): string {
  const target = opts.targetMs ?? 100;
  return lineChartSvg({
    title: opts.title ?? 'Rule change accepted -> agent ack (kernel maps hold it)',
    points: rows.map((r) => r.agents),
    xText: String,
    xLabel: 'agents (each in its own network namespace)',
    yLabel: 'ack latency',
    xScale: 'linear',
    series: SERIES.map((s) => ({ label: s.label, color: s.color, values: rows.map((r) => r[s.key]) })),
    targetMs: target,
    targetLabel: `target p99 ${target} ms`,
    pointTitle: (series, n, v) => `${series} at ${n} agents: ${v} ms`,
  });
}

