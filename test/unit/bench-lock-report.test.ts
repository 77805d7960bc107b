import { describe, expect, it } from 'vitest';
import { freezeRatio, freezeSvg, logTicks, measurementTable, median, summarize, summaryTable, type LockMeasurement } from '../../bench/lock-report.js';

function row(mode: LockMeasurement['mode'], connections: number, freezeMs: number, ok = true, run = 1): LockMeasurement {
  return {
    mode, connections, run, ok, error: ok ? '' : 'checkpoint on host "a" failed: criu dump failed: killed by SIGABRT: *** bit out of range 0 - FD_SETSIZE on fd_set ***',
    phase: ok ? 'DONE' : 'FAILED', failedPhase: ok ? '' : 'DUMP', migrationId: 'm', lockMs: 1, dumpMs: 2, transferMs: 3, restoreMs: 4, unlockMs: 5,
    freezeMs: ok ? freezeMs : 0, totalMs: 20, maxStallMs: freezeMs + 100, survived: ok ? connections : connections - 300, workloadRunning: true,
    bytesLost: 0, bytesDuplicated: 0, corrupted: 0, imageBytes: 1,
    deliveredPackets: 0, leftovers: 0, at: '2026-01-01T00:00:00Z',
  };
}

const rows = [
  row('ebpf', 0, 200), row('iptables', 0, 150), row('nftables', 0, 220),
  row('ebpf', 1000, 400, true, 1), row('ebpf', 1000, 600, true, 2), row('ebpf', 1000, 500, true, 3),
  row('iptables', 1000, 50_000), row('nftables', 1000, 0, false),
];

describe('bench lock report', () => {
  it('medians and ratios', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 2, 3])).toBe(2.5);
    expect(median([])).toBeUndefined();
    expect(freezeRatio(500, 50_000)).toBe(100);
    expect(freezeRatio(0, 10)).toBeUndefined();
    expect(freezeRatio(500, undefined)).toBeUndefined();
  });

  it('summarizes successful runs per connection count; a mode whose runs all failed has no freeze', () => {
    const s = summarize(rows);
    expect(s.map((r) => r.connections)).toEqual([0, 1000]);
    expect(s[1].modes.ebpf).toMatchObject({ runs: 3, ok: 3, freezeMs: 500 });
    expect(s[1].iptablesRatio).toBe(100);
    expect(s[1].modes.nftables).toMatchObject({ runs: 1, ok: 0, freezeMs: undefined });
    expect(s[1].modes.nftables?.error).toMatch(/FD_SETSIZE/);
    expect(s[1].nftablesRatio).toBeUndefined();
  });

  it('prints the Markdown tables', () => {
    const summary = summaryTable(rows).split('\n');
    expect(summary[0]).toMatch(/^\| +N \| ebpf freeze ms \| iptables freeze ms \| nftables freeze ms \| iptables\/ebpf \| nftables\/ebpf \|/);
    expect(summary[1]).toMatch(/^\|-+:\|/);
    expect(summary[3]).toMatch(/^\| +1000 \| +500 \| +50000 \| +failed 1\/1 \| +100x \| +- \|/);
    const table = measurementTable(rows);
    expect(table.split('\n')).toHaveLength(2 + rows.length);
    expect(table).toMatch(/\| FAILED \(DUMP\) \|.*FD_SETSIZE/);
    expect(table).not.toMatch(/\*\*\* bit.*\|.*\|.*\*\*\*/); // an error is one cell
    expect(measurementTable([{ ...row('iptables', 5000, 0, false), workloadRunning: false }])).toMatch(/WORKLOAD LOST: /);
  });

  it('draws one polyline per mode on a log axis, failures as crosses', () => {
    const svg = freezeSvg(rows);
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg.trim().endsWith('</svg>')).toBe(true);
    expect(svg.match(/<polyline data-mode="(\w+)"/g)).toEqual(['<polyline data-mode="ebpf"', '<polyline data-mode="iptables"', '<polyline data-mode="nftables"']);
    expect(svg).toContain('data-failed="nftables"');
    // Higher freeze is higher up: y of iptables at N=1000 above ebpf's.
    const ys = (mode: string) => /data-mode="\w+" [^>]*points="([^"]+)"/.exec(svg.split('\n').find((l) => l.includes(`data-mode="${mode}"`))!)![1].split(' ').map((p) => Number(p.split(',')[1]));
    expect(ys('iptables')[1]).toBeLessThan(ys('ebpf')[1]);
    expect(logTicks(100, 1000)).toEqual([100, 200, 500, 1000]);
  });
});
