/**
 * CancelMigration: a migration asked to stop before its pivot stops at its next phase boundary
 * and rolls back (the orchestrator asks `stopBefore` before each phase it runs, and feeds the
 * machine a failure of that phase instead of running it: the machine's own rollback path). From
 * RESTORE on the workload is (being) restored on the target, so a cancel is refused.
 */
import { MigrationNotFoundError, PreconditionError } from '../lib/errors.js';
import { FORWARD, isTerminal, type MigrationState, type Phase } from './migration-machine.js';

/** The last phase a cancel may be accepted in: the next one it stops before is at most RESTORE. */
const LAST_CANCELLABLE: Phase = 'TRANSFER';

export const CANCELLED_ERROR = 'cancelled on request (CancelMigration) before the pivot; rolled back';

export class MigrationPastPivotError extends PreconditionError {
  constructor(readonly migrationId: string, readonly phase: Phase, readonly targetHost: string) {
    super(
      phase === 'ROLLBACK'
        ? `migration ${migrationId} is rolling back already; it cannot be cancelled`
        : `migration ${migrationId} is past its pivot (phase ${phase}): the workload has already moved to host "${targetHost}"; it cannot be cancelled (migrate it back instead)`,
    );
    this.name = 'MigrationPastPivotError';
  }
}

export class MigrationEndedError extends PreconditionError {
  constructor(readonly migrationId: string, readonly phase: Phase, targetHost: string) {
    super(
      phase === 'DONE'
        ? `migration ${migrationId} has ended: the workload has already moved to host "${targetHost}"; nothing to cancel (migrate it back instead)`
        : `migration ${migrationId} has ended (${phase}); nothing to cancel`,
    );
    this.name = 'MigrationEndedError';
  }
}

export class MigrationCancels {
  /** Migrations running here, by id: the phase running (or about to run) now. */
  private readonly running = new Map<string, Phase>();
  private readonly requested = new Set<string>();

  /**
   * The orchestrator, before it runs `phase` of the migration: true when a cancel was accepted
   * and the phase must not run (it is recorded as failed, which rolls the migration back).
   */
  stopBefore(state: MigrationState, phase: Phase): boolean {
    this.running.set(state.id, phase);
    return this.requested.has(state.id) && cancellableBefore(phase);
  }

  /**
   * Accepts the cancel of a migration that has not reached its pivot; `state` is its record.
   * Throws NOT_FOUND for an unknown migration, FAILED_PRECONDITION when it is past its pivot,
   * ended, or not run by this controller.
   */
  request(id: string, state: MigrationState | undefined): void {
    if (!state) throw new MigrationNotFoundError(id);
    if (isTerminal(state.phase)) throw new MigrationEndedError(id, state.phase, state.request.targetHost);
    // The live phase (ahead of the record by at most one save); PENDING until the first phase.
    const phase = this.running.get(id) ?? state.phase;
    if (phase !== 'PENDING' && !cancellableNow(phase)) throw new MigrationPastPivotError(id, phase, state.request.targetHost);
    this.requested.add(id);
  }

  wasCancelled(id: string): boolean {
    return this.requested.has(id);
  }

  /** The migration ended: nothing to keep. */
  forget(id: string): void {
    this.running.delete(id);
    this.requested.delete(id);
  }
}

function cancellableNow(phase: Phase): boolean {
  const i = FORWARD.indexOf(phase);
  return i >= 0 && i <= FORWARD.indexOf(LAST_CANCELLABLE);
}

function cancellableBefore(phase: Phase): boolean {
  const i = FORWARD.indexOf(phase);
  return i >= 0 && i <= FORWARD.indexOf('RESTORE');
}
