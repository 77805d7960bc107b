import { describe, expect, it } from 'vitest';
import { checkEvents, FAULT_PARTS, FAULT_POINTS, type FaultRow } from '../../bench/fault-case.js';
import { faultTable, jsonLine, matrixCases, QUICK_CASES, summaryLine } from '../../bench/faults-report.js';
import type { Phase } from '../../controller/migration-machine.js';

const ev = (phase: Phase, kind = 'SUCCEEDED') => ({ phase, kind });
const forward: Phase[] = ['PREPARE', 'LOCK', 'STEER', 'DUMP', 'TRANSFER', 'RESTORE', 'UNLOCK', 'CLEANUP'];

describe('fault matrix report', () => {
  it('has 32 cases of part x point, and 8 more with a standby taking over from the controller', () => {
    const all = matrixCases();
    expect(all.filter((c) => !c.standby)).toHaveLength(32);
    expect(all.filter((c) => c.standby)).toHaveLength(8);
    expect(all.filter((c) => c.standby).every((c) => c.killed === 'controller')).toBe(true);
    expect(matrixCases(FAULT_PARTS, FAULT_POINTS, false)).toHaveLength(32);
  });

  it('the CI subset kills every part at least once', () => {
    for (const p of FAULT_PARTS) expect(QUICK_CASES.some((c) => c.killed === p), p).toBe(true);
    expect(QUICK_CASES.some((c) => c.standby)).toBe(true);
  });

  it('events: every phase in order (a resumed phase may repeat), rollback last, the end present', () => {
    const done = [ev('PENDING'), ...forward.map((p) => ev(p)), ev('DONE')];
    expect(checkEvents(done, 'DONE')).toBe(true);
    const resumed = [ev('PENDING'), ...forward.slice(0, 6).map((p) => ev(p)), ev('RESTORE'), ...forward.slice(6).map((p) => ev(p)), ev('DONE')];
    expect(checkEvents(resumed, 'DONE')).toBe(true);
    expect(checkEvents([ev('PENDING'), ev('PREPARE'), ev('DUMP'), ev('ROLLBACK'), ev('FAILED', 'FAILED')], 'FAILED'), 'LOCK and STEER missing').toBe(false);
    expect(checkEvents([ev('PENDING'), ev('PREPARE'), ev('LOCK'), ev('ROLLBACK'), ev('FAILED', 'FAILED')], 'FAILED')).toBe(true);
    expect(checkEvents([ev('PENDING'), ev('PREPARE'), ev('LOCK'), ev('FAILED', 'FAILED')], 'FAILED'), 'no rollback').toBe(false);
    expect(checkEvents(done.filter((e) => e.phase !== 'UNLOCK'), 'DONE')).toBe(false);
  });

  it('prints the issue\'s --json fields and one table row per case', () => {
    const row: FaultRow = {
      killed: 'controller', point: 'after-dump', standby: false, migrationId: 'm-1', from: 'a', to: 'b', killedAtPoint: true, outcome: 'FAILED',
      error: 'the controller stopped during DUMP; rolled back', safe: true, exactlyOnce: true, survived: 'a', connections: 200, alive: 200,
      bytesLost: 0, bytesDuplicated: 0, leftovers: [], eventsInOrder: true, recoveredMs: 4200, nats: 'single',
    };
    const j = JSON.parse(jsonLine(row)) as Record<string, unknown>;
    for (const k of ['killed', 'point', 'standby', 'outcome', 'safe', 'exactlyOnce', 'survived', 'connections', 'bytesLost', 'leftovers']) expect(j).toHaveProperty(k);
    expect(j.leftovers).toBe(0);
    const table = faultTable([row]).split('\n');
    expect(table).toHaveLength(3);
    expect(table[2]).toMatch(/\| controller \| single \| after-dump \|  \| FAILED \| yes \|/);
    expect(summaryLine([row])).toBe('1/1 cases safe (DONE 0, FAILED 1, NEEDS_ATTENTION 0, unfinished 0)');
  });
});
