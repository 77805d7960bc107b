/** The fleet as the controller knows it: built from agents' heartbeats and steering acks on NATS. */
import type { Heartbeat, SteeringAck } from '../agent/heartbeat.js';
import type { Bus } from '../lib/bus.js';
import { PreconditionError, UnknownHostError } from '../lib/errors.js';
import { SUBJECTS } from '../lib/subjects.js';

/** Five missed heartbeats (1 s apart) and a host is no longer ready. */
export const HOST_STALE_MS = 5_000;

export interface HostRecord {
  heartbeat: Heartbeat;
  lastSeenMs: number;
  /** The steering generation the host's data plane holds, from its latest ack or heartbeat; undefined: no data plane. */
  steeringGeneration?: number;
}

export interface Convergence {
  /** Every ready host with a steering data plane holds >= the generation. */
  converged: boolean;
  /** From `sinceMs` to the moment the last host's ack arrived (or to the timeout). */
  convergeMs: number;
  /** Ready hosts still below the generation when the wait ended. */
  lagging: string[];
}

interface Waiter {
  generation: number;
  check: () => void;
}

export class HostRegistry {
  private readonly hosts = new Map<string, HostRecord>();
  private readonly waiters = new Set<Waiter>();
  private unsubscribe: (() => void)[] = [];

  start(bus: Bus): void {
    this.unsubscribe = [
      bus.subscribe<Heartbeat>(SUBJECTS.allHeartbeats, (hb) => this.observe(hb, Date.now())),
      bus.subscribe<SteeringAck>(SUBJECTS.allSteeringAcks, (ack) => this.observeAck(ack, Date.now())),
    ];
  }

  stop(): void {
    for (const u of this.unsubscribe) u();
  }

  observe(hb: Heartbeat, nowMs: number): void {
    if (typeof hb?.host !== 'string' || typeof hb.grpcAddress !== 'string') return;
    const steeringGeneration = typeof hb.steeringGeneration === 'number' ? hb.steeringGeneration : undefined;
    this.hosts.set(hb.host, { heartbeat: hb, lastSeenMs: nowMs, steeringGeneration });
    this.wake();
  }

  /** NATS keeps one publisher's order, so the latest message of a host (ack or heartbeat) says what it holds now. */
  observeAck(ack: SteeringAck, nowMs: number): void {
    if (typeof ack?.host !== 'string' || typeof ack.generation !== 'number') return;
    const h = this.hosts.get(ack.host);
    if (!h) return; // its first heartbeat registers it
    h.steeringGeneration = ack.generation;
    h.lastSeenMs = nowMs;
    this.wake();
  }

  list(nowMs = Date.now()): (HostRecord & { ready: boolean })[] {
    return [...this.hosts.values()]
      .map((h) => ({ ...h, ready: nowMs - h.lastSeenMs < HOST_STALE_MS }))
      .sort((a, b) => a.heartbeat.host.localeCompare(b.heartbeat.host));
  }

  /** The host, which must be known and recently heard from. */
  ready(name: string, nowMs = Date.now()): HostRecord {
    const h = this.hosts.get(name);
    if (!h) throw new UnknownHostError(name, [...this.hosts.keys()].sort());
    const silentMs = nowMs - h.lastSeenMs;
    if (silentMs >= HOST_STALE_MS)
      throw new PreconditionError(`host "${name}" has not sent a heartbeat for ${Math.round(silentMs / 1000)} s; check its agent`);
    return h;
  }

  /** Every host that ever registered: name -> data address ('' when it did not say). */
  addresses(): Map<string, string> {
    return new Map([...this.hosts.values()].map((h) => [h.heartbeat.host, h.heartbeat.dataAddress ?? '']));
  }

  /** Ready hosts with a steering data plane below `generation`. */
  lagging(generation: number, nowMs = Date.now()): string[] {
    return this.list(nowMs)
      .filter((h) => h.ready && h.steeringGeneration !== undefined && h.steeringGeneration < generation)
      .map((h) => h.heartbeat.host);
  }

  /**
   * Resolves once every ready host with a steering data plane holds >= `generation` (hosts that
   * fall silent meanwhile stop counting), or when `timeoutMs` passes: then `converged` is false
   * and `lagging` names the hosts still behind. Hosts without a data plane are not waited for.
   */
  waitForGeneration(generation: number, timeoutMs: number, sinceMs = Date.now()): Promise<Convergence> {
    return new Promise((resolve) => {
      const finish = (converged: boolean) => {
        clearTimeout(timer);
        this.waiters.delete(waiter);
        resolve({ converged, convergeMs: Math.max(0, nowPrecise() - sinceMs), lagging: converged ? [] : this.lagging(generation) });
      };
      const waiter: Waiter = { generation, check: () => this.lagging(generation).length === 0 && finish(true) };
      const timer = setTimeout(() => finish(this.lagging(generation).length === 0), timeoutMs);
      this.waiters.add(waiter);
      waiter.check();
    });
  }

  private wake(): void {
    for (const w of [...this.waiters]) w.check();
  }
}

function nowPrecise(): number {
  return performance.timeOrigin + performance.now();
}
