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
  /** Hosts that must still ack: looked up per ack, so a wait costs O(1) per ack, not O(hosts). */
  pending: Set<string>;
  finish: (converged: boolean) => void;
}

/** How often a wait drops pending hosts that fell silent (they no longer count as ready). */
const STALE_CHECK_MS = 1_000;

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
    if (steeringGeneration !== undefined) this.progress(hb.host, steeringGeneration);
  }

  /** NATS keeps one publisher's order, so the latest message of a host (ack or heartbeat) says what it holds now. */
  observeAck(ack: SteeringAck, nowMs: number): void {
    if (typeof ack?.host !== 'string' || typeof ack.generation !== 'number') return;
    const h = this.hosts.get(ack.host);
    if (!h) return; // its first heartbeat registers it
    h.steeringGeneration = ack.generation;
    h.lastSeenMs = nowMs;
    this.progress(ack.host, ack.generation);
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
  waitForGeneration(generation: number, timeoutMs: number, sinceMs = nowPrecise()): Promise<Convergence> {
    return new Promise((resolve) => {
      const pending = new Set(this.lagging(generation));
      const finish = (converged: boolean) => {
        clearTimeout(timer);
        clearInterval(staleCheck);
        this.waiters.delete(waiter);
        const stillReady = [...pending].filter((h) => this.isReady(h)).sort();
        resolve({ converged: converged || stillReady.length === 0, convergeMs: Math.max(0, nowPrecise() - sinceMs), lagging: stillReady });
      };
      const waiter: Waiter = { generation, pending, finish };
      const timer = setTimeout(() => finish(false), timeoutMs);
      const staleCheck = setInterval(() => {
        for (const h of pending) if (!this.isReady(h)) pending.delete(h);
        if (pending.size === 0) finish(true);
      }, STALE_CHECK_MS);
      if (pending.size === 0) finish(true);
      else this.waiters.add(waiter);
    });
  }

  private isReady(host: string, nowMs = Date.now()): boolean {
    const h = this.hosts.get(host);
    return h !== undefined && nowMs - h.lastSeenMs < HOST_STALE_MS;
  }

  /** A host now holds `generation`: it leaves every wait for that generation or an earlier one. */
  private progress(host: string, generation: number): void {
    for (const w of this.waiters) {
      if (generation >= w.generation && w.pending.delete(host) && w.pending.size === 0) w.finish(true);
    }
  }
}

function nowPrecise(): number {
  return performance.timeOrigin + performance.now();
}
