import { describe, expect, it } from 'vitest';
import { status } from '@grpc/grpc-js';
import { MigrationCancels } from '../../controller/cancel.js';
import { MigrationClaims, WorkloadMovingError } from '../../controller/migration-claims.js';
import { newMigration, type MigrationState, type Phase } from '../../controller/migration-machine.js';

const state = (phase: Phase): MigrationState => ({
  ...newMigration('m-1', { sourceHost: 'a', targetHost: 'b', workload: { pid: 10, endpoints: [] }, lockMode: 'EBPF', lockLeaseMs: 1000 }, '1', 0),
  phase,
});

describe('cancel: before the pivot only', () => {
  it('a cancel accepted before the pivot stops the next phase up to RESTORE, never ROLLBACK', () => {
    for (const running of ['PREPARE', 'LOCK', 'STEER', 'DUMP', 'TRANSFER'] as Phase[]) {
      const c = new MigrationCancels();
      expect(c.stopBefore(state(running), running)).toBe(false);
      c.request('m-1', state(running));
      const next: Phase = running === 'TRANSFER' ? 'RESTORE' : 'DUMP';
      expect(c.stopBefore(state(next), next), `after ${running}`).toBe(true);
      expect(c.stopBefore(state('ROLLBACK'), 'ROLLBACK')).toBe(false);
    }
    // Accepted before the first phase ran.
    const c = new MigrationCancels();
    c.request('m-1', state('PENDING'));
    expect(c.stopBefore(state('PREPARE'), 'PREPARE')).toBe(true);
  });

  it('from RESTORE on: FAILED_PRECONDITION saying it has already moved', () => {
    for (const running of ['RESTORE', 'UNLOCK', 'CLEANUP'] as Phase[]) {
      const c = new MigrationCancels();
      c.stopBefore(state(running), running);
      expect(() => c.request('m-1', state(running))).toThrow(expect.objectContaining({ code: status.FAILED_PRECONDITION, message: expect.stringMatching(/already moved to host "b"/) }));
    }
    expect(() => new MigrationCancels().request('m-1', state('DONE'))).toThrow(expect.objectContaining({ code: status.FAILED_PRECONDITION, message: expect.stringMatching(/has ended: the workload has already moved to host "b"/) }));
    expect(() => new MigrationCancels().request('m-9', undefined)).toThrow(expect.objectContaining({ code: status.NOT_FOUND }));
  });
});

describe('claims: one migration per workload', () => {
  it('the same host+pid or the same name is refused, naming the running migration; released claims free it', () => {
    const claims = new MigrationClaims();
    const release = claims.claim({ sourceHost: 'a', pid: 10, workloadName: 'web' }, 'm-1');
    const err = (() => {
      try {
        claims.claim({ sourceHost: 'a', pid: 10 }, 'm-2');
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(WorkloadMovingError);
    expect(err).toMatchObject({ code: status.FAILED_PRECONDITION, migrationId: 'm-1' });
    expect(() => claims.claim({ sourceHost: 'c', pid: 99, workloadName: 'web' }, 'm-3')).toThrow(/workload "web" is already moving \(migration m-1\)/);
    // Another workload is free to go meanwhile.
    claims.claim({ sourceHost: 'a', pid: 11 }, 'm-4');
    release();
    expect(() => claims.claim({ sourceHost: 'a', pid: 10, workloadName: 'web' }, 'm-5')).not.toThrow();
  });
});
