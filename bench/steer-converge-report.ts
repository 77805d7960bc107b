/**
 * The pure half of `npm run bench -- steer-converge`: percentiles over ack latencies, the table,
 * the JSON line and the SVG plot. No I/O here (bench/steer-converge.ts runs the fleet).
 */

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

function fmt(v: number): string {
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

const SERIES = [
  { key: 'p50Ms', label: 'p50', color: '#1b7837' },
  { key: 'p99Ms', label: 'p99', color: '#2166ac' },
  { key: 'maxMs', label: 'max', color: '#b2182b' },
] as const;

/** Ack latency (p50, p99, max) against the number of agents, with the p99 target as a dashed line. */
export function convergeSvg(rows: readonly ConvergeRow[], opts: { targetMs?: number; title?: string } = {}): string {
  const W = 720;
  const H = 420;
  const m = { left: 70, right: 130, top: 40, bottom: 52 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const target = opts.targetMs ?? 100;
  const sorted = [...rows].sort((a, b) => a.agents - b.agents);
  const values = sorted.flatMap((r) => SERIES.map((s) => r[s.key])).filter((v) => Number.isFinite(v));
  const top = niceCeil(Math.max(target * 1.2, ...values));
  const maxN = Math.max(...sorted.map((r) => r.agents), 1);
  const x = (n: number) => m.left + (n / maxN) * pw;
  const y = (v: number) => m.top + ph - (v / top) * ph;
  const p: string[] = [];
  p.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  p.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  p.push(`<text x="${m.left + pw / 2}" y="22" text-anchor="middle" font-size="15">${esc(opts.title ?? 'Rule change accepted -> agent ack (kernel maps hold it)')}</text>`);
  for (let i = 0; i <= 5; i++) {
    const v = (top / 5) * i;
    p.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${y(v).toFixed(1)}" y2="${y(v).toFixed(1)}" stroke="#e3e3e3"/>`);
    p.push(`<text x="${m.left - 6}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end">${fmt(v)} ms</text>`);
  }
  for (const r of sorted) p.push(`<text x="${x(r.agents).toFixed(1)}" y="${m.top + ph + 18}" text-anchor="middle">${r.agents}</text>`);
  p.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${m.top + ph}" y2="${m.top + ph}" stroke="black"/>`);
  p.push(`<line x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${m.top + ph}" stroke="black"/>`);
  p.push(`<text x="${m.left + pw / 2}" y="${H - 12}" text-anchor="middle">agents (each in its own network namespace)</text>`);
  p.push(`<text transform="translate(16 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle">ack latency</text>`);
  p.push(`<line data-target="${target}" x1="${m.left}" x2="${m.left + pw}" y1="${y(target).toFixed(1)}" y2="${y(target).toFixed(1)}" stroke="#555" stroke-dasharray="6 4"/>`);
  p.push(`<text x="${m.left + pw + 6}" y="${(y(target) + 4).toFixed(1)}">target p99 ${target} ms</text>`);
  let legendY = m.top + 10;
  for (const s of SERIES) {
    const pts = sorted.filter((r) => Number.isFinite(r[s.key]));
    p.push(`<polyline data-series="${s.label}" fill="none" stroke="${s.color}" stroke-width="2" points="${pts.map((r) => `${x(r.agents).toFixed(1)},${y(r[s.key]).toFixed(1)}`).join(' ')}"/>`);
    for (const r of pts) p.push(`<circle cx="${x(r.agents).toFixed(1)}" cy="${y(r[s.key]).toFixed(1)}" r="3.5" fill="${s.color}"><title>${s.label} at ${r.agents} agents: ${fmt(r[s.key])} ms</title></circle>`);
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
  for (const m of [1, 2, 5, 10]) if (m * d >= v) return m * d;
  return 10 * d;
}
