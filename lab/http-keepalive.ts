/**
 * The parent side of lab/http-keepalive-client.ts: keep-alive HTTP clients in a lab host's
 * namespace (the client's), every body checked.
 */
import { labProgram, spawnJsonLineChild, type JsonLineChild } from './json-line-child.js';
import { nsenterArgs, type LabHost } from './topology.js';

export interface HttpKeepAliveStats {
  /** Requests answered with the expected body. */
  requests: number;
  /** Requests whose connection broke before the answer (each is followed by a reconnect). */
  failures: number;
  /** Answers with another status or body than expected. */
  bodyMismatches: number;
  reconnects: number;
  maxLatencyMs: number;
  errors: string[];
}

export interface HttpKeepAlive {
  readonly ready: Promise<void>;
  stats(): Promise<HttpKeepAliveStats>;
  /** Stops sending once each connection's request in flight is answered; the final counts. */
  stop(): Promise<HttpKeepAliveStats>;
  quit(): Promise<void>;
}

export function startHttpKeepAlive(client: LabHost, target: { address: string; port: number }, connections: number, prefix: string): HttpKeepAlive {
  const child: JsonLineChild = spawnJsonLineChild('http keep-alive clients', 'nsenter', [
    ...nsenterArgs(client),
    process.execPath,
    labProgram('http-keepalive-client.js'),
    target.address,
    String(target.port),
    String(connections),
    prefix,
  ]);
  return {
    ready: child.ready,
    stats: () => child.request<HttpKeepAliveStats>({ cmd: 'stats' }, 10_000),
    stop: () => child.request<HttpKeepAliveStats>({ cmd: 'stop' }, 60_000),
    quit: () => child.stop(),
  };
}
