/**
 * One migration of the lab's workload through the controller's gRPC API, measured from both
 * sides: the controller's phase timings and what the bystander client saw. The demo, the
 * tests and the benchmarks all measure a hop this way.
 */
import type { Migration__Output } from '../proto/gen/godwit/v1/Migration.js';
import type { ControllerApi } from '../controller/client.js';
import type { Endpoint } from '../lib/endpoint.js';
import { endpointToWire } from '../lib/wire.js';
import type { TrafficHandle, TrafficWindow } from './traffic.js';

export interface HopResult {
  from: string;
  to: string;
  migrationId: string;
  phase: string;
  error: string;
  pid: number;
  lockMs: number;
  dumpMs: number;
  transferMs: number;
  restoreMs: number;
  unlockMs: number;
  freezeMs: number;
  totalMs: number;
  imageBytes: number;
  maxStallMs: number;
  connections: number;
  alive: number;
  bytesLost: number;
  bytesDuplicated: number;
  corrupted: number;
}

export interface HopSpec {
  from: string;
  to: string;
  pid: number;
  endpoints: Endpoint[];
}

export async function migrateHop(controller: ControllerApi, traffic: TrafficHandle | undefined, spec: HopSpec): Promise<HopResult> {
  const before = await traffic?.window();
  const accepted = await controller.migrate({
    sourceHost: spec.from,
    targetHost: spec.to,
    workload: { pid: spec.pid, endpoints: spec.endpoints.map(endpointToWire) },
  });
  const m = await controller.wait(accepted.id);
  // Let the connections catch up after the unlock before closing the stall window.
  await new Promise((r) => setTimeout(r, 1_000));
  const after = await traffic?.window();
  return hopResult(spec, m, before, after);
}

export function hopResult(spec: HopSpec, m: Migration__Output, before?: TrafficWindow, after?: TrafficWindow): HopResult {
  const ms = (phase: string) => m.timings.filter((t) => t.phase === phase).reduce((s, t) => s + t.durationMs, 0);
  return {
    from: spec.from,
    to: spec.to,
    migrationId: m.id,
    phase: m.phase as string,
    error: m.error,
    pid: m.restoredPid,
    lockMs: ms('LOCK'),
    dumpMs: ms('DUMP'),
    transferMs: ms('TRANSFER'),
    restoreMs: ms('RESTORE'),
    unlockMs: ms('UNLOCK'),
    freezeMs: m.freezeMs,
    totalMs: m.updatedAtMs - m.createdAtMs,
    imageBytes: Number(m.imageBytes),
    maxStallMs: after?.maxStallMs ?? 0,
    connections: after?.connections ?? 0,
    alive: after?.alive ?? 0,
    bytesLost: (after?.bytesLost ?? 0) - (before?.bytesLost ?? 0),
    bytesDuplicated: (after?.bytesDuplicated ?? 0) - (before?.bytesDuplicated ?? 0),
    corrupted: (after?.corrupted ?? 0) - (before?.corrupted ?? 0),
  };
}
