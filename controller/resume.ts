/**
 * What a controller does when it becomes the leader: read every migration from KV (what the
 * previous leader recorded, before each call to a host) and drive each unfinished one on from
 * its recorded phase (migration-machine.ts says how: rollback before the pivot, forward after).
 */
import type { Logger } from '../lib/log.js';
import { isTerminal, type MigrationState } from './migration-machine.js';
import type { MigrationStore } from './migration-store.js';
import type { Orchestrator } from './orchestrator.js';

export async function resumeUnfinished(
  store: MigrationStore,
  orchestrator: Orchestrator,
  log: Logger,
  /** Called before each is resumed (to follow it: the workload registry records where it ends). */
  beforeResume?: (m: MigrationState) => void,
): Promise<string[]> {
  await store.load();
  const resumed: string[] = [];
  for (const m of store.list()) {
    if (isTerminal(m.phase) || orchestrator.runningIds().includes(m.id)) continue;
    beforeResume?.(m);
    if (orchestrator.resume(m)) resumed.push(m.id);
  }
  if (resumed.length > 0) log.warn({ resumed }, 'resumed unfinished migrations');
  return resumed;
}
