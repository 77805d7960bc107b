/**
 * `bench follow`'s migration kind at a CI size: the same code the bench runs (a routed lab, a
 * workload behind a VIP, connections through the VIP and straight to its address, one migration
 * a -> b), so the bench cannot rot between full runs. Checks what it reports, not how fast.
 */
import { describe, expect, it } from 'vitest';
import { followMigrationTable, runFollowMigrations } from '../../bench/follow-migration.js';

describe('bench follow: migration kind (CI size)', () => {
  it('measures a migration through a VIP and reports every field, with nothing lost', async () => {
    const rows = await runFollowMigrations({ connections: [50], runs: 1, direct: 10, log: () => undefined });
    expect(rows).toHaveLength(1);
    const [r] = rows;
    expect(r.error).toBe('');
    expect(r).toMatchObject({ kind: 'migration', connections: 50, ok: true, survived: 60, bytesLost: 0, resets: 0 });
    expect(r.freezeMs).toBeGreaterThan(0);
    expect(r.steerMs).toBeGreaterThan(0);
    expect(typeof r.steerInsideFreeze).toBe('boolean');
    // The direct connections reach the old host through the router: it forwards them.
    expect(r.forwarded).toBeGreaterThan(0);
    expect(r.handedOff).toBeGreaterThan(0);
    const table = followMigrationTable(rows);
    for (const col of ['freeze ms', 'steer ms', 'inside freeze', 'forwarded', 'handed off', 'max stall ms', 'resets']) expect(table).toContain(col);
  }, 600_000);
});
