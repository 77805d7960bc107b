/**
 * The lock modes of the Linux platform (agent/lock-strategy.ts): EBPF, godwit's XDP lock holding
 * the endpoints while CRIU dumps and restores with `--network-lock skip`; and IPTABLES / NFTABLES,
 * CRIU's own lock (criu-netfilter.ts says what CRIU makes and removes).
 */
import type { Logger } from 'pino';
import type { Endpoint } from '../../lib/endpoint.js';
import { PreconditionError } from '../../lib/errors.js';
import type { LockModeName, LockResidue, LockStrategy } from '../lock-strategy.js';
import type { Criu, CriuNetworkLock } from './criu.js';
import { readImageLock, type ImageLockInfo } from './criu-image.js';
import { nftTableName, type CriuLockMode, type CriuLockSet, type CriuNetfilter } from './criu-netfilter.js';

/** The lock mode's strategy on this host. */
export function linuxLockStrategy(mode: LockModeName, criu: Criu, netfilter: CriuNetfilter, log: Logger): LockStrategy {
  return mode === 'EBPF' ? new EbpfLockStrategy(criu) : new CriuNetfilterLockStrategy(mode, criu, netfilter, log);
}

/** godwit's XDP lock holds the endpoints; CRIU is told to lock nothing (`--network-lock skip`). */
export class EbpfLockStrategy implements LockStrategy {
  readonly mode = 'EBPF';
  readonly holdsEndpoints = true;

  constructor(private readonly criu: Criu) {}

  async lock(): Promise<void> {}

  async dump(pid: number, _endpoints: readonly Endpoint[], imageDir: string) {
    const r = await this.criu.dump(pid, imageDir, 'skip');
    return { durationMs: r.durationMs, connections: 0 };
  }

  async beforeRestore() {
    return { rules: 0, installMs: 0 };
  }

  restore(imageDir: string) {
    return this.criu.restore(imageDir, 'skip');
  }

  connections(): number {
    return 0;
  }

  async removeResidue() {
    return { removed: 0, description: 'nothing' };
  }
}

/**
 * CRIU's own lock: the dump locks every connection and leaves that lock on the source; the target
 * makes the same lock before restore, which removes it right before the workload resumes. The
 * residue is the CriuLockSet: the image's connections, and the nftables table's name.
 */
export class CriuNetfilterLockStrategy implements LockStrategy {
  readonly holdsEndpoints = false;

  constructor(
    readonly mode: CriuLockMode,
    private readonly criu: Criu,
    private readonly netfilter: CriuNetfilter,
    private readonly log: Logger,
  ) {}

  private get method(): CriuNetworkLock {
    return this.mode === 'IPTABLES' ? 'iptables' : 'nftables';
  }

  lock(): Promise<void> {
    // CRIU locks each connection itself during the dump; here only check that it can.
    return this.netfilter.check(this.mode);
  }

  /**
   * A dump that dies without unlocking (nftables above about 500 connections: glibc's FD_SETSIZE
   * abort) leaves its lock on the still-running workload's connections: removed here at once.
   */
  async dump(pid: number, endpoints: readonly Endpoint[], imageDir: string) {
    const tablesBefore = this.mode === 'NFTABLES' ? await this.netfilter.tables().catch(() => [] as string[]) : [];
    let durationMs: number;
    try {
      durationMs = (await this.criu.dump(pid, imageDir, this.method)).durationMs;
    } catch (err) {
      const locals = new Set(endpoints.map((e) => `${e.address}:${e.port}`));
      const removed = await this.netfilter.removeStray(this.mode, locals, tablesBefore).catch((e: Error) => [`cleanup failed: ${e.message}`]);
      if (removed.length > 0) {
        this.log.warn({ removed }, 'dump failed and left CRIU lock behind; removed');
        if (err instanceof Error) err.message += `; removed what CRIU left: ${removed.join(', ')}`;
      }
      throw err;
    }
    const lock = this.lockSet(await readImageLock(imageDir));
    return { durationMs, residue: lock as unknown as LockResidue, connections: lock.connections.length };
  }

  async beforeRestore(migrationId: string, imageDir: string, keep: (residue: LockResidue) => void) {
    const info = await readImageLock(imageDir);
    if (info.method !== this.method)
      throw new PreconditionError(
        `the image of migration ${migrationId} was dumped with --network-lock ${info.method}, not ${this.method} (lock mode ${this.mode}); CRIU restores with the image's method`,
      );
    if (this.mode === 'NFTABLES' && !info.runId) throw new PreconditionError(`the image of migration ${migrationId} records no CRIU run id: cannot name CRIU's nftables table`);
    const lock = this.lockSet(info);
    keep(lock as unknown as LockResidue);
    const t0 = performance.now();
    const rules = await this.netfilter.install(lock);
    return { rules, installMs: performance.now() - t0 };
  }

  restore(imageDir: string) {
    return this.criu.restore(imageDir, this.method);
  }

  connections(residue: LockResidue): number {
    return asLockSet(residue).connections.length;
  }

  async removeResidue(residue: LockResidue) {
    const lock = asLockSet(residue);
    const removed = await this.netfilter.remove(lock);
    const what = lock.mode === 'IPTABLES' ? 'iptables rule(s)' : `nftables element(s) (table ${lock.table})`;
    return { removed, description: `${removed} ${what} of CRIU's ${lock.mode} lock` };
  }

  private lockSet(info: ImageLockInfo): CriuLockSet {
    return { mode: this.mode, connections: info.connections, ...(this.mode === 'NFTABLES' && info.runId ? { table: nftTableName(info.runId) } : {}) };
  }
}

/** A residue this strategy wrote (a CriuLockSet, through the migration record's JSON). */
function asLockSet(residue: LockResidue): CriuLockSet {
  const r = residue as Partial<CriuLockSet>;
  if ((r.mode !== 'IPTABLES' && r.mode !== 'NFTABLES') || !Array.isArray(r.connections)) throw new Error(`not a CRIU lock residue: ${JSON.stringify(residue).slice(0, 200)}`);
  return r as CriuLockSet;
}
