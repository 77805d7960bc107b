/**
 * What this agent has done for each migration, kept on disk so that Abort and retries work after
 * an agent restart. Every RPC that changes the host records its effect here before returning, so
 * Abort knows exactly what to undo and nothing else.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync, renameSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Endpoint } from '../lib/endpoint.js';
import type { LockModeName, LockResidue } from './lock-strategy.js';
import type { ProcessId } from './platform.js';

export interface AgentMigrationRecord {
  migrationId: string;
  /** Lock entries this agent set, and their version. */
  locked: Endpoint[];
  lockVersion?: string;
  /** The migration's lock mode, as Lock, Checkpoint or Restore named it (absent: EBPF). */
  lockMode?: LockModeName;
  /**
   * What the lock mode left on this host (lock-strategy.ts): on the source what the dump left
   * behind, on the target what was made before the restore. Release, Unlock and Abort remove it.
   */
  lockResidue?: LockResidue;
  /** Addresses this agent brought up for the migration (target side). */
  addedAddresses: string[];
  /** The workload as it was dumped here (source side). */
  dumped?: { pid: number; endpoints: Endpoint[] };
  /** The workload's PID after this agent restored it (target side, or source after an abort). */
  restoredPid?: number;
  /**
   * Steering: which state is the workload's (its addresses and backend ids). Source: what
   * SendImage exported and Release removes; target: what Restore imported and Abort removes.
   */
  steerSelector?: { addresses: string[]; backendIds: number[] };
  /** Target: Restore imported the steering state that came with the image. */
  steerImported?: boolean;
  /** Source: this host's forwarded-packet counter when Lock ran (decimal), for Release's count. */
  forwardedAtLock?: string;
  /**
   * Post-copy, source: where CRIU serves the memory the image left out, how much, and since when
   * (epoch ms); reclaimed once a rollback fetched it back into the image.
   */
  /** `server`: the page server's PID and start time, for an agent started again while it serves. */
  postCopy?: { pageServer: string; lazyBytes: number; readyAtMs: number; reclaimed?: boolean; server?: ProcessId };
  imageReceived: boolean;
  released: boolean;
  aborted: boolean;
  /**
   * Written before CRIU starts (agent/interrupted-steps.ts): an agent killed mid-dump or
   * mid-restore finds, after its restart, that a CRIU run of its own may have finished without it.
   */
  dumpStarted?: { pid: number; endpoints: Endpoint[] };
  restoreStarted?: boolean;
  /**
   * This host's part is over and nothing needs the image folder any more (source released,
   * target's image discarded after DONE, or an abort that brought the workload back): the
   * start-up sweep removes a folder left behind.
   */
  ended?: boolean;
}

export class MigrationRecords {
  private readonly dir: string;

  constructor(stateDir: string) {
    this.dir = join(stateDir, 'migrations');
    mkdirSync(this.dir, { recursive: true });
  }

  get(migrationId: string): AgentMigrationRecord {
    try {
      const r = JSON.parse(readFileSync(this.path(migrationId), 'utf8')) as AgentMigrationRecord & { criuLock?: LockResidue };
      // Records written before lock strategies kept the residue as `criuLock`.
      if (r.criuLock && !r.lockResidue) r.lockResidue = r.criuLock;
      delete r.criuLock;
      return r;
    } catch {
      return { migrationId, locked: [], addedAddresses: [], imageReceived: false, released: false, aborted: false };
    }
  }

  /** Whether this host has done anything for the migration (a record is written by its first step). */
  has(migrationId: string): boolean {
    return existsSync(this.path(migrationId));
  }

  /** Applies `change` to the record and writes it atomically (rename). */
  update(migrationId: string, change: (r: AgentMigrationRecord) => void): AgentMigrationRecord {
    const r = this.get(migrationId);
    change(r);
    const tmp = this.path(migrationId) + '.tmp';
    writeFileSync(tmp, JSON.stringify(r, null, 2));
    renameSync(tmp, this.path(migrationId));
    return r;
  }

  ids(): string[] {
    return readdirSync(this.dir).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5));
  }

  private path(migrationId: string): string {
    return join(this.dir, `${migrationId}.json`);
  }
}
