/**
 * One migration per workload at a time. A Migrate request claims its workload (by source host
 * and PID, and by registered name when it has one) before anything awaits, so that two requests
 * racing through validation and preflight cannot both pass; the claim lasts until the migration
 * ends, or goes at once if the request is refused before it started.
 */
import { PreconditionError } from '../lib/errors.js';

/** The workload is moving already: the running migration is named. */
export class WorkloadMovingError extends PreconditionError {
  constructor(readonly workload: string, readonly migrationId: string) {
    super(`${workload} is already moving (migration ${migrationId}); wait for it to end or cancel it (godwit cancel ${migrationId})`);
    this.name = 'WorkloadMovingError';
  }
}

export interface ClaimSubject {
  sourceHost: string;
  pid: number;
  workloadName?: string;
}

export class MigrationClaims {
  /** Claim key -> the migration holding it. */
  private readonly held = new Map<string, string>();

  /** Claims the workload for migration `id`; returns the release. WorkloadMovingError when it is claimed. */
  claim(w: ClaimSubject, id: string): () => void {
    const keys = claimKeys(w);
    for (const [key, what] of keys) {
      const holder = this.held.get(key);
      if (holder !== undefined) throw new WorkloadMovingError(what, holder);
    }
    for (const [key] of keys) this.held.set(key, id);
    return () => {
      for (const [key] of keys) if (this.held.get(key) === id) this.held.delete(key);
    };
  }

  /** The migration holding the workload, if any. */
  holder(w: ClaimSubject): string | undefined {
    for (const [key] of claimKeys(w)) {
      const h = this.held.get(key);
      if (h) return h;
    }
    return undefined;
  }
}

function claimKeys(w: ClaimSubject): [string, string][] {
  const keys: [string, string][] = [[`pid/${w.sourceHost}/${w.pid}`, `process ${w.pid} on "${w.sourceHost}"`]];
  if (w.workloadName) keys.push([`name/${w.workloadName}`, `workload "${w.workloadName}"`]);
  return keys;
}
