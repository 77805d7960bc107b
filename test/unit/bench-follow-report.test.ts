import { describe, expect, it } from 'vitest';
import { handoffSvg, handoffTable, handoffVerdict, summarizeHandoff, type HandoffRun } from '../../bench/follow-report.js';
import { DEFAULT_KINDS, FOLLOW_KINDS, parseOptions } from '../../bench/follow.js';

function run(entries: number, n: number, exportMs: number, importMs: number, lost = 0): HandoffRun {
  return { entries, others: 100, rnat: 0, run: n, exportMs, importMs, exportMapsMs: exportMs / 2, writeFileMs: exportMs / 2, readFileMs: importMs / 2, importMapsMs: importMs / 2, exportCpuMs: exportMs, importCpuMs: importMs, fileBytes: entries * 28 + 200, lost, digestOk: lost === 0 };
}

describe('bench follow report', () => {
  it('summarizes each size: median times, the best run, the worst loss', () => {
    const rows = summarizeHandoff([run(100_000, 1, 60, 30), run(100_000, 2, 40, 20), run(100_000, 3, 50, 90), run(1000, 1, 2, 1, 3)], 't');
    expect(rows.map((r) => r.entries)).toEqual([1000, 100_000]);
    expect(rows[1]).toMatchObject({ kind: 'handoff', entries: 100_000, exportMs: 50, importMs: 30, totalMs: 90, bestTotalMs: 60, lost: 0, runs: 3, digestOk: true, at: 't' });
    expect(rows[0]).toMatchObject({ lost: 3, digestOk: false });
    // The JSON line starts with the fields issue 9 names.
    expect(Object.keys(rows[1]).slice(0, 5)).toEqual(['kind', 'entries', 'exportMs', 'importMs', 'lost']);
  });

  it('judges the 100,000-entry target and any loss', () => {
    const [small, big] = summarizeHandoff([run(1000, 1, 5, 5), run(100_000, 1, 70, 40)]);
    expect(handoffVerdict(small)).toBe('-');
    expect(handoffVerdict(big)).toMatch(/^missed/);
    expect(handoffVerdict(summarizeHandoff([run(100_000, 1, 50, 40)])[0])).toMatch(/^ok/);
    expect(handoffVerdict(summarizeHandoff([run(100_000, 1, 50, 40, 1)])[0])).toBe('LOST 1');
  });

  it('tabulates and plots the rows', () => {
    const rows = summarizeHandoff([run(1000, 1, 2, 1), run(10_000, 1, 9, 6), run(100_000, 1, 70, 40)]);
    const t = handoffTable(rows).split('\n');
    expect(t[0]).toMatch(/^\| entries \| export ms \| import ms \| total ms \|/);
    expect(t).toHaveLength(5);
    expect(t[4]).toMatch(/\| +100000 \| +70 \| +40 \| +110 \|.*missed/);
    const svg = handoffSvg(rows);
    expect(svg).toMatch(/^<svg /);
    expect(svg).toContain('data-target="100"');
    for (const s of ['export', 'import', 'export + import']) expect(svg).toContain(`data-series="${s}"`);
  });

  it('parses its options; kinds default to handoff and migration, with every kind registered', () => {
    const o = parseOptions([]);
    expect(o).toMatchObject({ kinds: DEFAULT_KINDS, entries: [1000, 10_000, 100_000], connections: [0, 1000, 5000], runs: 3, json: false, rnat: false });
    expect(DEFAULT_KINDS).toEqual(['handoff', 'migration']);
    expect(parseOptions(['--kinds', 'handoff', '--entries', '500,2000', '--runs', '1', '--json', '--rnat'])).toMatchObject({ kinds: ['handoff'], entries: [500, 2000], runs: 1, json: true, rnat: true });
    expect(() => parseOptions(['--entries', 'many'])).toThrow(/--entries/);
    expect(Object.keys(FOLLOW_KINDS).sort()).toEqual(['churn', 'handoff', 'migration']);
    expect(o).toMatchObject({ direct: 20, migrations: 100, tcp: 1000, udp: 1000 });
    expect(parseOptions(['--kinds', 'churn', '--migrations', '3', '--tcp', '50', '--udp', '50'])).toMatchObject({ kinds: ['churn'], migrations: 3, tcp: 50, udp: 50 });
    expect(() => parseOptions(['--migrations', '0'])).toThrow(/--migrations/);
  });
});
