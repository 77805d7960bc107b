/**
 * `bench freeze` at a CI size: the same code the bench runs (CRIU alone on one host, then a
 * migration with a client checking every byte), so the bench cannot rot between full runs.
 * Checks what it reports and that nothing was lost, never how fast.
 */
import { describe, expect, it } from 'vitest';
import { breakdownTable, summaryTable } from '../../bench/freeze-report.js';
import { jsonLine, measureFreeze } from '../../bench/freeze.js';

describe('bench freeze (CI size)', () => {
  it('measures CRIU alone and migrations, plain and post-copy, with every phase and step of the freeze', async () => {
    const rows = await measureFreeze({ connections: [50], memory: [0, 32], runs: 1, postCopy: 'both', criuAlone: true, criuLogLevel: 4, log: () => undefined });
    expect(rows.map((r) => `${r.kind}/${r.memoryMiB}/${r.postCopy}`)).toEqual(['criu-alone/0/false', 'migration/0/false', 'criu-alone/32/false', 'migration/32/false', 'migration/32/true']);
    const [alone, moved] = rows;
    expect(alone.error).toBe('');
    expect(alone.ok).toBe(true);
    expect(alone.criuDumpMs).toBeGreaterThan(0);
    expect(alone.criuRestoreMs).toBeGreaterThan(0);
    expect(moved.error).toBe('');
    expect(moved).toMatchObject({ kind: 'migration', connections: 50, ok: true, survived: 50, bytesLost: 0, memoryIntact: null });
    expect(moved.freezeMs).toBeGreaterThan(moved.criuDumpMs);
    expect(moved.overheadPct).toBeCloseTo((100 * (moved.freezeMs - moved.criuDumpMs - moved.criuRestoreMs)) / (moved.criuDumpMs + moved.criuRestoreMs), 6);
    for (const phase of ['LOCK', 'DUMP', 'TRANSFER', 'RESTORE', 'UNLOCK'] as const) expect(moved.phases[phase]).toBeGreaterThan(0);
    expect(Object.keys(jsonLine(moved))).toEqual(expect.arrayContaining(['connections', 'memoryMiB', 'postCopy', 'freezeMs', 'criuDumpMs', 'criuRestoreMs', 'overheadPct', 'survived', 'bytesLost', 'memoryIntact']));
    // The memory-holding workload, moved with and without post-copy: every page as it was.
    for (const r of rows.slice(2)) {
      expect(r.error).toBe('');
      expect(r.ok).toBe(true);
      if (r.kind === 'migration') expect(r).toMatchObject({ memoryIntact: true, survived: 50, bytesLost: 0 });
    }
    expect(rows[4].lazyPagesMs).toBeGreaterThan(0);
    expect(rows[4].criuDumpMs).toBeGreaterThan(0);
    expect(summaryTable(rows)).toMatch(/^\| conns \|/);
    expect(breakdownTable(rows)).toContain('criu restore');
  }, 600_000);
});
