import { describe, expect, it } from 'vitest';
import { measurementTable, progTestRunTable, ratio, steerSvg, summarize, summaryTable, type SteerMeasurement } from '../../bench/steer-report.js';
import { parseOptions, systemBusyNs } from '../../bench/steer-dataplane.js';

function row(mode: SteerMeasurement['mode'], proto: SteerMeasurement['proto'], cpuNsPerPacket: number, run = 1, ok = true): SteerMeasurement {
  const delivered = ok ? 1_000_000 : 0;
  return {
    bench: 'steer-dataplane', mode, proto, run, packets: 1_000_000, delivered, flows: 256, frameBytes: 60,
    cpuNs: cpuNsPerPacket * delivered, cpuNsPerPacket: ok ? cpuNsPerPacket : 0, sysCpuNs: 0, sysCpuNsPerPacket: ok ? cpuNsPerPacket * 2 : 0,
    sinkCpuNs: 0, elapsedNs: 2e9, pps: ok ? 500_000 : 0, ok, error: ok ? '' : 'no packet reached the backend', at: '2026-01-01T00:00:00Z',
  };
}

const rows = [
  row('baseline', 'udp', 1800, 1), row('baseline', 'udp', 1700, 2), row('baseline', 'udp', 1900, 3),
  row('godwit', 'udp', 1900), row('iptables', 'udp', 2100), row('nftables', 'udp', 2000),
  row('baseline', 'tcp', 2400), row('iptables', 'tcp', 3700), row('nftables', 'tcp', 0, 1, false),
];

describe('bench steer-dataplane report', () => {
  it('takes medians, subtracts the baseline and compares with godwit', () => {
    const [udp, tcp] = summarize(rows);
    expect(udp.proto).toBe('udp');
    expect(udp.modes.baseline).toMatchObject({ runs: 3, ok: 3, cpuNsPerPacket: 1800, overBaselineNs: 0 });
    expect(udp.modes.godwit?.overBaselineNs).toBe(100);
    expect(udp.modes.iptables?.overBaselineNs).toBe(300);
    expect(udp.ratioOverBaseline).toEqual({ iptables: 3, nftables: 2 });
    // Best runs: the lowest of each mode against the lowest baseline (1700).
    expect(udp.modes.baseline?.bestCpuNsPerPacket).toBe(1700);
    expect(udp.modes.iptables?.bestOverBaselineNs).toBe(400);
    expect(udp.ratioOverBaselineBest).toEqual({ iptables: 2, nftables: 1.5 });
    expect(udp.ratioTotal.iptables).toBeCloseTo(2100 / 1900);
    // No godwit row: no ratio; a mode whose runs all failed has no cost, and says why.
    expect(tcp.ratioOverBaseline.iptables).toBeUndefined();
    expect(tcp.modes.iptables?.overBaselineNs).toBe(1300);
    expect(tcp.modes.nftables).toMatchObject({ runs: 1, ok: 0, cpuNsPerPacket: undefined, error: 'no packet reached the backend' });
    expect(ratio(0, 5)).toBeUndefined();
    // Paired by run: run 2's iptables against run 2's baseline, not against the median baseline.
    const [paired] = summarize([...rows, row('iptables', 'udp', 1750, 2), row('iptables', 'udp', 2250, 3)]);
    expect(paired.modes.iptables?.overBaselineNs).toBe(300); // median of 300, 50, 350
    // With a baseline-xdp run, godwit is also measured against it (the program's own work).
    const [xdp] = summarize([...rows, row('baseline-xdp', 'udp', 1850)]);
    expect(xdp.godwitOverXdpNs).toBe(50);
    expect(xdp.modes['baseline-xdp']?.overBaselineNs).toBe(50);
    expect(summaryTable([...rows, row('baseline-xdp', 'udp', 1850)])).toContain('udp: godwit over baseline-xdp');
    expect(ratio(-10, 5)).toBeUndefined();
  });

  it('prints the tables', () => {
    const summary = summaryTable(rows);
    expect(summary).toMatch(/\| udp\s+\| iptables \|\s+1\/1 \|\s+2100 \|\s+\+300 \|\s+2100 \|\s+\+400 \|/);
    expect(summary).toContain('3.0x (2.0x), target 3x');
    expect(summary).toContain('2.0x (1.5x), target 2x');
    const all = measurementTable(rows);
    expect(all.split('\n')).toHaveLength(rows.length + 2);
    expect(all).toContain('no packet reached the backend');
    expect(progTestRunTable([{ mode: 'prog-test-run', path: 'hit', nsPerPacket: 41.26, flows: 100000 }])).toMatch(/\| hit\s+\|\s+41\.3 \| \{"flows":100000\} \|/);
  });

  it('draws one bar per mode and proto, the part over the baseline on top', () => {
    const svg = steerSvg(rows);
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg.match(/data-mode="/g)).toHaveLength(6); // 4 udp bars + tcp baseline and iptables (no godwit row, nftables failed)
    expect(svg).toContain('data-mode="godwit" data-proto="udp"');
    expect(svg).toContain('+100');
    expect(svg).not.toContain('NaN');
  });

  it('reads /proc/stat busy time in USER_HZ ticks', () => {
    expect(systemBusyNs('cpu  100 5 50 1000 7 1 2 3 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n')).toBe((100 + 5 + 50 + 1 + 2 + 3) * 10_000_000);
  });

  it('parses options; --quick is small', () => {
    expect(parseOptions(['--quick'])).toMatchObject({ packets: 100_000, runs: 1, flows: 256, modes: ['godwit', 'iptables', 'nftables', 'baseline', 'baseline-xdp'], protos: ['udp', 'tcp'] });
    expect(parseOptions(['--modes', 'iptables,baseline', '--proto', 'tcp', '--runs', '3', '--packets', '5000'])).toMatchObject({ modes: ['iptables', 'baseline'], protos: ['tcp'], runs: 3, packets: 5000 });
  });
});
