import { describe, expect, it } from 'vitest';
import { decide, FORWARD, freezeMs, newMigration, type MigrationEvent, type MigrationState, type Phase, type PhaseResult } from '../../controller/migration-machine.js';

const spec = {
  sourceHost: 'a',
  targetHost: 'b',
  workload: { pid: 42, endpoints: [{ proto: 'tcp' as const, address: '198.18.1.200', port: 7000 }] },
  lockMode: 'EBPF' as const,
  lockLeaseMs: 120_000,
};

let clock = 1_000;
const ok = (phase: Phase, result?: PhaseResult): MigrationEvent => {
  clock += 10;
  return { type: 'phase-succeeded', phase, startedAtMs: clock, durationMs: 5, result };
};
const fail = (phase: Phase, error: string): MigrationEvent => {
  clock += 10;
  return { type: 'phase-failed', phase, startedAtMs: clock, durationMs: 5, error };
};

function runToEnd(state: MigrationState, outcome: (phase: Phase) => MigrationEvent): { state: MigrationState; ran: Phase[] } {
  let d = decide(state, { type: 'start', atMs: 0 });
  const ran: Phase[] = [];
  while (d.commands.length > 0) {
    const phase = d.commands[0].phase;
    ran.push(phase);
    d = decide(d.state, outcome(phase));
  }
  return { state: d.state, ran };
}

describe('migration state machine', () => {
  const fresh = () => newMigration('m-1', spec, '1000', 0);

  it('runs every phase in order and ends DONE with the restored pid', () => {
    const { state, ran } = runToEnd(fresh(), (p) => ok(p, p === 'RESTORE' ? { restoredPid: 77 } : p === 'DUMP' ? { imageBytes: 4096 } : undefined));
    expect(ran).toEqual([...FORWARD]);
    expect(state.phase).toBe('DONE');
    expect(state.restoredPid).toBe(77);
    expect(state.imageBytes).toBe(4096);
    expect(state.timings.map((t) => t.phase)).toEqual([...FORWARD]);
    expect(state.error).toBeUndefined();
  });

  it('steers right after LOCK, while both hosts hold the traffic, and before the dump', () => {
    expect(FORWARD.slice(0, 4)).toEqual(['PREPARE', 'LOCK', 'STEER', 'DUMP']);
    expect(FORWARD.indexOf('STEER')).toBeLessThan(FORWARD.indexOf('UNLOCK'));
  });

  it('keeps the steer record: issued at STEER, completed by UNLOCK, handoff and forwarding counted', () => {
    const results: Partial<Record<Phase, PhaseResult>> = {
      STEER: { steer: { generation: 7, issuedAtMs: 5, backendIds: [3, 4] } },
      TRANSFER: { handedOff: 120 },
      UNLOCK: { deliveredPackets: 2, steer: { convergeMs: 12.5, converged: true, lagging: [], waitedMs: 0 } },
      CLEANUP: { forwarded: 9 },
    };
    const { state } = runToEnd(fresh(), (p) => ok(p, results[p]));
    expect(state.phase).toBe('DONE');
    expect(state.steer).toEqual({ generation: 7, issuedAtMs: 5, backendIds: [3, 4], convergeMs: 12.5, converged: true, lagging: [], waitedMs: 0 });
    expect(state.handedOff).toBe(120);
    expect(state.forwarded).toBe(9);
    expect(state.deliveredPackets).toBe(2);
  });

  it('rolls back a failure after STEER with the steer record kept (ROLLBACK places the workload back) and records the reverting generation', () => {
    const { state, ran } = runToEnd(fresh(), (p) =>
      p === 'STEER' ? ok(p, { steer: { generation: 7, issuedAtMs: 5, backendIds: [3] } }) : p === 'RESTORE' ? fail(p, 'criu restore failed') : p === 'ROLLBACK' ? ok(p, { restoredPid: 42, steer: { revertedGeneration: 8 } }) : ok(p),
    );
    expect(ran).toEqual(['PREPARE', 'LOCK', 'STEER', 'DUMP', 'TRANSFER', 'RESTORE', 'ROLLBACK']);
    expect(state.phase).toBe('FAILED');
    expect(state.steer).toMatchObject({ generation: 7, revertedGeneration: 8 });
  });

  for (const failing of ['PREPARE', 'LOCK', 'STEER', 'DUMP', 'TRANSFER', 'RESTORE'] as Phase[]) {
    it(`rolls back when ${failing} fails (at or before the pivot) and ends FAILED with the cause`, () => {
      const { state, ran } = runToEnd(fresh(), (p) => (p === failing ? fail(p, `${p} broke`) : ok(p, p === 'ROLLBACK' ? { restoredPid: 99 } : undefined)));
      expect(ran[ran.length - 1]).toBe('ROLLBACK');
      expect(ran).not.toContain('UNLOCK');
      expect(state.phase).toBe('FAILED');
      expect(state.failedPhase).toBe(failing);
      expect(state.error).toBe(`${failing} broke`);
      expect(state.restoredPid).toBe(99);
    });
  }

  for (const failing of ['UNLOCK', 'CLEANUP'] as Phase[]) {
    it(`rolls forward when ${failing} fails after the pivot, recording a warning`, () => {
      const { state, ran } = runToEnd(fresh(), (p) => (p === failing ? fail(p, 'flaky') : ok(p)));
      expect(ran).not.toContain('ROLLBACK');
      expect(state.phase).toBe('DONE');
      expect(state.warnings).toEqual([`${failing}: flaky`]);
    });
  }

  it('a failed rollback ends NEEDS_ATTENTION, with the error and what is known', () => {
    const { state } = runToEnd(fresh(), (p) => (p === 'DUMP' ? fail(p, 'criu dump failed') : p === 'ROLLBACK' ? fail(p, 'source gone') : ok(p)));
    expect(state.phase).toBe('NEEDS_ATTENTION');
    expect(state.error).toBe('criu dump failed; rollback failed: source gone');
    // The DUMP call failed, but CRIU may have finished before it did: the note says where to look.
    expect(state.attention).toMatch(/a dump was begun: if CRIU finished it, the image is in images\/m-1 under the agent's state folder on host "a"/);
    expect(state.attention).toMatch(/held until .*Z \(their lease\)/);
    const early = runToEnd(fresh(), (p) => (p === 'LOCK' ? fail(p, 'lock refused') : p === 'ROLLBACK' ? fail(p, 'source gone') : ok(p))).state;
    expect(early.attention).toMatch(/no image was taken/);
    expect(decide(state, { type: 'resume', atMs: 1, controller: 'c2' }).commands).toEqual([]);
  });

  it('RetryMigration rolls a NEEDS_ATTENTION migration back again; any other phase is left as it is', () => {
    const { state } = runToEnd(fresh(), (p) => (p === 'DUMP' ? fail(p, 'criu dump failed') : p === 'ROLLBACK' ? fail(p, 'source gone') : ok(p)));
    const d = decide(state, { type: 'retry', atMs: 5, controller: 'c2' });
    expect(d.state.phase).toBe('ROLLBACK');
    expect(d.commands).toEqual([{ type: 'run-phase', phase: 'ROLLBACK' }]);
    expect(d.state.attention).toBeUndefined();
    expect(d.state.controllers).toContain('c2');
    expect(d.state.warnings.at(-1)).toMatch(/NEEDS_ATTENTION retried by request/);
    expect(decide(d.state, ok('ROLLBACK')).state.phase).toBe('FAILED');
    expect(decide(decide(d.state, fail('ROLLBACK', 'still gone')).state, { type: 'retry', atMs: 6, controller: 'c2' }).commands).toEqual([{ type: 'run-phase', phase: 'ROLLBACK' }]);
    for (const other of [fresh(), runToEnd(fresh(), ok).state, runToEnd(fresh(), (p) => (p === 'DUMP' ? fail(p, 'x') : ok(p))).state]) {
      const r = decide(other, { type: 'retry', atMs: 7, controller: 'c2' });
      expect(r).toEqual({ state: other, commands: [] });
    }
  });

  describe('resume by a new controller', () => {
    /** The state as recorded when the old controller had entered `phase`. */
    function recordedAt(phase: Phase): MigrationState {
      let d = decide(fresh(), { type: 'start', atMs: 0 });
      while (d.state.phase !== phase) d = decide(d.state, ok(d.state.phase));
      return d.state;
    }

    for (const phase of ['PREPARE', 'LOCK', 'STEER', 'DUMP', 'TRANSFER'] as Phase[]) {
      it(`rolls back a migration stopped during ${phase} (before the pivot) and ends FAILED with the cause`, () => {
        const d = decide(recordedAt(phase), { type: 'resume', atMs: 5, controller: 'c2' });
        expect(d.commands).toEqual([{ type: 'run-phase', phase: 'ROLLBACK' }]);
        expect(d.state.failedPhase).toBe(phase);
        expect(d.state.error).toMatch(new RegExp(`stopped during ${phase}`));
        expect(d.state.controllers).toEqual(['c2']);
        const end = decide(d.state, ok('ROLLBACK', { restoredPid: 42 }));
        expect(end.state.phase).toBe('FAILED');
      });
    }

    for (const phase of ['RESTORE', 'UNLOCK', 'CLEANUP', 'ROLLBACK'] as Phase[]) {
      it(`asks again for ${phase} (the agents answer with what they did)`, () => {
        const at = phase === 'ROLLBACK' ? decide(recordedAt('DUMP'), fail('DUMP', 'x')).state : recordedAt(phase);
        const d = decide(at, { type: 'resume', atMs: 5, controller: 'c2' });
        expect(d.commands).toEqual([{ type: 'run-phase', phase }]);
        expect(d.state.warnings.at(-1)).toMatch(/resumed at/);
      });
    }

    it('starts a migration that was only accepted', () => {
      const d = decide(fresh(), { type: 'resume', atMs: 5, controller: 'c2' });
      expect(d.commands).toEqual([{ type: 'run-phase', phase: 'PREPARE' }]);
    });

    it('resuming after RESTORE finishes the migration forward', () => {
      let d = decide(recordedAt('RESTORE'), { type: 'resume', atMs: 5, controller: 'c2' });
      const ran: Phase[] = [];
      while (d.commands.length > 0) {
        ran.push(d.commands[0].phase);
        d = decide(d.state, ok(d.commands[0].phase, { restoredPid: 7 }));
      }
      expect(ran).toEqual(['RESTORE', 'UNLOCK', 'CLEANUP']);
      expect(d.state.phase).toBe('DONE');
    });
  });

  it('ignores a late or duplicated report of another phase', () => {
    const d1 = decide(fresh(), { type: 'start', atMs: 0 });
    const d2 = decide(d1.state, ok('PREPARE'));
    expect(d2.state.phase).toBe('LOCK');
    const dup = decide(d2.state, ok('PREPARE'));
    expect(dup.state).toBe(d2.state);
    expect(dup.commands).toEqual([]);
  });

  it('does nothing once ended', () => {
    const { state } = runToEnd(fresh(), (p) => ok(p));
    expect(decide(state, { type: 'start', atMs: 1 })).toEqual({ state, commands: [] });
  });

  it('measures the freeze from the start of LOCK to the end of UNLOCK', () => {
    const s = fresh();
    s.timings = [
      { phase: 'PREPARE', startedAtMs: 0, durationMs: 50, ok: true },
      { phase: 'LOCK', startedAtMs: 100, durationMs: 20, ok: true },
      { phase: 'DUMP', startedAtMs: 120, durationMs: 100, ok: true },
      { phase: 'UNLOCK', startedAtMs: 500, durationMs: 25, ok: true },
    ];
    expect(freezeMs(s)).toBe(425);
    expect(freezeMs(fresh())).toBeUndefined();
  });
});
