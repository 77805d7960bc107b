import { describe, expect, it } from 'vitest';
import { breakdownTable, freezeSvg, measurementTable, median, summaryTable, withOverhead, type FreezeRow } from '../../bench/freeze-report.js';
import { jsonLine, parseOptions } from '../../bench/freeze.js';

function row(over: Partial<FreezeRow>): FreezeRow {
  const base: FreezeRow = {
    kind: 'migration', connections: 1000, memoryMiB: 0, postCopy: false, run: 1, ok: true, error: '',
    freezeMs: 600, criuDumpMs: 250, criuRestoreMs: 250, overheadMs: 0, overheadPct: 0,
    phases: { LOCK: 10, STEER: 5, DUMP: 270, TRANSFER: 40, RESTORE: 260, UNLOCK: 5 },
    maxStallMs: 640, survived: 1000, bytesLost: 0, memoryIntact: null, lazyPagesMs: 0, imageBytes: 1e6, criuLogLevel: 4,
    steps: [
      { phase: 'DUMP', host: 'a', step: 'criu dump', ms: 250 },
      { phase: 'TRANSFER', host: 'a', step: 'send image', ms: 35 },
      { phase: 'TRANSFER', host: 'b', step: 'receive: write files', ms: 20 },
      { phase: 'RESTORE', host: 'b', step: 'criu restore', ms: 250 },
    ],
    at: 't',
  };
  return { ...base, ...over, ...withOverhead({ ...base, ...over }) };
}

describe('bench freeze report', () => {
  it('computes the overhead as issue 10 defines it', () => {
    expect(withOverhead({ freezeMs: 600, criuDumpMs: 250, criuRestoreMs: 250 })).toMatchObject({ overheadMs: 100, overheadPct: 20 });
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(Number.isNaN(median([]))).toBe(true);
  });

  it('puts the fields the issue names first in each JSON line', () => {
    expect(Object.keys(jsonLine(row({}))).slice(0, 10)).toEqual(['connections', 'memoryMiB', 'postCopy', 'freezeMs', 'criuDumpMs', 'criuRestoreMs', 'overheadPct', 'survived', 'bytesLost', 'memoryIntact']);
  });

  it('summarizes medians per size against the targets, with CRIU alone beside them', () => {
    const rows = [
      row({ run: 1, freezeMs: 560 }),
      row({ run: 2, freezeMs: 600 }),
      row({ run: 3, freezeMs: 700 }),
      row({ kind: 'criu-alone', freezeMs: 480, criuDumpMs: 240, criuRestoreMs: 240 }),
      row({ memoryMiB: 1024, freezeMs: 5000, criuDumpMs: 2000, criuRestoreMs: 2500 }),
      row({ memoryMiB: 1024, postCopy: true, freezeMs: 800, criuDumpMs: 300, criuRestoreMs: 400, memoryIntact: true }),
      row({ run: 4, ok: false, freezeMs: 99_999, error: 'boom' }),
    ];
    const summary = summaryTable(rows).split('\n');
    expect(summary).toHaveLength(2 + 3);
    // 1000 connections, 0 MiB: freeze median 600 of the successful runs, overhead 20 % (missed), CRIU alone 480.
    expect(summary[2]).toMatch(/^\| 1000 \| 0 \| no \| 3 \| 600 \| 500 \| 20 \| missed \| 480 \|/);
    // Post-copy: the plain freeze is 6.3 times the post-copy one.
    expect(summary[4]).toMatch(/\| 1024 \| yes \| 1 \| 800 \|.*\| 6\.3 \|.*intact \|$/);
    expect(measurementTable(rows)).toContain('| FAILED |');
  });

  it('breaks the freeze down by phase and step, with what no step accounts for', () => {
    const t = breakdownTable([row({})]);
    expect(t).toContain('1000 connections, 0 MiB, post-copy off (median of 1)');
    expect(t).toContain('| **DUMP** | 270.0 |');
    expect(t).toContain('|   a: criu dump | 250.0 |');
    // TRANSFER: 40 ms, the source's 35 ms of steps (the target's nest inside them): 5 ms unaccounted.
    expect(t).toContain('|   b: receive: write files | 20.0 |');
    expect(t).toMatch(/\*\*TRANSFER\*\* \| 40\.0 \|[\s\S]*?\(no agent step: controller, RPC, waiting\) \| 5\.0 \|/);
    // 600 ms freeze, 590 ms of phases.
    expect(t).toContain('| **between phases** (state recorded, events) | 10.0 |');
  });

  it('plots the freeze against connections', () => {
    const svg = freezeSvg([row({ connections: 0, freezeMs: 300 }), row({}), row({ kind: 'criu-alone', freezeMs: 450 })]);
    expect(svg).toContain('<svg');
    expect(svg).toContain('freeze (0 MiB)');
    expect(svg).toContain('CRIU alone (0 MiB)');
  });

  it('parses its options, with a CI-sized --quick', () => {
    expect(parseOptions([])).toMatchObject({ connections: [0, 1000, 5000], memory: [0, 256, 1024], runs: 3, postCopy: 'both', criuAlone: true });
    expect(parseOptions(['--quick'])).toMatchObject({ runs: 1 });
    expect(parseOptions(['--quick', '--runs', '2', '--no-criu-alone', '--post-copy', 'on'])).toMatchObject({ runs: 2, criuAlone: false, postCopy: 'on' });
  });
});
