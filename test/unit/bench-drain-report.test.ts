import { describe, expect, it } from 'vitest';
import { concurrentJson, drainJson, median, reportTable } from '../../bench/drain-report.js';
import { parseOptions } from '../../bench/drain.js';

describe('bench drain report', () => {
  const drain = { kind: 'drain' as const, workloads: 5, moved: 5, failed: 0, drainMs: 12345.6, connections: 500, survived: 500, bytesLost: 0 };
  const conc = { kind: 'concurrent' as const, migrations: 10, done: 10, freezeMsMedian: 2500.4, freezeMsAloneMedian: 400.6, survived: 200, connections: 200, bytesLost: 0 };

  it("prints the issue's JSON lines, fields in its order", () => {
    expect(drainJson(drain)).toBe('{"kind":"drain","workloads":5,"moved":5,"failed":0,"drainMs":12346,"connections":500,"survived":500,"bytesLost":0}');
    expect(concurrentJson(conc)).toBe('{"kind":"concurrent","migrations":10,"done":10,"freezeMsMedian":2500,"freezeMsAloneMedian":401,"survived":200,"connections":200,"bytesLost":0}');
  });

  it('medians and the table', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 2, 3])).toBe(2.5);
    expect(median([])).toBe(0);
    const t = reportTable(drain, conc);
    expect(t).toMatch(/drain ms/);
    expect(t).toMatch(/12346/);
    expect(t).toMatch(/2500 .* 401/);
  });

  it('options: defaults, --quick, explicit options win', () => {
    expect(parseOptions([])).toMatchObject({ workloads: 5, connections: 100, concurrent: 10 });
    expect(parseOptions(['--quick'])).toMatchObject({ workloads: 2, connections: 10, concurrent: 3, aloneRuns: 1 });
    expect(parseOptions(['--quick', '--workloads', '4', '--json'])).toMatchObject({ workloads: 4, json: true });
  });
});
