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

export type HopLockMode = 'EBPF' | 'IPTABLES' | 'NFTABLES';

/** The controller's figures for one migration (ms): phase times, lock to unlock, request to end. */
export interface PhaseTimes {
  lockMs: number;
  dumpMs: number;
  transferMs: number;
  restoreMs: number;
  unlockMs: number;
  freezeMs: number;
  totalMs: number;
}

export const PHASE_TIME_KEYS = ['lockMs', 'dumpMs', 'transferMs', 'restoreMs', 'unlockMs', 'freezeMs', 'totalMs'] as const satisfies readonly (keyof PhaseTimes)[];

export function phaseTimes(from: PhaseTimes): PhaseTimes {
  return Object.fromEntries(PHASE_TIME_KEYS.map((k) => [k, from[k]])) as unknown as PhaseTimes;
}

export interface HopResult extends PhaseTimes {
  from: string;
  to: string;
  migrationId: string;
  phase: string;
  error: string;
  pid: number;
  imageBytes: number;
  /** EBPF: packets the locks stopped that were delivered right after unlock (joined per connection). */
  deliveredPackets: number;
  /** STEER: the generation issued to the last ready host's ack (0 when no host steers). */
  steerMs: number;
  /** How long UNLOCK waited for those acks: 0 when convergence finished inside the freeze. */
  steerWaitedMs: number;
  /** Convergence finished before the target unlocked, without holding the unlock up. */
  steerInsideFreeze: boolean;
  /** Steering state entries (flows, reverse NAT, counters) that went with the image. */
  handedOff: number;
  /** Packets the source's data plane forwarded to the target during the move. */
  forwarded: number;
  /** Where the phases' time went on the hosts, as the agents measured it. */
  steps: HopStep[];
  maxStallMs: number;
  connections: number;
  alive: number;
  bytesLost: number;
  bytesDuplicated: number;
  corrupted: number;
}

export interface HopStep {
  phase: string;
  host: string;
  step: string;
  ms: number;
}

export interface HopSpec {
  from: string;
  to: string;
  pid: number;
  endpoints: Endpoint[];
  /** The migration's lock mode (default: the controller's, EBPF). */
  lockMode?: HopLockMode;
  /** Run a CRIU lock mode even where it is known to fail (MigrateRequest.allow_unsafe_lock). */
  allowUnsafeLock?: boolean;
  /**
   * Longest wait after the migration ends for every live connection to catch up (default 180 s:
   * a peer that retransmitted into the lock for long backs off up to 120 s between tries).
   */
  settleTimeoutMs?: number;
}

/** At least this long after the migration ends before the stall window closes. */
const MIN_SETTLE_MS = 1_000;
const DEFAULT_SETTLE_TIMEOUT_MS = 180_000;

export async function migrateHop(controller: ControllerApi, traffic: TrafficHandle | undefined, spec: HopSpec): Promise<HopResult> {
  const before = await traffic?.window();
  const accepted = await controller.migrate({
    sourceHost: spec.from,
    targetHost: spec.to,
    workload: { pid: spec.pid, endpoints: spec.endpoints.map(endpointToWire) },
    ...(spec.lockMode ? { lockMode: spec.lockMode } : {}),
    ...(spec.allowUnsafeLock ? { allowUnsafeLock: true } : {}),
  });
  const m = await controller.wait(accepted.id);
  if (traffic) await settle(traffic, spec.settleTimeoutMs ?? DEFAULT_SETTLE_TIMEOUT_MS);
  const after = await traffic?.window();
  return hopResult(spec, m, before, after);
}

/**
 * Waits until the connections have caught up after the migration, so that the stall window
 * holds every stall the migration caused, whole: until no live connection is still stalled since
 * before the migration ended (every stall going on now began after it), and at least
 * MIN_SETTLE_MS. Gives up after timeoutMs (a connection that never recovers; the window then
 * shows its stall so far).
 */
export async function settle(traffic: TrafficHandle, timeoutMs: number): Promise<{ settled: boolean; waitedMs: number }> {
  const t0 = performance.now();
  await sleep(MIN_SETTLE_MS);
  for (;;) {
    const before = performance.now() - t0;
    const s = await traffic.stats();
    if (s.currentStallMs < before) return { settled: true, waitedMs: performance.now() - t0 };
    if (performance.now() - t0 > timeoutMs) return { settled: false, waitedMs: performance.now() - t0 };
    await sleep(200);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

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
    deliveredPackets: Number(m.deliveredPackets),
    steerMs: m.steer?.convergeMs ?? 0,
    steerWaitedMs: m.steer?.waitedMs ?? 0,
    steerInsideFreeze: !!m.steer && (m.steer.generation === '0' || m.steer.insideFreeze),
    handedOff: Number(m.handedOff),
    forwarded: Number(m.forwarded),
    steps: m.timings.flatMap((t) => t.steps.map((s) => ({ phase: String(t.phase), host: s.host, step: s.step, ms: s.ms }))),
    maxStallMs: after?.maxStallMs ?? 0,
    connections: after?.connections ?? 0,
    alive: after?.alive ?? 0,
    bytesLost: (after?.bytesLost ?? 0) - (before?.bytesLost ?? 0),
    bytesDuplicated: (after?.bytesDuplicated ?? 0) - (before?.bytesDuplicated ?? 0),
    corrupted: (after?.corrupted ?? 0) - (before?.corrupted ?? 0),
  };
}
