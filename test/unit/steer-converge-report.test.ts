import { describe, expect, it } from 'vitest';
import { convergeSvg, percentile, summarize, table, type AckSample } from '../../bench/steer-converge-report.js';

const sample = (change: number, host: string, latencyMs: number): AckSample => ({ agents: 2, change, generation: change + 10, host, latencyMs, applyMs: 1 });

describe('steer-converge report', () => {
  it('percentiles by nearest rank', () => {
    const xs = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(percentile(xs, 50)).toBe(50);
    expect(percentile(xs, 99)).toBe(99);
    expect(percentile(xs, 100)).toBe(100);
    expect(percentile([5], 99)).toBe(5);
    expect(percentile([], 50)).toBeNaN();
  });

  it('summarizes every ack, the slowest agent per change, and what is missing', () => {
    const r = summarize(2, 3, [sample(0, 'a', 4), sample(0, 'b', 8), sample(1, 'a', 2), sample(1, 'b', 3), sample(2, 'a', 20)], 't');
    expect(r).toMatchObject({ bench: 'steer-converge', agents: 2, changes: 3, acks: 5, p50Ms: 4, p99Ms: 20, maxMs: 20, convergeP50Ms: 8, convergeP99Ms: 20, missing: 1, at: 't' });
  });

  it('draws p50, p99 and max against agents with the target line, and tabulates the rows', () => {
    const rows = [10, 50, 100].map((n) => ({ ...summarize(n, 1, [sample(0, 'a', n), sample(0, 'b', n * 2)]), agents: n }));
    const svg = convergeSvg(rows);
    expect(svg).toMatch(/^<svg /);
    expect(svg).toContain('data-target="100"');
    for (const s of ['p50', 'p99', 'max']) expect(svg).toContain(`data-series="${s}"`);
    const t = table(rows).split('\n');
    expect(t[0]).toMatch(/^\| agents \| changes \| acks \| p50 ms \| p99 ms \| max ms \|/);
    expect(t).toHaveLength(5);
  });
});
