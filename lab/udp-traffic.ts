import { existsSync } from 'node:fs';
import { labProgram, spawnJsonLineChild } from './json-line-child.js';
import { nsenterArgs, type LabHost } from './topology.js';
import type { UdpTrafficTotals } from './udp-flow.js';

/**
 * The parent side of lab/udp-client.ts (checked UDP flows, the UDP counterpart of
 * lab/traffic.ts): runs it in the client's network namespace
 * (`nsenter --net=<client netns> node dist/lab/udp-client.js ...`) and talks to it over JSON
 * lines. The compiled client is needed: build with `npx tsc -p tsconfig.json` first.
 */

export interface UdpTrafficStats extends UdpTrafficTotals {
  /** Each flow's longest gap between echoes (ms), by flow index. */
  perFlowMaxGapMs: number[];
  elapsedMs: number;
  sending: boolean;
  /** First socket errors (up to 10). */
  errors: string[];
}

export interface UdpTrafficWindow extends UdpTrafficStats {
  windowMs: number;
  /** Longest gap of any flow within this window (a gap going on when it closes included). */
  windowMaxGapMs: number;
  windowMaxGapFlow: number;
}

export interface UdpTrafficReport extends UdpTrafficStats {
  drainMs: number;
}

export interface UdpTrafficOptions {
  flows: number;
  /** Each flow sends one datagram per interval (default 100 ms). */
  intervalMs?: number;
  /** Bytes per datagram, header included (default 64, at most 2048). */
  size?: number;
  /** Varies every flow's payloads between runs (default 0). */
  seed?: number;
  /** A flow silent for this long at the end of sending is broken (default 2000 ms). */
  brokenAfterMs?: number;
  /** Path of the compiled client (default dist/lab/udp-client.js of this project). */
  script?: string;
}

export interface UdpTrafficHandle {
  /** PID of the client process (nsenter execs node, so it is node's PID). */
  readonly pid: number;
  /** Resolves once every flow's socket is connected and sending has begun. */
  readonly ready: Promise<void>;
  readonly exited: Promise<number | null>;
  stats(): Promise<UdpTrafficStats>;
  /** Closes the current gap window and returns its stats; a new window starts. */
  window(): Promise<UdpTrafficWindow>;
  /**
   * Judges broken flows (silent for the last brokenAfterMs, or a wrong echo) while they still
   * send, stops sending, waits graceMs for the last echoes, and counts every missing one as lost.
   */
  drain(graceMs?: number): Promise<UdpTrafficReport>;
  stop(): Promise<void>;
}

export function udpClientScript(): string {
  return labProgram('udp-client.js');
}

export function startUdpTraffic(client: LabHost, target: { address: string; port: number }, opts: UdpTrafficOptions): UdpTrafficHandle {
  const script = opts.script ?? udpClientScript();
  if (!existsSync(script)) throw new Error(`${script} does not exist: compile the project (npx tsc -p tsconfig.json)`);
  const args = [
    ...nsenterArgs(client),
    process.execPath,
    script,
    '--address',
    target.address,
    '--port',
    String(target.port),
    '--flows',
    String(opts.flows),
    '--interval-ms',
    String(opts.intervalMs ?? 100),
    '--size',
    String(opts.size ?? 64),
    '--seed',
    String(opts.seed ?? 0),
    '--broken-after-ms',
    String(opts.brokenAfterMs ?? 2000),
  ];
  const child = spawnJsonLineChild('UDP traffic client', 'nsenter', args);
  return {
    pid: child.pid,
    ready: child.ready,
    exited: child.exited,
    stats: () => child.request<UdpTrafficStats>({ cmd: 'stats' }, 10_000),
    window: () => child.request<UdpTrafficWindow>({ cmd: 'window' }, 10_000),
    drain: (graceMs = 1000) => child.request<UdpTrafficReport>({ cmd: 'drain', graceMs }, graceMs + 10_000),
    stop: child.stop,
  };
}
