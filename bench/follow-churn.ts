/**
 * `follow` kind "churn": one workload moved again and again between three hosts while TCP
 * connections and UDP flows through service VIPs check every byte and every datagram.
 *
 * A routed lab (hosts a, b, c behind a router that spreads the VIP block over all of them by
 * ECMP, a client namespace behind the same router). The echo workload runs on a and answers TCP
 * and UDP on one address and port, in one process (lab/udp-workload.ts). Two services, a TCP VIP
 * and a UDP VIP, each with that endpoint as its only backend (host a). T TCP connections
 * (lab/traffic.ts) and U UDP flows (lab/udp-traffic.ts) run through the VIPs while the controller
 * migrates the workload M times, a -> b -> c -> a ... (lab/hop.ts; its pid changes each hop).
 * Then: broken flows (a closed or corrupted TCP connection; a UDP flow with a wrong echo, or
 * silent for the last brokenAfterMs of sending), bytes lost, each flow's longest gap (max and
 * p99 over flows: TCP connections' stalls and UDP flows' gaps between echoes), failed migrations.
 *
 * Sizes: full (the bench's default) M=100, T=1000, U=1000; CI M=3, T=50, U=50.
 * JSON line: {"kind":"churn","migrations","hosts","tcpConnections","udpFlows","brokenTcp",
 * "brokenUdp","bytesLost","maxGapMs","p99GapMs","failedMigrations", ...more figures}.
 * The lab goes down at the end whatever happened.
 */
import { SteeringApi } from '../controller/steering-client.js';
import { labDown, labUp, type Lab } from '../lab/lab.js';
import { migrateHop, type HopResult } from '../lab/hop.js';
import { findFreeLabIndex } from '../lab/topology.js';
import { startTraffic, type TrafficHandle, type TrafficReport } from '../lab/traffic.js';
import { percentile } from '../lab/udp-flow.js';
import { startUdpTraffic, type UdpTrafficHandle, type UdpTrafficReport } from '../lab/udp-traffic.js';
import { startLabDualWorkload } from '../lab/udp-workload.js';
import { stopWorkload } from '../lab/workload.js';
import type { FollowKind } from './follow.js';

export interface ChurnOptions {
  /** Successive migrations (M). */
  migrations: number;
  /** TCP connections through the TCP VIP (T). */
  tcpConnections: number;
  /** UDP flows through the UDP VIP (U). */
  udpFlows: number;
  /** Hosts the workload visits in turn, starting on the first (default a, b, c). */
  hosts?: string[];
  /** The workload's port, also both services' port (default 7000). */
  port?: number;
  /** TCP: one chunk per connection per interval (default 50 ms). */
  tcpIntervalMs?: number;
  /** UDP: one datagram per flow per interval (default 100 ms). */
  udpIntervalMs?: number;
  /** A UDP flow silent for this long at the end of sending is broken (default 3000 ms). */
  brokenAfterMs?: number;
  /** Progress lines (default: none). */
  say?: (line: string) => void;
}

export const CHURN_SIZES = {
  full: { migrations: 100, tcpConnections: 1000, udpFlows: 1000 },
  ci: { migrations: 3, tcpConnections: 50, udpFlows: 50 },
} as const satisfies Record<string, Pick<ChurnOptions, 'migrations' | 'tcpConnections' | 'udpFlows'>>;

/** One migration as the churn saw it. */
export interface ChurnHop {
  hop: number;
  from: string;
  to: string;
  phase: string;
  error: string;
  freezeMs: number;
  steerMs: number;
  steerInsideFreeze: boolean;
  handedOff: number;
  forwarded: number;
  /** Longest TCP stall within the hop's window (ms). */
  tcpMaxStallMs: number;
  /** Longest UDP gap between echoes within the hop's window (ms). */
  udpMaxGapMs: number;
  tcpBytesLost: number;
  totalMs: number;
}

export interface ChurnResult {
  hosts: string[];
  /** Migrations asked for (M); `hops` holds those attempted (the churn stops at the first failure). */
  migrations: number;
  tcpConnections: number;
  udpFlows: number;
  hops: ChurnHop[];
  failedMigrations: number;
  /** TCP connections closed or whose echo stopped matching. */
  brokenTcp: number;
  /** UDP flows with a wrong echo, or silent for the last brokenAfterMs of sending. */
  brokenUdp: number;
  /** TCP bytes sent and never echoed (after the drain). */
  bytesLost: number;
  tcpDrained: boolean;
  udpSent: number;
  udpLost: number;
  udpDuplicates: number;
  /** Longest gap of any flow (TCP stall or UDP gap between echoes), ms. */
  maxGapMs: number;
  /** 99th percentile over all flows (TCP and UDP) of each flow's longest gap, ms. */
  p99GapMs: number;
  tcpMaxStallMs: number;
  tcpP99StallMs: number;
  udpMaxGapMs: number;
  udpP99GapMs: number;
  /** First problems seen (broken flows, errors), for a reader. */
  notes: string[];
  durationMs: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function runChurn(options: ChurnOptions): Promise<ChurnResult> {
  const o = {
    hosts: ['a', 'b', 'c'],
    port: 7000,
    tcpIntervalMs: 50,
    udpIntervalMs: 100,
    brokenAfterMs: 3000,
    say: () => undefined,
    ...options,
  } as Required<ChurnOptions>;
  if (o.hosts.length < 2) throw new RangeError('churn needs at least two hosts');
  for (const k of ['migrations', 'tcpConnections', 'udpFlows'] as const)
    if (!Number.isInteger(o[k]) || o[k] < 0) throw new RangeError(`churn ${k} must be a whole number, got ${o[k]}`);
  const started = performance.now();
  const index = await findFreeLabIndex();
  let lab: Lab | undefined;
  let tcp: TrafficHandle | undefined;
  let udp: UdpTrafficHandle | undefined;
  let workloadPid: number | undefined;
  try {
    o.say(`churn: lab ${index} up, routed, hosts ${o.hosts.join(', ')}`);
    lab = await labUp({ hosts: o.hosts, fabric: 'routed', index });
    const w = await startLabDualWorkload(lab, o.hosts[0], o.port);
    workloadPid = w.pid;
    o.say(`churn: echo workload pid ${w.pid} on ${o.hosts[0]}, tcp+udp ${w.tcp.address}:${o.port}`);
    const [tcpVip, udpVip] = await createServices(lab, o.hosts[0], w.tcp.address, o.port);
    o.say(`churn: services tcp://${tcpVip}:${o.port} and udp://${udpVip}:${o.port} -> ${w.tcp.address}:${o.port} on ${o.hosts[0]}`);

    if (o.tcpConnections > 0) tcp = startTraffic(lab.topology.client, { address: tcpVip, port: o.port }, { connections: o.tcpConnections, intervalMs: o.tcpIntervalMs });
    if (o.udpFlows > 0) udp = startUdpTraffic(lab.topology.client, { address: udpVip, port: o.port }, { flows: o.udpFlows, intervalMs: o.udpIntervalMs, brokenAfterMs: o.brokenAfterMs });
    await Promise.all([tcp?.ready, udp?.ready]);
    o.say(`churn: ${o.tcpConnections} TCP connections and ${o.udpFlows} UDP flows checking every echo`);
    await sleep(1_000);

    const hops: ChurnHop[] = [];
    let pid = w.pid;
    for (let i = 1; i <= o.migrations; i++) {
      const from = o.hosts[(i - 1) % o.hosts.length];
      const to = o.hosts[i % o.hosts.length];
      await udp?.window();
      const h = await migrateHop(lab.controller, tcp, { from, to, pid, endpoints: [w.tcp, w.udp] });
      const uw = await udp?.window();
      hops.push(churnHop(i, h, uw?.windowMaxGapMs ?? 0));
      o.say(
        `churn: hop ${i}/${o.migrations} ${from} -> ${to} ${h.phase} freeze ${h.freezeMs.toFixed(0)} ms, steer ${h.steerMs.toFixed(0)} ms, ` +
          `tcp stall ${h.maxStallMs.toFixed(0)} ms, udp gap ${(uw?.windowMaxGapMs ?? 0).toFixed(0)} ms${h.error ? `: ${h.error}` : ''}`,
      );
      if (h.phase !== 'DONE') break; // the workload is back on `from` (or lost): the churn ends here
      pid = h.pid;
      workloadPid = pid;
    }

    // Every flow keeps sending past the last hop long enough for a silent one to count as broken.
    await sleep(o.brokenAfterMs + 500);
    const [u, t] = await Promise.all([udp?.drain(1_000), tcp?.drain(30_000)]);
    return summarize(o, hops, t, u, performance.now() - started);
  } finally {
    await udp?.stop().catch(() => undefined);
    await tcp?.stop().catch(() => undefined);
    if (workloadPid !== undefined) await stopWorkload(workloadPid).catch(() => undefined);
    if (lab) await lab.down().catch((e: Error) => o.say(`churn: lab down: ${e.message}`));
    else await labDown(index).catch(() => undefined);
  }
}

/** A TCP and a UDP service on VIPs 0 and 1, each with the workload's endpoint as its one backend; returns once every host holds them. */
async function createServices(lab: Lab, host: string, address: string, port: number): Promise<[string, string]> {
  const api = new SteeringApi(lab.controllerAddress);
  try {
    const vips: string[] = [];
    for (const [i, protocol] of [[0, 'TCP'], [1, 'UDP']] as const) {
      const service = { protocol, vip: lab.topology.vip(i), port };
      await api.createService({ service });
      const c = await api.updateService({ service, addBackend: { backend: { address, port }, weight: 1, host }, wait: { wait: true, timeoutMs: 30_000 } });
      if (!c.converged) throw new Error(`hosts ${c.laggingHosts.join(', ')} did not take the ${protocol} service's rule`);
      vips.push(service.vip);
    }
    return [vips[0], vips[1]];
  } finally {
    api.close();
  }
}

function churnHop(hop: number, h: HopResult, udpMaxGapMs: number): ChurnHop {
  return {
    hop,
    from: h.from,
    to: h.to,
    phase: h.phase,
    error: h.error,
    freezeMs: h.freezeMs,
    steerMs: h.steerMs,
    steerInsideFreeze: h.steerInsideFreeze,
    handedOff: h.handedOff,
    forwarded: h.forwarded,
    tcpMaxStallMs: h.maxStallMs,
    udpMaxGapMs,
    tcpBytesLost: h.bytesLost,
    totalMs: h.totalMs,
  };
}

export function summarize(o: Required<ChurnOptions>, hops: ChurnHop[], t: TrafficReport | undefined, u: UdpTrafficReport | undefined, durationMs: number): ChurnResult {
  const tcpStalls = t?.perConnectionMaxStallMs ?? [];
  const udpGaps = u?.perFlowMaxGapMs ?? [];
  const notes: string[] = [];
  for (const h of hops) if (h.phase !== 'DONE') notes.push(`hop ${h.hop} ${h.from} -> ${h.to} ended ${h.phase}: ${h.error}`);
  if (t && !t.drained) notes.push(`TCP drain incomplete after ${t.drainMs} ms (${t.outstandingBytes} bytes outstanding)`);
  for (const e of t?.errors ?? []) notes.push(`tcp ${e}`);
  for (const m of t?.mismatches ?? []) notes.push(`tcp connection ${m.connection}: echo differs at offset ${m.offset}`);
  for (const b of u?.brokenFlows ?? []) notes.push(`udp flow ${b.flow}: ${b.why}`);
  for (const e of u?.errors ?? []) notes.push(`udp ${e}`);
  // A connection both closed and corrupted is one broken connection; count the larger set.
  const brokenTcp = t ? Math.max(t.connections - t.alive, 0) + t.corrupted : 0;
  return {
    hosts: o.hosts,
    migrations: o.migrations,
    tcpConnections: o.tcpConnections,
    udpFlows: o.udpFlows,
    hops,
    failedMigrations: hops.filter((h) => h.phase !== 'DONE').length,
    brokenTcp,
    brokenUdp: u?.broken ?? 0,
    bytesLost: t?.bytesLost ?? 0,
    tcpDrained: t?.drained ?? true,
    udpSent: u?.sent ?? 0,
    udpLost: u?.lost ?? 0,
    udpDuplicates: u?.duplicates ?? 0,
    maxGapMs: Math.max(0, ...tcpStalls, ...udpGaps),
    p99GapMs: percentile([...tcpStalls, ...udpGaps], 99),
    tcpMaxStallMs: t?.maxStallMs ?? 0,
    tcpP99StallMs: percentile(tcpStalls, 99),
    udpMaxGapMs: u?.maxGapMs ?? 0,
    udpP99GapMs: u?.p99GapMs ?? 0,
    notes: notes.slice(0, 20),
    durationMs,
  };
}

/** Every migration done, nothing broken, nothing lost. */
export function churnPassed(r: ChurnResult): boolean {
  return r.hops.length === r.migrations && r.failedMigrations === 0 && r.brokenTcp === 0 && r.brokenUdp === 0 && r.bytesLost === 0 && r.tcpDrained;
}

/** The --json line. */
export function churnJsonLine(r: ChurnResult): { kind: 'churn' } & Record<string, unknown> {
  const round = (n: number) => Math.round(n * 10) / 10;
  const freezes = r.hops.map((h) => h.freezeMs);
  return {
    kind: 'churn',
    migrations: r.hops.length,
    hosts: r.hosts.length,
    tcpConnections: r.tcpConnections,
    udpFlows: r.udpFlows,
    brokenTcp: r.brokenTcp,
    brokenUdp: r.brokenUdp,
    bytesLost: r.bytesLost,
    maxGapMs: round(r.maxGapMs),
    p99GapMs: round(r.p99GapMs),
    failedMigrations: r.failedMigrations,
    migrationsAsked: r.migrations,
    udpSent: r.udpSent,
    udpLost: r.udpLost,
    tcpMaxStallMs: round(r.tcpMaxStallMs),
    tcpP99StallMs: round(r.tcpP99StallMs),
    udpMaxGapMs: round(r.udpMaxGapMs),
    udpP99GapMs: round(r.udpP99GapMs),
    freezeMsMedian: round(percentile(freezes, 50)),
    freezeMsMax: round(Math.max(0, ...freezes)),
    steerMsMax: round(Math.max(0, ...r.hops.map((h) => h.steerMs))),
    steerInsideFreeze: r.hops.filter((h) => h.steerInsideFreeze).length,
    forwarded: r.hops.reduce((s, h) => s + h.forwarded, 0),
    durationMs: Math.round(r.durationMs),
  };
}

/** A readable summary table, then one row per migration (the first and last ten when there are many). */
export function renderChurnTable(r: ChurnResult): string {
  const j = churnJsonLine(r);
  const summary = [
    `churn: ${j.migrations}/${r.migrations} migrations over ${r.hosts.join(' -> ')} -> ..., ${r.tcpConnections} TCP connections, ${r.udpFlows} UDP flows`,
    '',
    table(
      ['', 'broken', 'lost', 'max gap ms', 'p99 gap ms'],
      [
        ['TCP', String(r.brokenTcp), `${r.bytesLost} bytes`, fmt(r.tcpMaxStallMs), fmt(r.tcpP99StallMs)],
        ['UDP', String(r.brokenUdp), `${r.udpLost}/${r.udpSent} datagrams`, fmt(r.udpMaxGapMs), fmt(r.udpP99GapMs)],
        ['all', String(r.brokenTcp + r.brokenUdp), '', fmt(r.maxGapMs), fmt(r.p99GapMs)],
      ],
    ),
    '',
    `failed migrations: ${r.failedMigrations}; freeze median ${fmt(j.freezeMsMedian as number)} ms, max ${fmt(j.freezeMsMax as number)} ms; ` +
      `steer max ${fmt(j.steerMsMax as number)} ms, inside the freeze in ${j.steerInsideFreeze}/${r.hops.length}; ${j.forwarded} packets forwarded by old hosts`,
  ];
  const shown = r.hops.length > 20 ? [...r.hops.slice(0, 10), undefined, ...r.hops.slice(-10)] : r.hops;
  const rows = shown.map((h) =>
    h
      ? [String(h.hop), `${h.from} -> ${h.to}`, h.phase, fmt(h.freezeMs), fmt(h.steerMs) + (h.steerInsideFreeze ? '' : '*'), String(h.handedOff), String(h.forwarded), fmt(h.tcpMaxStallMs), fmt(h.udpMaxGapMs), String(h.tcpBytesLost)]
      : ['...', '', '', '', '', '', '', '', '', ''],
  );
  const hops = table(['hop', 'move', 'result', 'freeze ms', 'steer ms', 'handed off', 'forwarded', 'tcp stall ms', 'udp gap ms', 'bytes lost'], rows);
  const notes = r.notes.length ? ['', 'notes:', ...r.notes.map((n) => `  ${n}`)] : [];
  return [...summary, '', hops, '(* steer convergence finished after the freeze)', ...notes].join('\n');
}

function table(header: string[], rows: string[][]): string {
  const width = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => '| ' + cells.map((c, i) => c.padStart(width[i])).join(' | ') + ' |';
  return [line(header), '|' + width.map((w) => '-'.repeat(w + 1) + ':').join('|') + '|', ...rows.map(line)].join('\n');
}

const fmt = (ms: number) => ms.toFixed(0);

/** The kind as `bench follow --kinds churn` runs it (--migrations, --tcp, --udp). */
export const churnKind: FollowKind = {
  async run(opts, io) {
    const r = await runChurn({ migrations: opts.migrations, tcpConnections: opts.tcp, udpFlows: opts.udp, say: io.say });
    io.emit(churnJsonLine(r));
    return { table: renderChurnTable(r), ok: churnPassed(r) };
  },
};
