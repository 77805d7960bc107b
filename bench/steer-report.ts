/**
 * The pure half of `npm run bench -- steer-dataplane`: the measurement record, medians, the cost
 * over the baseline, the Markdown tables and the SVG plot. No I/O here (bench/steer-dataplane.ts
 * sends the packets).
 */
import { median } from './lock-report.js';

/**
 * baseline-xdp: the baseline with bpf/xdp_pass.c on the host's interface, i.e. what having any
 * native XDP program on a veth costs (the veth then receives in NAPI, converting each skb to an
 * XDP buffer and back), which a NIC does not charge. godwit's cost over it is its program's own.
 */
export const STEER_MODES = ['godwit', 'iptables', 'nftables', 'baseline', 'baseline-xdp'] as const;
export type SteerMode = (typeof STEER_MODES)[number];
export const STEER_PROTOS = ['udp', 'tcp'] as const;
export type SteerProto = (typeof STEER_PROTOS)[number];

/** The targets of issue 8: how many times less CPU per packet godwit must cost than each. */
export const TARGET_RATIO: Record<'iptables' | 'nftables', number> = { iptables: 3, nftables: 2 };

/** One run of the generator through one mode. */
export interface SteerMeasurement {
  bench: 'steer-dataplane';
  mode: SteerMode;
  proto: SteerProto;
  run: number;
  /** Packets the generator sent. */
  packets: number;
  /** Packets that reached the backend: the sink's count (UDP) or the backend host's Tcp InSegs (TCP). */
  delivered: number;
  flows: number;
  frameBytes: number;
  /** Generator (with the softirq work done in its context) + ksoftirqd threads, over the run. */
  cpuNs: number;
  /** cpuNs / delivered. */
  cpuNsPerPacket: number;
  /** Busy time of every CPU from /proc/stat over the run (other tenants of the machine included). */
  sysCpuNs: number;
  sysCpuNsPerPacket: number;
  /** The UDP sink's own CPU (recvmmsg calls), not in cpuNs; 0 for TCP (no sink process). */
  sinkCpuNs: number;
  /** Time the generator took to hand every packet to the kernel (which processes them in its context). */
  elapsedNs: number;
  /** delivered / elapsed. */
  pps: number;
  ok: boolean;
  error: string;
  at: string;
}

/** A row of bench/steer-progrun.ts: the program alone under BPF_PROG_TEST_RUN. */
export interface ProgTestRunRow {
  mode: 'prog-test-run';
  path: 'hit' | 'miss';
  nsPerPacket: number;
  [k: string]: unknown;
}

export interface ModeCost {
  runs: number;
  ok: number;
  cpuNsPerPacket?: number;
  sysCpuNsPerPacket?: number;
  pps?: number;
  delivered?: number;
  packets?: number;
  /** Median over runs of (this run's cpuNsPerPacket − the same run's baseline): what the rewrite itself costs. */
  overBaselineNs?: number;
  /**
   * The lowest cpuNsPerPacket of the runs, and it minus the baseline's lowest. Other tenants of a
   * shared machine only ever add to a run's CPU (cache and memory contention), so the best run is
   * the least disturbed one; on a busy machine these agree better from one run to the next.
   */
  bestCpuNsPerPacket?: number;
  bestOverBaselineNs?: number;
  error?: string;
}

export interface ProtoSummary {
  proto: SteerProto;
  modes: Partial<Record<SteerMode, ModeCost>>;
  /** other mode's over-baseline cost ÷ godwit's (undefined when either is unknown or godwit's is ≤ 0). */
  ratioOverBaseline: Partial<Record<'iptables' | 'nftables', number>>;
  /** The same on the best runs (ModeCost.bestOverBaselineNs). */
  ratioOverBaselineBest: Partial<Record<'iptables' | 'nftables', number>>;
  /** other mode's total CPU per packet ÷ godwit's. */
  ratioTotal: Partial<Record<'iptables' | 'nftables', number>>;
  /** godwit minus baseline-xdp, paired by run: the steering program's own cost in real traffic. */
  godwitOverXdpNs?: number;
}

export function ratio(godwit: number | undefined, other: number | undefined): number | undefined {
  if (godwit === undefined || other === undefined || !(godwit > 0)) return undefined;
  return other / godwit;
}

/** Per proto: per mode, medians over the successful runs; the cost over the baseline; the ratios to godwit. */
export function summarize(rows: readonly SteerMeasurement[]): ProtoSummary[] {
  const protos = STEER_PROTOS.filter((p) => rows.some((r) => r.proto === p));
  return protos.map((proto) => {
    const modes: Partial<Record<SteerMode, ModeCost>> = {};
    for (const mode of STEER_MODES) {
      const all = rows.filter((r) => r.proto === proto && r.mode === mode);
      if (all.length === 0) continue;
      const ok = all.filter((r) => r.ok);
      const failed = all.find((r) => !r.ok);
      modes[mode] = {
        runs: all.length,
        ok: ok.length,
        cpuNsPerPacket: median(ok.map((r) => r.cpuNsPerPacket)),
        bestCpuNsPerPacket: ok.length > 0 ? Math.min(...ok.map((r) => r.cpuNsPerPacket)) : undefined,
        sysCpuNsPerPacket: median(ok.map((r) => r.sysCpuNsPerPacket)),
        pps: median(ok.map((r) => r.pps)),
        delivered: median(ok.map((r) => r.delivered)),
        packets: median(ok.map((r) => r.packets)),
        ...(failed ? { error: failed.error } : {}),
      };
    }
    // Each run's mode against the same run's baseline (modes are interleaved within a run, so
    // drift of this shared machine between runs cancels), then the median of those differences;
    // the difference of the medians when no run has both.
    const over = (mode: SteerMode, baseMode: SteerMode): number | undefined => {
      const m = modes[mode];
      const base = modes[baseMode]?.cpuNsPerPacket;
      if (!m || m.cpuNsPerPacket === undefined) return undefined;
      const baseOf = new Map(rows.filter((r) => r.proto === proto && r.mode === baseMode && r.ok).map((r) => [r.run, r.cpuNsPerPacket]));
      const paired = rows
        .filter((r) => r.proto === proto && r.mode === mode && r.ok && baseOf.has(r.run))
        .map((r) => r.cpuNsPerPacket - baseOf.get(r.run)!);
      return paired.length > 0 ? median(paired) : base !== undefined ? m.cpuNsPerPacket - base : undefined;
    };
    const bestBase = modes.baseline?.bestCpuNsPerPacket;
    for (const mode of STEER_MODES) {
      const m = modes[mode];
      if (!m) continue;
      m.overBaselineNs = over(mode, 'baseline');
      if (m.bestCpuNsPerPacket !== undefined && bestBase !== undefined) m.bestOverBaselineNs = m.bestCpuNsPerPacket - bestBase;
    }
    return {
      proto,
      modes,
      ratioOverBaseline: {
        iptables: ratio(modes.godwit?.overBaselineNs, modes.iptables?.overBaselineNs),
        nftables: ratio(modes.godwit?.overBaselineNs, modes.nftables?.overBaselineNs),
      },
      ratioOverBaselineBest: {
        iptables: ratio(modes.godwit?.bestOverBaselineNs, modes.iptables?.bestOverBaselineNs),
        nftables: ratio(modes.godwit?.bestOverBaselineNs, modes.nftables?.bestOverBaselineNs),
      },
      ratioTotal: {
        iptables: ratio(modes.godwit?.cpuNsPerPacket, modes.iptables?.cpuNsPerPacket),
        nftables: ratio(modes.godwit?.cpuNsPerPacket, modes.nftables?.cpuNsPerPacket),
      },
      godwitOverXdpNs: modes['baseline-xdp'] ? over('godwit', 'baseline-xdp') : undefined,
    };
  });
}

function markdown(header: string[], rows: string[][], rightAlign: boolean[]): string {
  const width = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => '| ' + cells.map((c, i) => (rightAlign[i] ? c.padStart(width[i]) : c.padEnd(width[i]))).join(' | ') + ' |';
  const rule = '|' + width.map((w, i) => (rightAlign[i] ? '-'.repeat(w + 1) + ':' : ':' + '-'.repeat(w + 1))).join('|') + '|';
  return [line(header), rule, ...rows.map(line)].join('\n');
}

const ns = (n: number | undefined) => (n === undefined ? '-' : n.toFixed(0));
const signedNs = (n: number | undefined) => (n === undefined ? '-' : `${n >= 0 ? '+' : ''}${n.toFixed(0)}`);
const kpps = (n: number | undefined) => (n === undefined ? '-' : (n / 1000).toFixed(0));
const times = (n: number | undefined) => (n === undefined ? '-' : `${n >= 10 ? n.toFixed(0) : n.toFixed(1)}x`);

/** Every measurement, one row each. */
export function measurementTable(rows: readonly SteerMeasurement[]): string {
  const header = ['mode', 'proto', 'run', 'sent', 'delivered', 'CPU ns/pkt', 'system CPU ns/pkt', 'kpps', 'error'];
  const right = [false, false, true, true, true, true, true, true, false];
  return markdown(
    header,
    rows.map((r) => [
      r.mode,
      r.proto,
      String(r.run),
      String(r.packets),
      String(r.delivered),
      r.ok ? ns(r.cpuNsPerPacket) : '-',
      r.ok ? ns(r.sysCpuNsPerPacket) : '-',
      r.ok ? kpps(r.pps) : '-',
      r.ok ? '' : r.error.replace(/\s+/g, ' ').replace(/\|/g, '/').slice(0, 140),
    ]),
    right,
  );
}

/** Medians per proto and mode, the cost over the baseline, and godwit against the targets. */
export function summaryTable(rows: readonly SteerMeasurement[]): string {
  const header = ['proto', 'mode', 'runs ok', 'CPU ns/pkt', 'over baseline', 'best CPU ns/pkt', 'best over baseline', 'system CPU ns/pkt', 'kpps', 'delivered/sent', 'vs godwit: over baseline (best)', 'vs godwit: total'];
  const right = [false, false, true, true, true, true, true, true, true, true, true, true];
  const body: string[][] = [];
  for (const s of summarize(rows)) {
    for (const mode of STEER_MODES) {
      const m = s.modes[mode];
      if (!m) continue;
      const cmp = mode === 'iptables' || mode === 'nftables' ? mode : undefined;
      body.push([
        s.proto,
        mode,
        `${m.ok}/${m.runs}`,
        ns(m.cpuNsPerPacket),
        mode === 'baseline' ? '0' : signedNs(m.overBaselineNs),
        ns(m.bestCpuNsPerPacket),
        mode === 'baseline' ? '0' : signedNs(m.bestOverBaselineNs),
        ns(m.sysCpuNsPerPacket),
        kpps(m.pps),
        m.delivered !== undefined && m.packets ? `${((100 * m.delivered) / m.packets).toFixed(1)}%` : '-',
        cmp ? `${times(s.ratioOverBaseline[cmp])} (${times(s.ratioOverBaselineBest[cmp])}), target ${TARGET_RATIO[cmp]}x` : '',
        cmp ? times(s.ratioTotal[cmp]) : '',
      ]);
    }
  }
  const notes = summarize(rows)
    .filter((s) => s.godwitOverXdpNs !== undefined)
    .map((s) => `${s.proto}: godwit over baseline-xdp (the steering program's own work in real traffic) ${signedNs(s.godwitOverXdpNs)} ns/packet; baseline-xdp over baseline (a veth's cost of running any XDP program) ${signedNs(s.modes['baseline-xdp']?.overBaselineNs)} ns/packet`);
  return [markdown(header, body, right), ...notes].join('\n');
}

export function progTestRunTable(rows: readonly ProgTestRunRow[]): string {
  return markdown(
    ['path', 'ns/packet', 'details'],
    rows.map((r) => {
      const { mode: _m, path, nsPerPacket, ...rest } = r;
      return [path, nsPerPacket.toFixed(1), JSON.stringify(rest)];
    }),
    [false, true, false],
  );
}

// ---- the plot ----

const COLORS: Record<SteerMode, string> = { godwit: '#1b7837', iptables: '#b2182b', nftables: '#2166ac', baseline: '#999999', 'baseline-xdp': '#8c6bb1' };
const BASE_FILL = '#d9d9d9';
const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

function niceStep(max: number): number {
  const raw = max / 5;
  const mag = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
}

/**
 * Median CPU per delivered packet, one group of bars per proto, one bar per mode: the grey part
 * is the baseline's cost (generator, veths, router, local delivery: the same in every mode), the
 * coloured part on top is what the mode adds (its rewrite).
 */
export function steerSvg(rows: readonly SteerMeasurement[], opts: { width?: number; height?: number; title?: string } = {}): string {
  const W = opts.width ?? 760;
  const H = opts.height ?? 440;
  const m = { left: 78, right: 150, top: 44, bottom: 56 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const summary = summarize(rows);
  const modes = STEER_MODES.filter((mode) => summary.some((s) => s.modes[mode]?.cpuNsPerPacket !== undefined));
  const max = Math.max(1, ...summary.flatMap((s) => modes.map((mode) => s.modes[mode]?.cpuNsPerPacket ?? 0)));
  const step = niceStep(max);
  const top = Math.ceil(max / step) * step;
  const y = (v: number) => m.top + ph - (v / top) * ph;
  const groupW = pw / Math.max(1, summary.length);
  const barW = Math.min(48, (groupW * 0.8) / Math.max(1, modes.length));
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  parts.push(`<text x="${m.left + pw / 2}" y="22" text-anchor="middle" font-size="15">${esc(opts.title ?? 'CPU per delivered packet by steering mode (median; grey = baseline path)')}</text>`);
  for (let t = 0; t <= top + 1e-9; t += step) {
    parts.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${y(t).toFixed(1)}" y2="${y(t).toFixed(1)}" stroke="#e3e3e3"/>`);
    parts.push(`<text x="${m.left - 6}" y="${(y(t) + 4).toFixed(1)}" text-anchor="end">${t.toFixed(0)} ns</text>`);
  }
  parts.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${m.top + ph}" y2="${m.top + ph}" stroke="black"/>`);
  parts.push(`<line x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${m.top + ph}" stroke="black"/>`);
  parts.push(`<text transform="translate(18 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle">CPU ns per delivered packet</text>`);
  summary.forEach((s, g) => {
    const gx = m.left + g * groupW + (groupW - barW * modes.length) / 2;
    parts.push(`<text x="${(m.left + g * groupW + groupW / 2).toFixed(1)}" y="${m.top + ph + 20}" text-anchor="middle" font-size="13">${s.proto.toUpperCase()}</text>`);
    const base = s.modes.baseline?.cpuNsPerPacket;
    modes.forEach((mode, k) => {
      const c = s.modes[mode];
      const total = c?.cpuNsPerPacket;
      if (total === undefined) return;
      const x = gx + k * barW;
      const w = (barW * 0.85).toFixed(1);
      const basePart = mode === 'baseline' || base === undefined ? total : Math.min(base, total);
      const label = `${s.proto} ${mode}: ${total.toFixed(0)} ns/packet${c?.overBaselineNs !== undefined && mode !== 'baseline' ? ` (${signedNs(c.overBaselineNs)} over baseline)` : ''}`;
      parts.push(`<rect data-mode="${mode}" data-proto="${s.proto}" x="${x.toFixed(1)}" y="${y(basePart).toFixed(1)}" width="${w}" height="${(y(0) - y(basePart)).toFixed(1)}" fill="${mode === 'baseline' ? COLORS.baseline : BASE_FILL}"><title>${esc(label)}</title></rect>`);
      if (total > basePart)
        parts.push(`<rect x="${x.toFixed(1)}" y="${y(total).toFixed(1)}" width="${w}" height="${(y(basePart) - y(total)).toFixed(1)}" fill="${COLORS[mode]}"><title>${esc(label)}</title></rect>`);
      const note = mode === 'baseline' ? total.toFixed(0) : c?.overBaselineNs !== undefined ? signedNs(c.overBaselineNs) : total.toFixed(0);
      parts.push(`<text x="${(x + barW * 0.42).toFixed(1)}" y="${(y(total) - 4).toFixed(1)}" text-anchor="middle" font-size="10">${note}</text>`);
    });
  });
  let legendY = m.top + 10;
  for (const mode of modes) {
    parts.push(`<rect x="${m.left + pw + 14}" y="${legendY - 7}" width="14" height="12" fill="${COLORS[mode]}"/>`);
    parts.push(`<text x="${m.left + pw + 34}" y="${legendY + 4}">${mode}</text>`);
    legendY += 20;
  }
  parts.push(`<rect x="${m.left + pw + 14}" y="${legendY - 7}" width="14" height="12" fill="${BASE_FILL}"/>`);
  parts.push(`<text x="${m.left + pw + 34}" y="${legendY + 4}">baseline part</text>`);
  parts.push(`<text x="${m.left + pw / 2}" y="${H - 14}" text-anchor="middle">bars: median per mode; labels: median of (mode − the same run's baseline), ns/packet</text>`);
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
