import type { Endpoint } from '../lib/endpoint.js';

/**
 * A locked endpoint as the host sees it. deadlineNs is CLOCK_MONOTONIC on that host
 * (process.hrtime.bigint() there), so it is meaningful only to the agent that wrote it.
 */
export interface LockEntry {
  endpoint: Endpoint;
  version: bigint;
  deadlineNs: bigint;
  /** Packets dropped for this entry since it was last written (a lock that rewrites an entry starts it over). */
  drops: bigint;
  /** The lease has run out: the lock no longer drops anything, the entry just awaits a sweep. */
  expired: boolean;
}

/**
 * One connection as the host sees it: the local end is the workload's (proto, address, port),
 * the remote end its peer. The lock matches the packets that arrive from the peer.
 */
export interface FourTuple {
  proto: 'tcp' | 'udp';
  localAddress: string;
  localPort: number;
  remoteAddress: string;
  remotePort: number;
}

/** A locked connection as the host sees it; the fields mean what they mean in LockEntry. */
export interface TupleLockEntry {
  tuple: FourTuple;
  version: bigint;
  deadlineNs: bigint;
  drops: bigint;
  expired: boolean;
}

/**
 * The network lock of one host: while an endpoint is locked, packets to it are dropped
 * silently (no RST), so the peers of a frozen or not-yet-restored workload retransmit later.
 *
 * Every entry is a lease (a lock never outlives its deadline, even if whoever took it died)
 * and carries a version: lock and unlock are idempotent, version-guarded sets, never toggles,
 * so a duplicated or reordered control message cannot flip the state.
 *
 * Two kinds of entry, held side by side: an endpoint (every packet to a listening address and
 * port) and an exact connection (a 4-tuple). A packet is dropped when either matches with a
 * running lease; each kind has its own versions. An endpoint with port ANY_PORT
 * (lib/endpoint.ts addressWide) is address-wide: it matches every port of its address and
 * protocol that no exact endpoint entry matches, and is locked, unlocked and versioned on its own.
 */
export interface NetLock {
  /** Load the program and attach it to the interface; reuse pinned maps if present (a held lock survives an agent restart). Idempotent. */
  install(): Promise<void>;
  /** Set lock entries (idempotent set, version-guarded), with a lease of leaseMs from now. */
  lock(endpoints: Endpoint[], version: bigint, leaseMs: number): Promise<void>;
  /** Remove entries whose version <= version. Idempotent: missing entries are fine. */
  unlock(endpoints: Endpoint[], version: bigint): Promise<void>;
  list(): Promise<LockEntry[]>;
  /**
   * Set exact-connection lock entries, like lock(): idempotent, version-guarded (an entry with a
   * newer version is left alone), with a lease of leaseMs from now. Many thousands per call.
   */
  lockTuples(tuples: readonly FourTuple[], version: bigint, leaseMs: number): Promise<void>;
  /** Remove connection entries whose version <= version. Idempotent: missing entries are fine. */
  unlockTuples(tuples: readonly FourTuple[], version: bigint): Promise<void>;
  listTuples(): Promise<TupleLockEntry[]>;
  /** Delete entries (endpoints and connections) whose lease has passed; returns how many. */
  sweepExpired(): Promise<number>;
  /**
   * Entries (endpoints and connections) as this process last wrote or read them, without reading
   * the maps: exact right after sweepExpired(); undefined before anything was read.
   */
  entryCount(): number | undefined;
  /** Detach the program and remove this host's pins (lab teardown). */
  uninstall(): Promise<void>;
}

/** A lock/unlock request is malformed (bad endpoint, version or lease); fix the request. */
export class LockRequestError extends Error {
  constructor(
    readonly field: 'endpoints' | 'tuples' | 'version' | 'leaseMs',
    message: string,
  ) {
    super(message);
    this.name = 'LockRequestError';
  }
}
