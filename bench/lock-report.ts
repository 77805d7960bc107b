/**
 * The pure half of `npm run bench -- lock`: the measurement record, medians and freeze ratios,
 * the Markdown tables and the SVG plot. No I/O here (bench/lock.ts runs the migrations).
 */

import type { PhaseTimes } from '../lab/hop.js';

export const LOCK_MODES = ['ebpf', 'iptables', 'nftables'] as const;
export type BenchMode = (typeof LOCK_MODES)[number];
/** tls: the fleet as it runs (mutual TLS, authorization, NATS users); insecure: every part with --insecure. */
export const SECURITY_SETTINGS = ['tls', 'insecure'] as const;
export type BenchSecurity = (typeof SECURITY_SETTINGS)[number];

/** One migration of one workload holding `connections` live connections under one lock mode. */
/** freezeMs is 0 when the migration failed before unlocking. */
export interface LockMeasurement extends PhaseTimes {
  mode: BenchMode;
  connections: number;
  run: number;
  ok: boolean;
  /** The migration's error (FAILED), or what went wrong around it; '' when ok. */
  error: string;
  phase: string;
  failedPhase: string;
  migrationId: string;
  /** Longest time any client connection waited for its echo, around the migration. */
  maxStallMs: number;
  /** Client connections still open after the migration (and the drain that follows it); 0 when the workload was lost. */
  survived: number;
  /** The workload runs (on the target, or back on the source) after the migration. */
  workloadRunning: boolean;
  bytesLost: number;
  bytesDuplicated: number;
  corrupted: number;
  imageBytes: number;
  /** EBPF: stopped packets delivered right after unlock (each connection's data joined). */
  deliveredPackets: number;
  /** Rules, tables or lock entries of the migration found on either host afterwards (then removed). */
  leftovers: number;
  /** The lab's security (absent in rows from before it was measured: those ran insecure). */
  security?: BenchSecurity;
  at: string;
}

export function median(xs: readonly number[]): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** How many times longer the other mode's freeze is than eBPF's (undefined if either is unknown or eBPF's is 0). */
export function freezeRatio(ebpfMs: number | undefined, otherMs: number | undefined): number | undefined {
  if (ebpfMs === undefined || otherMs === undefined || !(ebpfMs > 0)) return undefined;
  return otherMs / ebpfMs;
}

export interface ModeSummary {
  runs: number;
  ok: number;
  freezeMs?: number;
  maxStallMs?: number;
  survived?: number;
  /** First error of a failed run. */
  error?: string;
}

export interface SummaryRow {
  connections: number;
  modes: Partial<Record<BenchMode, ModeSummary>>;
  /** iptables freeze ÷ eBPF freeze (medians of successful runs). */
  iptablesRatio?: number;
  nftablesRatio?: number;
}

/** Per connection count: per mode, medians over the successful runs; and the freeze ratios. */
export function summarize(rows: readonly LockMeasurement[]): SummaryRow[] {
  const counts = [...new Set(rows.map((r) => r.connections))].sort((a, b) => a - b);
  return counts.map((connections) => {
    const modes: Partial<Record<BenchMode, ModeSummary>> = {};
    for (const mode of LOCK_MODES) {
      const all = rows.filter((r) => r.connections === connections && r.mode === mode);
      if (all.length === 0) continue;
      const ok = all.filter((r) => r.ok);
      const failed = all.find((r) => !r.ok);
      modes[mode] = {
        runs: all.length,
        ok: ok.length,
        freezeMs: median(ok.map((r) => r.freezeMs)),
        maxStallMs: median(ok.map((r) => r.maxStallMs)),
        survived: median(ok.map((r) => r.survived)),
        ...(failed ? { error: failed.error } : {}),
      };
    }
    return {
      connections,
      modes,
      iptablesRatio: freezeRatio(modes.ebpf?.freezeMs, modes.iptables?.freezeMs),
      nftablesRatio: freezeRatio(modes.ebpf?.freezeMs, modes.nftables?.freezeMs),
    };
  });
}

function markdown(header: string[], rows: string[][], rightAlign: boolean[]): string {
  const width = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => '| ' + cells.map((c, i) => (rightAlign[i] ? c.padStart(width[i]) : c.padEnd(width[i]))).join(' | ') + ' |';
  const rule = '|' + width.map((w, i) => (rightAlign[i] ? '-'.repeat(w + 1) + ':' : ':' + '-'.repeat(w + 1))).join('|') + '|';
  return [line(header), rule, ...rows.map(line)].join('\n');
}

const ms = (n: number | undefined) => (n === undefined ? '-' : n >= 100 ? n.toFixed(0) : n.toFixed(1));
const ratio = (n: number | undefined) => (n === undefined ? '-' : `${n >= 10 ? n.toFixed(0) : n.toFixed(1)}x`);
/** One line of an error, short enough for a table cell: its start (where) and its end (the cause). */
export function shortError(error: string, max = 160): string {
  const one = error.replace(/\s+/g, ' ').replace(/\|/g, '/').trim();
  if (one.length <= max) return one;
  const head = Math.floor(max * 0.35);
  return one.slice(0, head) + '…' + one.slice(one.length - (max - head - 1));
}

/**
 * What security costs: per connection count and lock mode, the median freeze (successful runs)
 * with mutual TLS and without, and how much longer the TLS one is.
 */
export function securityTable(rows: readonly LockMeasurement[]): string {
  const header = ['N', 'mode', 'tls freeze ms', 'insecure freeze ms', 'tls vs insecure', 'tls runs ok', 'insecure runs ok'];
  const body: string[][] = [];
  for (const n of [...new Set(rows.map((r) => r.connections))].sort((a, b) => a - b)) {
    for (const mode of LOCK_MODES) {
      const of = (sec: BenchSecurity) => rows.filter((r) => r.connections === n && r.mode === mode && (r.security ?? 'insecure') === sec);
      const tls = of('tls');
      const plain = of('insecure');
      if (tls.length === 0 && plain.length === 0) continue;
      const t = median(tls.filter((r) => r.ok).map((r) => r.freezeMs));
      const p = median(plain.filter((r) => r.ok).map((r) => r.freezeMs));
      const delta = t !== undefined && p !== undefined && p > 0 ? `${t >= p ? '+' : ''}${(((t - p) / p) * 100).toFixed(1)}%` : '-';
      body.push([String(n), mode, ms(t), ms(p), delta, `${tls.filter((r) => r.ok).length}/${tls.length}`, `${plain.filter((r) => r.ok).length}/${plain.length}`]);
    }
  }
  return markdown(header, body, [true, false, true, true, true, true, true]);
}

/** Every measurement, one row each; a failed one says why. */
export function measurementTable(rows: readonly LockMeasurement[]): string {
  const header = ['N', 'mode', 'security', 'run', 'result', 'lock ms', 'dump ms', 'transfer ms', 'restore ms', 'unlock ms', 'freeze ms', 'max stall ms', 'survived', 'lost B', 'dup B', 'error'];
  const right = [true, false, false, true, false, true, true, true, true, true, true, true, true, true, true, false];
  const body = rows.map((r) => [
    String(r.connections),
    r.mode,
    r.security ?? 'insecure',
    String(r.run),
    r.ok ? 'ok' : `FAILED${r.failedPhase && r.failedPhase !== 'PHASE_UNSPECIFIED' ? ` (${r.failedPhase})` : ''}`,
    ms(r.lockMs),
    ms(r.dumpMs),
    ms(r.transferMs),
    ms(r.restoreMs),
    ms(r.unlockMs),
    r.ok ? ms(r.freezeMs) : '-',
    ms(r.maxStallMs),
    `${r.survived}/${r.connections}`,
    String(r.bytesLost),
    String(r.bytesDuplicated),
    r.ok ? (r.leftovers ? `${r.leftovers} leftovers` : '') : `${r.workloadRunning ? '' : 'WORKLOAD LOST: '}${shortError(r.error)}`,
  ]);
  return markdown(header, body, right);
}

/** Per connection count: median freeze per mode and how many times eBPF's the CRIU locks' are. */
export function summaryTable(rows: readonly LockMeasurement[]): string {
  const header = ['N', 'ebpf freeze ms', 'iptables freeze ms', 'nftables freeze ms', 'iptables/ebpf', 'nftables/ebpf', 'ebpf stall ms', 'iptables stall ms', 'nftables stall ms'];
  const cell = (s: ModeSummary | undefined, pick: (s: ModeSummary) => number | undefined) => {
    if (!s) return '-';
    if (s.ok === 0) return `failed ${s.runs}/${s.runs}`;
    const v = ms(pick(s));
    return s.ok < s.runs ? `${v} (${s.runs - s.ok} failed)` : v;
  };
  const body = summarize(rows).map((r) => [
    String(r.connections),
    cell(r.modes.ebpf, (s) => s.freezeMs),
    cell(r.modes.iptables, (s) => s.freezeMs),
    cell(r.modes.nftables, (s) => s.freezeMs),
    ratio(r.iptablesRatio),
    ratio(r.nftablesRatio),
    cell(r.modes.ebpf, (s) => s.maxStallMs),
    cell(r.modes.iptables, (s) => s.maxStallMs),
    cell(r.modes.nftables, (s) => s.maxStallMs),
  ]);
  return markdown(header, body, header.map(() => true));
}

// ---- the plot ----

const COLORS: Record<BenchMode, string> = { ebpf: '#1b7837', iptables: '#b2182b', nftables: '#2166ac' };

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** Tick values for a log axis: 1, 2, 5 per decade within [lo, hi]. */
export function logTicks(lo: number, hi: number): number[] {
  const out: number[] = [];
  for (let d = Math.floor(Math.log10(lo)); d <= Math.ceil(Math.log10(hi)); d++)
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** d;
      if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v);
    }
  return out;
}

function niceMs(v: number): string {
  if (v >= 1000) return `${v / 1000} s`;
  return `${v} ms`;
}

/**
 * Freeze (median of successful runs) against connections, one polyline per mode, log-scale y.
 * A connection count where every run of a mode failed is drawn as a cross at the top, labelled.
 */
export function freezeSvg(rows: readonly LockMeasurement[], opts: { width?: number; height?: number; title?: string } = {}): string {
  const W = opts.width ?? 760;
  const H = opts.height ?? 460;
  const m = { left: 78, right: 150, top: 40, bottom: 56 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const summary = summarize(rows);
  const ns = summary.map((s) => s.connections);
  const values = summary.flatMap((s) => LOCK_MODES.map((mode) => s.modes[mode]?.freezeMs).filter((v): v is number => v !== undefined && v > 0));
  const lo = 10 ** Math.floor(Math.log10(Math.min(...values, 100)));
  const hi = 10 ** Math.ceil(Math.log10(Math.max(...values, 1000)));
  const maxN = Math.max(...ns, 1);
  const x = (n: number) => m.left + (n / maxN) * pw;
  const y = (v: number) => m.top + ph - ((Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * ph;
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  parts.push(`<text x="${m.left + pw / 2}" y="22" text-anchor="middle" font-size="15">${esc(opts.title ?? 'Freeze (lock to unlock) vs live connections, by lock mode')}</text>`);
  // Grid and axes.
  for (const t of logTicks(lo, hi)) {
    parts.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${y(t).toFixed(1)}" y2="${y(t).toFixed(1)}" stroke="#e3e3e3"/>`);
    parts.push(`<text x="${m.left - 6}" y="${(y(t) + 4).toFixed(1)}" text-anchor="end">${niceMs(t)}</text>`);
  }
  for (const n of ns) {
    parts.push(`<line x1="${x(n).toFixed(1)}" x2="${x(n).toFixed(1)}" y1="${m.top}" y2="${m.top + ph}" stroke="#f0f0f0"/>`);
    parts.push(`<text x="${x(n).toFixed(1)}" y="${m.top + ph + 18}" text-anchor="middle">${n}</text>`);
  }
  parts.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${m.top + ph}" y2="${m.top + ph}" stroke="black"/>`);
  parts.push(`<line x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${m.top + ph}" stroke="black"/>`);
  parts.push(`<text x="${m.left + pw / 2}" y="${H - 14}" text-anchor="middle">live TCP connections held by the workload</text>`);
  parts.push(`<text transform="translate(18 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle">freeze (log scale)</text>`);
  // One polyline per mode; failures as crosses on the top edge.
  let legendY = m.top + 10;
  for (const mode of LOCK_MODES) {
    const pts = summary
      .map((s) => ({ n: s.connections, v: s.modes[mode]?.freezeMs }))
      .filter((p): p is { n: number; v: number } => p.v !== undefined && p.v > 0);
    const failed = summary.filter((s) => s.modes[mode] && s.modes[mode]!.ok === 0).map((s) => s.connections);
    if (pts.length === 0 && failed.length === 0) continue;
    const color = COLORS[mode];
    if (pts.length > 0) {
      parts.push(`<polyline data-mode="${mode}" fill="none" stroke="${color}" stroke-width="2" points="${pts.map((p) => `${x(p.n).toFixed(1)},${y(p.v).toFixed(1)}`).join(' ')}"/>`);
      for (const p of pts) parts.push(`<circle cx="${x(p.n).toFixed(1)}" cy="${y(p.v).toFixed(1)}" r="3.5" fill="${color}"><title>${mode} N=${p.n}: ${p.v.toFixed(0)} ms</title></circle>`);
    }
    for (const n of failed) {
      const cx = x(n);
      const cy = m.top + 8;
      parts.push(`<path data-failed="${mode}" d="M${(cx - 5).toFixed(1)},${cy - 5} l10,10 m0,-10 l-10,10" stroke="${color}" stroke-width="2"><title>${mode} N=${n}: every run failed</title></path>`);
    }
    parts.push(`<line x1="${m.left + pw + 14}" x2="${m.left + pw + 38}" y1="${legendY}" y2="${legendY}" stroke="${color}" stroke-width="2"/>`);
    parts.push(`<text x="${m.left + pw + 44}" y="${legendY + 4}">${mode}${failed.length ? ' (× failed)' : ''}</text>`);
    legendY += 20;
  }
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
