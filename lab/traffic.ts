import { existsSync } from 'node:fs';
import { labProgram, spawnJsonLineChild } from './json-line-child.js';
import { nsenterArgs, type LabHost } from './topology.js';

/**
 * The parent side of lab/traffic-client.ts: runs it in the client's network namespace
 * (`nsenter --net=<client netns> node dist/lab/traffic-client.js ...`) and talks to it over JSON
 * lines. The compiled client is needed: build with `npx tsc -p tsconfig.json` first.
 */

export interface TrafficStats {
  connections: number;
  /** Connections still open. */
  alive: number;
  closed: number;
  sentBytes: number;
  /** Raw bytes received, duplicates included. */
  receivedBytes: number;
  /** Distinct stream bytes verified (per connection: one past the highest verified offset). */
  verifiedBytes: number;
  /** Bytes sent on open connections and not echoed yet. */
  outstandingBytes: number;
  /** Bytes sent but never echoed: gaps in a stream, plus what closed connections still owed (after a drain: what every connection still owed). */
  bytesLost: number;
  /** Bytes verified a second time (a replay of earlier stream bytes). */
  bytesDuplicated: number;
  /** Bytes that arrived after later bytes of their stream (they filled a gap, so they are not lost). */
  bytesReordered: number;
  /** Connections whose echo stopped matching their stream (neither replay nor gap). */
  corrupted: number;
  /** Longest time a connection had bytes outstanding without receiving any, since the start (ms). */
  maxStallMs: number;
  maxStallConnection: number;
  /** The longest stall going on now: a live connection with bytes outstanding and nothing received for this long (ms). */
  currentStallMs: number;
  elapsedMs: number;
  sending: boolean;
  /** First socket errors (up to 10). */
  errors: string[];
  /** First corrupted connections and the stream offset of their first mismatch (up to 10). */
  mismatches: { connection: number; offset: number }[];
}

export interface TrafficWindow extends TrafficStats {
  /** Length of the window that just closed (ms). */
  windowMs: number;
  /** Longest stall within this window (ms); a stall that spans windows counts whole in the window where it is seen. */
  maxStallMs: number;
  /** maxStallMs since the start. */
  totalMaxStallMs: number;
}

export interface TrafficReport extends TrafficStats {
  /** Every live connection got back all it sent before the timeout. */
  drained: boolean;
  drainMs: number;
  /** Each connection's longest stall (ms), by connection index. */
  perConnectionMaxStallMs: number[];
}

export interface TrafficOptions {
  connections: number;
  /** Each connection sends one chunk per interval (default 20 ms). */
  intervalMs?: number;
  /** Bytes per chunk (default 64). */
  chunk?: number;
  /** A connection sends no more while this many bytes wait for their echo (default 256 KiB). */
  maxOutstandingBytes?: number;
  connectTimeoutMs?: number;
  connectConcurrency?: number;
  /** Varies every connection's stream between runs (default 0). */
  seed?: number;
  /** Path of the compiled client (default dist/lab/traffic-client.js of this project). */
  script?: string;
}

export interface TrafficHandle {
  /** PID of the client process (nsenter execs node, so it is node's PID). */
  readonly pid: number;
  /** Resolves once every connection is established; rejects if they cannot be. */
  readonly ready: Promise<void>;
  /** Resolves with the exit code when the client process ends. */
  readonly exited: Promise<number | null>;
  stats(): Promise<TrafficStats>;
  /** Closes the current stall window and returns its stats; a new window starts. */
  window(): Promise<TrafficWindow>;
  /** Stops sending and waits until every live connection got back all it sent (or timeoutMs). */
  drain(timeoutMs?: number): Promise<TrafficReport>;
  /** Ends the client: quit, then SIGTERM, then SIGKILL, by PID. Safe to call more than once. */
  stop(): Promise<void>;
}

export function trafficClientScript(): string {
  return labProgram('traffic-client.js');
}

export function startTraffic(client: LabHost, target: { address: string; port: number }, opts: TrafficOptions): TrafficHandle {
  const script = opts.script ?? trafficClientScript();
  if (!existsSync(script)) throw new Error(`${script} does not exist: compile the project (npx tsc -p tsconfig.json)`);
  const args = [
    ...nsenterArgs(client),
    process.execPath,
    script,
    '--address',
    target.address,
    '--port',
    String(target.port),
    '--connections',
    String(opts.connections),
    '--interval-ms',
    String(opts.intervalMs ?? 20),
    '--chunk',
    String(opts.chunk ?? 64),
    '--max-outstanding',
    String(opts.maxOutstandingBytes ?? 256 * 1024),
    '--connect-timeout-ms',
    String(opts.connectTimeoutMs ?? 30_000),
    '--connect-concurrency',
    String(opts.connectConcurrency ?? 256),
    '--seed',
    String(opts.seed ?? 0),
  ];
  const child = spawnJsonLineChild('traffic client', 'nsenter', args);
  const { pid, ready, exited, stop } = child;
  const request = <T>(cmd: Record<string, unknown>, timeoutMs: number) => child.request<T>(cmd, timeoutMs);

  return {
    pid,
    ready,
    exited,
    stats: () => request<TrafficStats>({ cmd: 'stats' }, 10_000),
    window: () => request<TrafficWindow>({ cmd: 'window' }, 10_000),
    drain: (timeoutMs = 10_000) => request<TrafficReport>({ cmd: 'drain', timeoutMs }, timeoutMs + 10_000),
    stop,
  };
}
