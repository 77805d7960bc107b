/**
 * Connection counts at which CRIU's own network locks (lock modes IPTABLES and NFTABLES) are known
 * to lose the workload or its connections, and the pre-flight decision that refuses them. EBPF
 * (one XDP map entry per endpoint) is not limited here: it moved 5,000 connections in every run.
 *
 * Measured on this machine with CRIU 4.2, a -> b in the lab, live echo clients, at least 3 runs
 * per point (npm run bench -- lock; bench/results/lock.jsonl, 2026-11-21):
 *   NFTABLES   500: moved, every connection kept.  1,000, 1,500 and 5,000: the dump dies of
 *              SIGABRT (glibc's "bit out of range 0 - FD_SETSIZE on fd_set": its netlink
 *              round-trip uses select() once CRIU's descriptors pass FD_SETSIZE, 1024), the
 *              migration fails at DUMP and 250 of the connections CRIU had already put in repair
 *              mode are reset on the still-running source.
 *   IPTABLES   1,000: moved, but frozen about 60 s (two iptables processes per connection);
 *              1,500: about 105 s.  5,000: the restore fails on the target and again on the
 *              source's rollback ("Unable to set window parameters"), in every run: the
 *              workload is lost.
 */
import { UnsafeLockModeError } from '../lib/errors.js';
import type { LockMode } from './migration-machine.js';

export interface CriuLockLimit {
  /** Refused from this many TCP connections of the workload up. */
  refuseAt: number;
  /** What goes wrong there, for the refusal's message. */
  failure: string;
}

export const CRIU_LOCK_LIMITS: Readonly<Partial<Record<LockMode, CriuLockLimit>>> = {
  // Fine at 500, aborted at 1,000 and above: the first failing count lies between, not measured
  // finer; half of FD_SETSIZE keeps below it.
  NFTABLES: {
    refuseAt: 512,
    failure: "CRIU's nftables lock aborts the dump (SIGABRT, FD_SETSIZE) from about 1,000 connections and resets about 250 of them",
  },
  // Survives 1,500 (frozen about 105 s), loses the workload at 5,000: refused between.
  IPTABLES: {
    refuseAt: 2000,
    failure: "CRIU's iptables lock freezes the workload for about 60 s at 1,000 connections, and at 5,000 its restore fails on the target and on the rollback, losing the workload",
  },
};

/**
 * The refusal for a migration under `lockMode` of a workload holding `tcpConnections`, or
 * undefined when the mode is within its limit or the request accepts the risk.
 */
export function unsafeLockRefusal(lockMode: LockMode, tcpConnections: number, allowUnsafeLock = false): UnsafeLockModeError | undefined {
  const limit = CRIU_LOCK_LIMITS[lockMode];
  if (!limit || allowUnsafeLock || tcpConnections < limit.refuseAt) return undefined;
  return new UnsafeLockModeError(lockMode, tcpConnections, limit.refuseAt, limit.failure);
}
