/**
 * Many workloads on a lab host at once, for fleet operations (drain, concurrent migrations): one
 * echo server per workload address, registered with the controller by name (RegisterWorkload),
 * each with a bystander client checking every echoed byte on its own connections. Tests and
 * `npm run bench -- drain` use it.
 */
import type { FleetApi } from '../controller/fleet-client.js';
import type { Endpoint } from '../lib/endpoint.js';
import { endpointToWire } from '../lib/wire.js';
import { settle } from './hop.js';
import { startLabWorkload, type Lab } from './lab.js';
import { startTraffic, type TrafficHandle, type TrafficWindow } from './traffic.js';

export interface FleetWorkload {
  name: string;
  /** Where it was started. */
  host: string;
  pid: number;
  endpoint: Endpoint;
  traffic: TrafficHandle;
  connections: number;
}

export interface FleetWorkloadOptions {
  /** Names: `${prefix}${i}`. */
  prefix: string;
  count: number;
  connections: number;
  /** The first lab workload address used (each workload takes the next). */
  firstAddress?: number;
  port?: number;
  /** Labels of the i-th workload. */
  labels?: (i: number) => Record<string, string>;
}

/** What a workload's client saw over a span (a window opened by `openWindows`). */
export interface ConnectionCheck {
  name: string;
  connections: number;
  alive: number;
  bytesLost: number;
  corrupted: number;
  maxStallMs: number;
}

/** Starts, registers and loads `count` workloads on `host`. On failure, stops what it started. */
export async function startFleetWorkloads(lab: Lab, fleet: FleetApi, host: string, opts: FleetWorkloadOptions): Promise<FleetWorkload[]> {
  const out: FleetWorkload[] = [];
  try {
    for (let i = 0; i < opts.count; i++) {
      const { pid, endpoint } = await startLabWorkload(lab, host, opts.port ?? 7000, (opts.firstAddress ?? 0) + i);
      const name = `${opts.prefix}${i}`;
      await fleet.registerWorkload({ host, name, pid, endpoints: [endpointToWire(endpoint)], labels: opts.labels?.(i) ?? {} });
      const traffic = startTraffic(lab.topology.client, endpoint, { connections: opts.connections, connectConcurrency: 64 });
      out.push({ name, host, pid, endpoint, traffic, connections: opts.connections });
      await traffic.ready;
    }
    return out;
  } catch (err) {
    await stopFleetTraffic(out);
    throw err;
  }
}

/** Opens a fresh stall window on every client (call before the operation measured). */
export async function openWindows(ws: readonly FleetWorkload[]): Promise<TrafficWindow[]> {
  return Promise.all(ws.map((w) => w.traffic.window()));
}

/**
 * After the operation: lets every client catch up, then what each saw since `before` (from
 * openWindows, same order).
 */
export async function checkConnections(ws: readonly FleetWorkload[], before: readonly TrafficWindow[], settleTimeoutMs = 180_000): Promise<ConnectionCheck[]> {
  await Promise.all(ws.map((w) => settle(w.traffic, settleTimeoutMs)));
  return Promise.all(
    ws.map(async (w, i) => {
      const after = await w.traffic.window();
      return {
        name: w.name,
        connections: after.connections,
        alive: after.alive,
        bytesLost: after.bytesLost - before[i].bytesLost,
        corrupted: after.corrupted - before[i].corrupted,
        maxStallMs: after.maxStallMs,
      };
    }),
  );
}

export async function stopFleetTraffic(ws: readonly FleetWorkload[]): Promise<void> {
  await Promise.all(ws.map((w) => w.traffic.stop().catch(() => undefined)));
}
