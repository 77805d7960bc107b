/** The fleet as the controller knows it: built from agents' heartbeats on NATS. */
import type { Heartbeat } from '../agent/heartbeat.js';
import type { Bus } from '../lib/bus.js';
import { PreconditionError, UnknownHostError } from '../lib/errors.js';
import { SUBJECTS } from '../lib/subjects.js';

/** Five missed heartbeats (1 s apart) and a host is no longer ready. */
export const HOST_STALE_MS = 5_000;

export interface HostRecord {
  heartbeat: Heartbeat;
  lastSeenMs: number;
}

export class HostRegistry {
  private readonly hosts = new Map<string, HostRecord>();
  private unsubscribe?: () => void;

  start(bus: Bus): void {
    this.unsubscribe = bus.subscribe<Heartbeat>(SUBJECTS.allHeartbeats, (hb) => this.observe(hb, Date.now()));
  }

  stop(): void {
    this.unsubscribe?.();
  }

  observe(hb: Heartbeat, nowMs: number): void {
    if (typeof hb?.host !== 'string' || typeof hb.grpcAddress !== 'string') return;
    this.hosts.set(hb.host, { heartbeat: hb, lastSeenMs: nowMs });
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
}
