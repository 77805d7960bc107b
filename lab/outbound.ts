/**
 * A lab workload that holds outgoing connections with data flowing both ways, and the server
 * they go to, with every byte checked in both directions:
 *
 *   - the server (lab/outbound-server.ts) runs in the lab's client namespace, checks every byte a
 *     workload connection sends against that connection's stream and echoes it;
 *   - the workload (build/echo-server --outbound, started like any lab workload so CRIU can move
 *     it) opens the connections, from its endpoint address (`source`) or from the host's own
 *     address (no source: the kernel picks it, redis's default), sends its streams and checks
 *     every echoed byte; its control port answers counters.
 *
 * Use: `const server = startOutboundServer(lab.topology.client, { port })`, then
 * `startOutboundWorkload(host, address, port, { server, connections, source, controlPort })`, and
 * `outboundReport(server, { address, controlPort })` / `drainOutbound(...)` after a migration:
 * per connection, bytes sent and checked both ways, resets, errors, max stall.
 */
import { existsSync } from 'node:fs';
import { labProgram, spawnJsonLineChild } from './json-line-child.js';
import { nsenterArgs, type LabHost } from './topology.js';
import { startWorkload, type StartedWorkload } from './workload.js';

export interface OutboundWorkloadOptions {
  /** Where the connections go: an outbound server (its address and port). */
  server: { address: string; port: number };
  connections: number;
  /**
   * Local address the connections are bound to before connect() (an endpoint address: they move
   * with the workload). Undefined: no bind, the kernel picks the host's own address, and the
   * controller refuses to move the workload.
   */
  source?: string;
  /** Port on the workload's address where it answers counters (lab/workload/echo-server.c). */
  controlPort: number;
  /** Varies every connection's stream between runs (default 0). */
  seed?: number;
  /** Bytes per connection per interval (default 64). */
  chunk?: number;
  intervalMs?: number;
  /** A connection sends no more while this many bytes wait for their echo (default 256 KiB). */
  maxOutstandingBytes?: number;
}

/** The echo-server arguments of outbound mode, after ADDRESS PORT. */
export function outboundWorkloadArgs(o: OutboundWorkloadOptions): string[] {
  const args = ['--outbound', `${o.server.address}:${o.server.port}`, '--connections', String(o.connections), '--control-port', String(o.controlPort)];
  if (o.source) args.push('--source', o.source);
  if (o.seed !== undefined) args.push('--seed', String(o.seed));
  if (o.chunk !== undefined) args.push('--chunk', String(o.chunk));
  if (o.intervalMs !== undefined) args.push('--interval-ms', String(o.intervalMs));
  if (o.maxOutstandingBytes !== undefined) args.push('--max-outstanding', String(o.maxOutstandingBytes));
  return args;
}

/**
 * Starts echo-server on `host`, serving address:port and holding `connections` outgoing
 * connections to the server; resolves once they are all up (the server listens after them).
 */
export function startOutboundWorkload(host: LabHost, address: string, port: number, o: OutboundWorkloadOptions): Promise<StartedWorkload> {
  return startWorkload(host, address, port, { args: outboundWorkloadArgs(o) });
}

/** One workload connection as the workload sees it (its control port's answer). */
export interface WorkloadConnectionStats {
  index: number;
  localPort: number;
  /** Stream bytes the workload sent. */
  sent: number;
  /** Echoed bytes that matched its stream. */
  verified: number;
  received: number;
  /** Stream offset of the first mismatching echoed byte, -1 if none. */
  corruptAt: number;
  closed: boolean;
  reset: boolean;
  error: string;
  /** Longest time it had bytes outstanding and received nothing (ms). */
  maxStallMs: number;
  /**
   * Longest time between two arrivals of echoed data while sending, one going on included (ms).
   * A freeze shows here rather than in maxStallMs: a frozen workload has sent nothing it waits for.
   */
  maxGapMs: number;
}

export interface WorkloadOutboundStats {
  connections: number;
  open: number;
  sending: boolean;
  sentBytes: number;
  verifiedBytes: number;
  resets: number;
  corrupted: number;
  /** The largest maxStallMs or maxGapMs of any connection. */
  maxStallMs: number;
  perConnection: WorkloadConnectionStats[];
}

/** One connection as the server sees it. */
export interface ServerConnectionStats {
  /** The connection index from the workload's hello; -1 before the hello arrived. */
  index: number;
  /** The workload's address:port as the server sees it (the connection's source). */
  remote: string;
  received: number;
  /** Distinct stream bytes checked (one past the highest verified offset). */
  verified: number;
  /** Stream bytes that never arrived before later ones did (lost, unless they turned up). */
  skipped: number;
  duplicated: number;
  corruptAt: number;
  echoed: number;
  closed: boolean;
  reset: boolean;
  error: string;
  /** Longest time between two arrivals of data (ms); grows while the workload is paused. */
  maxGapMs: number;
}

/** One connection, both sides joined. */
export interface OutboundConnectionReport {
  index: number;
  /** The connection's source as the server saw it: the workload's address (or the host's) and port. */
  remote: string;
  /** Workload -> server: bytes sent, and checked by the server. */
  sentBytes: number;
  serverVerifiedBytes: number;
  /** Server -> workload: bytes echoed, and checked by the workload. */
  echoedBytes: number;
  workloadVerifiedBytes: number;
  /** Bytes known lost: gaps the server saw, and (after a drain, or on a closed connection) what never came back. */
  bytesLost: number;
  corrupted: boolean;
  /** Resets either side saw. */
  resets: number;
  errors: string[];
  /**
   * The workload's longest stall, ms: bytes outstanding and nothing received, or nothing received
   * while sending (a freeze, the pauses of drainOutbound excluded).
   */
  maxStallMs: number;
}

export interface OutboundReport {
  connections: number;
  /** Open on both sides. */
  open: number;
  sentBytes: number;
  serverVerifiedBytes: number;
  echoedBytes: number;
  workloadVerifiedBytes: number;
  bytesLost: number;
  corrupted: number;
  resets: number;
  maxStallMs: number;
  /** drainOutbound only: every open connection got back all it sent before the timeout. */
  drained?: boolean;
  errors: string[];
  perConnection: OutboundConnectionReport[];
}

export interface OutboundServerHandle {
  /** PID of the server process (nsenter execs node). */
  readonly pid: number;
  readonly address: string;
  readonly port: number;
  /** Resolves once it listens. */
  readonly ready: Promise<void>;
  stats(): Promise<ServerConnectionStats[]>;
  /** One request ("stats", "pause", "resume") to a workload's control port, sent from the server's namespace. */
  askWorkload(workload: { address: string; controlPort: number }, line?: 'stats' | 'pause' | 'resume'): Promise<WorkloadOutboundStats>;
  /** quit, then SIGTERM, then SIGKILL, by PID. Safe to call more than once. */
  stop(): Promise<void>;
}

export function outboundServerScript(): string {
  return labProgram('outbound-server.js');
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Starts the outbound server in `host`'s namespace (the lab's client), on its address. */
export function startOutboundServer(host: LabHost, opts: { port: number; script?: string }): OutboundServerHandle {
  const script = opts.script ?? outboundServerScript();
  if (!existsSync(script)) throw new Error(`${script} does not exist: compile the project (npx tsc -p tsconfig.json)`);
  const child = spawnJsonLineChild('outbound server', 'nsenter', [...nsenterArgs(host), process.execPath, script, '--address', host.address, '--port', String(opts.port)]);
  const { pid, ready, stop } = child;
  const request = (cmd: Record<string, unknown>, timeoutMs = 10_000) => child.request<Record<string, unknown>>(cmd, timeoutMs);

  return {
    pid,
    address: host.address,
    port: opts.port,
    ready,
    stats: async () => (await request({ cmd: 'stats' })).perConnection as ServerConnectionStats[],
    askWorkload: async (w, line = 'stats') =>
      (await request({ cmd: 'ask', address: w.address, port: w.controlPort, line })).answer as WorkloadOutboundStats,
    stop,
  };
}

/**
 * Both sides of every connection, joined by connection index. `final`: the connections were
 * drained, so every byte sent and not verified back counts as lost.
 */
export function joinOutbound(workload: WorkloadOutboundStats, server: ServerConnectionStats[], final = false): OutboundReport {
  const byIndex = new Map<number, ServerConnectionStats>();
  for (const s of server) if (s.index >= 0) byIndex.set(s.index, s); // a later one (a reconnect) wins
  const per = workload.perConnection.map((w): OutboundConnectionReport => {
    const s = byIndex.get(w.index);
    const errors = [w.error, s?.error ?? 'the server never saw this connection'].filter(Boolean);
    const unreturned = w.closed || final ? Math.max(0, w.sent - w.verified) : 0;
    return {
      index: w.index,
      remote: s?.remote ?? '',
      sentBytes: w.sent,
      serverVerifiedBytes: s?.verified ?? 0,
      echoedBytes: s?.echoed ?? 0,
      workloadVerifiedBytes: w.verified,
      bytesLost: (s?.skipped ?? 0) + unreturned,
      corrupted: w.corruptAt >= 0 || (s?.corruptAt ?? -1) >= 0,
      resets: (w.reset ? 1 : 0) + (s?.reset ? 1 : 0),
      errors,
      maxStallMs: Math.max(w.maxStallMs, w.maxGapMs),
    };
  });
  const sum = (k: keyof OutboundConnectionReport) => per.reduce((a, c) => a + Number(c[k]), 0);
  return {
    connections: workload.connections,
    open: workload.perConnection.filter((w) => !w.closed && byIndex.get(w.index)?.closed === false).length,
    sentBytes: sum('sentBytes'),
    serverVerifiedBytes: sum('serverVerifiedBytes'),
    echoedBytes: sum('echoedBytes'),
    workloadVerifiedBytes: sum('workloadVerifiedBytes'),
    bytesLost: sum('bytesLost'),
    corrupted: per.filter((c) => c.corrupted).length,
    resets: sum('resets'),
    maxStallMs: Math.max(0, ...per.map((c) => c.maxStallMs)),
    errors: per.flatMap((c) => c.errors.map((e) => `connection ${c.index}: ${e}`)).slice(0, 10),
    perConnection: per,
  };
}

/** Both sides now (bytes in flight are not lost yet). */
export async function outboundReport(server: OutboundServerHandle, workload: { address: string; controlPort: number }): Promise<OutboundReport> {
  const w = await server.askWorkload(workload);
  return joinOutbound(w, await server.stats());
}

/**
 * Pauses the workload's sending, waits until every open connection got back all it sent (or
 * timeoutMs), reports with every byte not back counted lost, and resumes sending unless told not to.
 */
export async function drainOutbound(
  server: OutboundServerHandle,
  workload: { address: string; controlPort: number },
  opts: { timeoutMs?: number; resume?: boolean } = {},
): Promise<OutboundReport> {
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  let w = await server.askWorkload(workload, 'pause');
  const settled = (x: WorkloadOutboundStats) => x.perConnection.every((c) => c.closed || c.sent === c.verified);
  while (!settled(w) && Date.now() < deadline) {
    await sleep(50);
    w = await server.askWorkload(workload);
  }
  const report = { ...joinOutbound(w, await server.stats(), true), drained: settled(w) };
  if (opts.resume ?? true) await server.askWorkload(workload, 'resume');
  return report;
}
