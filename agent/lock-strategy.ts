/**
 * How a migration's network is held still on one host, as the migration steps need it: a lock
 * mode is a strategy the platform hands out (HostPlatform.lockStrategy), so the service speaks
 * only of lock, before dump, before restore, unlock, release and abort, and a new platform adds
 * its own modes without touching the service.
 *
 * Two kinds today (Linux, agent/linux/lock-strategies.ts): godwit's own lock, which holds the
 * endpoints (NetLock, with the held packets delivered after unlock), and modes where the
 * checkpointer locks each connection itself as it dumps it and unlocks it as it restores (CRIU's
 * iptables and nftables locks), which leave something on the host to clean up: their residue.
 */
import type { Endpoint } from '../lib/endpoint.js';

/** The lock modes of the wire (LockMode in proto/godwit/v1/types.proto); a platform has some of them. */
export type LockModeName = 'EBPF' | 'IPTABLES' | 'NFTABLES';

/**
 * What a lock mode left on this host for one migration (rules, a table), kept in the migration
 * record so that Unlock, Release and Abort remove it, also after an agent restart. Plain JSON,
 * opaque to the service: only the strategy that made it reads it.
 */
export type LockResidue = { readonly [key: string]: unknown };

export interface LockStrategy {
  readonly mode: LockModeName;
  /**
   * True: godwit's NetLock holds the workload's endpoints (the service locks and unlocks them, and
   * delivers the packets it held). False: the checkpointer locks each connection itself.
   */
  readonly holdsEndpoints: boolean;
  /** The Lock step, for what the mode needs beyond the endpoints: checks that this host can lock. */
  lock(): Promise<void>;
  /**
   * Before and around the dump: checkpoints the process tree with this mode's lock. A failed dump
   * leaves nothing of the lock behind. Returns what the dump left here (to record) and how many
   * connections it locked.
   */
  dump(pid: number, endpoints: readonly Endpoint[], imageDir: string): Promise<{ durationMs: number; residue?: LockResidue; connections: number }>;
  /**
   * Before restore: makes on this host what the restore needs of the lock (the lock the dump made
   * on the source). `keep` is called with the residue before anything is made, so that Abort
   * finds what a half-done install left.
   */
  beforeRestore(migrationId: string, imageDir: string, keep: (residue: LockResidue) => void): Promise<{ rules: number; installMs: number }>;
  /** Restores the process tree with this mode's lock (also Abort's restore on the source). */
  restore(imageDir: string): Promise<{ pid: number; durationMs: number }>;
  /** The connections a residue locks. */
  connections(residue: LockResidue): number;
  /** Unlock, release, abort: removes what is left of a residue here; says what, for the logs and Abort's actions. */
  removeResidue(residue: LockResidue): Promise<{ removed: number; description: string }>;
}
