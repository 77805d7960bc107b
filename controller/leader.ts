/**
 * One active controller among any number: a leader lease in JetStream KV. The holder renews it
 * by compare-and-set on the revision it last wrote; a standby that sees the same revision for a
 * whole lease time (by its own monotonic clock: no two machines' wall clocks are compared) takes
 * it by compare-and-set on that revision, so exactly one contender wins. The revision the winner
 * took it at is its fencing token: the KV's revisions only grow, so a later leader's token is
 * always larger, and agents refuse commands carrying an older one (agent/fencing.ts).
 *
 * A holder that cannot renew for a lease time (NATS unreachable, the process paused) stops
 * acting by itself: isLeader() turns false before any standby may take over.
 */
import { status } from '@grpc/grpc-js';
import type { JsonKv } from '../lib/bus.js';
import { GodwitError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';

/** JetStream KV bucket holding the lease under LEADER_KEY. */
export const CONTROLLERS_BUCKET = 'godwit_controllers';
export const LEADER_KEY = 'leader';
export const DEFAULT_LEADER_LEASE_MS = 6_000;

export interface LeaderRecord {
  /** The holder's controller id. */
  holder: string;
  /** Where the holder serves its gRPC API (what a refused write names). */
  address: string;
  leaseMs: number;
  /** Wall clock, for people reading the bucket; no decision uses it. */
  renewedAtMs: number;
  /** Set by a holder that stopped cleanly: free at once, no lease time to wait. */
  released?: boolean;
}

/** A write reached a standby controller: ask the leader. */
export class NotLeaderError extends GodwitError {
  readonly code = status.UNAVAILABLE;
  constructor(readonly leader: { holder: string; address: string } | undefined) {
    super(
      leader
        ? `this controller is a standby; the leader is controller "${leader.holder}" at ${leader.address}: send writes there`
        : 'this controller is a standby and no leader is known yet (one takes over within the lease time): retry',
    );
    this.name = 'NotLeaderError';
  }
}

export interface LeaderLeaseOptions {
  kv: JsonKv<LeaderRecord>;
  id: string;
  address: string;
  leaseMs?: number;
  log: Logger;
  /** Called each time this controller becomes the leader, with its fencing token. */
  onAcquired?: (token: string) => void | Promise<void>;
  /** Called when it stops being the leader (lost the compare-and-set, or could not renew). */
  onLost?: () => void;
  /** Monotonic clock, ms (tests). */
  now?: () => number;
}

export class LeaderLease {
  private readonly leaseMs: number;
  private readonly now: () => number;
  /** Revision of this controller's last write while it holds the lease. */
  private heldRevision = 0;
  private acquiredRevision = 0;
  private lastRenewedAt = 0;
  /** A standby's view: the revision last seen, since when (monotonic), and whose it was. */
  private seen: { revision: number; since: number; record: LeaderRecord } | undefined;
  private timer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> | undefined;
  private stopped = false;

  constructor(private readonly opts: LeaderLeaseOptions) {
    this.leaseMs = opts.leaseMs ?? DEFAULT_LEADER_LEASE_MS;
    this.now = opts.now ?? (() => performance.now());
  }

  /** Tries at once, then every third of the lease. */
  async start(): Promise<void> {
    await this.tick();
    this.timer = setInterval(() => void this.tick(), Math.max(100, Math.floor(this.leaseMs / 3)));
  }

  /** Holds the lease and renewed it less than a lease time ago. */
  isLeader(): boolean {
    return this.heldRevision > 0 && this.now() - this.lastRenewedAt < this.leaseMs;
  }

  /** The fencing token every command to an agent carries: the revision the lease was taken at ('0' when not leading). */
  token(): string {
    return this.isLeader() ? String(this.acquiredRevision) : '0';
  }

  /** Who leads, as far as this controller knows. */
  leader(): { holder: string; address: string } | undefined {
    if (this.isLeader()) return { holder: this.opts.id, address: this.opts.address };
    const r = this.seen?.record;
    return r && !r.released ? { holder: r.holder, address: r.address } : undefined;
  }

  /** The one check every write of the controller API makes: UNAVAILABLE naming the leader on a standby. */
  requireLeader(): void {
    if (!this.isLeader()) throw new NotLeaderError(this.leader());
  }

  /** One round: renew (holder) or watch and take over (standby). Rounds never overlap. */
  tick(): Promise<void> {
    if (!this.ticking) this.ticking = this.round().finally(() => (this.ticking = undefined));
    return this.ticking;
  }

  private async round(): Promise<void> {
    if (this.stopped) return;
    if (this.heldRevision > 0) return this.renew();
    const { kv, id } = this.opts;
    try {
      const e = await kv.get(LEADER_KEY);
      if (!e) return await this.take(() => kv.create(LEADER_KEY, this.record()));
      const t = this.now();
      if (!this.seen || this.seen.revision !== e.revision) this.seen = { revision: e.revision, since: t, record: e.value };
      // Our own record from before a restart is no one's: the process that wrote it is gone.
      const free = e.value.released || t - this.seen.since >= this.leaseMs;
      if (free) await this.take(() => kv.update(LEADER_KEY, this.record(), e.revision));
      else if (e.value.holder === id) this.opts.log.debug('lease record names this controller but was not taken by this process');
    } catch (err) {
      // Lost the race to another standby, or NATS is unreachable: look again next round.
      this.opts.log.debug({ err: String(err) }, 'leader lease not taken');
    }
  }

  private async take(write: () => Promise<number>): Promise<void> {
    const revision = await write();
    this.heldRevision = revision;
    this.acquiredRevision = revision;
    this.lastRenewedAt = this.now();
    this.seen = undefined;
    this.opts.log.info({ controller: this.opts.id, fencingToken: revision }, 'leader lease taken: this controller leads');
    await this.opts.onAcquired?.(String(revision));
  }

  private async renew(): Promise<void> {
    const startedAt = this.now();
    try {
      this.heldRevision = await this.opts.kv.update(LEADER_KEY, this.record(), this.heldRevision);
      this.lastRenewedAt = startedAt;
    } catch (err) {
      const lostRace = /wrong last sequence/i.test(String(err));
      if (lostRace || this.now() - this.lastRenewedAt >= this.leaseMs) {
        this.opts.log.warn({ err: String(err), lostRace }, 'leader lease lost: this controller stops acting');
        this.heldRevision = 0;
        this.opts.onLost?.();
      } else {
        this.opts.log.warn({ err: String(err) }, 'leader lease not renewed; trying again');
      }
    }
  }

  /** Stops renewing; a holder marks the lease released so that a standby takes over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await this.ticking;
    if (this.heldRevision > 0) {
      await this.opts.kv.update(LEADER_KEY, { ...this.record(), released: true }, this.heldRevision).catch(() => undefined);
      this.heldRevision = 0;
    }
  }

  private record(): LeaderRecord {
    return { holder: this.opts.id, address: this.opts.address, leaseMs: this.leaseMs, renewedAtMs: Date.now() };
  }
}
