/**
 * The steer-dataplane benchmark end to end, small: real routed labs, the real generator and sink,
 * real iptables / nftables DNAT. The packets sent must reach the backend in every mode (the
 * kernel checks the generator's checksums, and conntrack's loose pickup must NAT the TCP
 * segments), and nothing may be left behind.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { execCommand } from '../../lib/exec.js';
import { REPO_ROOT } from '../../lib/rpc.js';
import { listNetns } from '../../lab/topology.js';

const PACKETS = 20_000;
const MODES = ['godwit', 'iptables', 'nftables', 'baseline', 'baseline-xdp'];

describe('bench steer-dataplane --quick', () => {
  const results = mkdtempSync(join(tmpdir(), 'godwit-steer-bench-'));
  afterAll(() => rmSync(results, { recursive: true, force: true }));

  it('delivers every packet in every mode and proto, reports CPU per packet, leaves nothing', async () => {
    const before = await listNetns();
    await execCommand('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: REPO_ROOT, allowFailure: true, timeoutMs: 120_000 });
    const r = await execCommand(
      process.execPath,
      [join(REPO_ROOT, 'dist', 'bench', 'main.js'), 'steer-dataplane', '--quick', '--packets', String(PACKETS), '--flows', '64', '--modes', MODES.join(','), '--json', '--results', results],
      { allowFailure: true, timeoutMs: 400_000 },
    );
    expect(r.exitCode, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const rows = lines.filter((x) => x.mode !== 'prog-test-run');
    expect(rows).toHaveLength(MODES.length * 2);
    // The program's own cost, hit and miss path, rides along in the same run.
    const progRun = lines.filter((x) => x.mode === 'prog-test-run');
    for (const path of ['hit', 'miss']) expect(progRun.some((x) => x.path === path && (x.nsPerPacket as number) > 0), `prog-test-run ${path}`).toBe(true);
    for (const proto of ['udp', 'tcp'])
      for (const mode of MODES) {
        const row = rows.find((x) => x.mode === mode && x.proto === proto);
        expect(row, `${mode} ${proto}`).toMatchObject({ ok: true, packets: PACKETS });
        // Most of them: a veth with XDP on its peer queues into a 256-frame ring, and when the
        // kernel defers the receive softirq to ksoftirqd mid-burst the generator overruns it
        // (seen: up to 2% for UDP, 16% for TCP bursts in one otherwise quiet CI run). The bench
        // charges CPU per delivered packet and reports `delivered`, so a drop skews no ratio
        // silently; what is checked here is that every mode's path really delivers.
        expect(row!.delivered as number, `${mode} ${proto} delivered`).toBeLessThanOrEqual(PACKETS);
        expect(row!.delivered as number, `${mode} ${proto} delivered`).toBeGreaterThanOrEqual(PACKETS * 0.75);
        expect(row!.cpuNsPerPacket as number).toBeGreaterThan(0);
        expect(row!.pps as number).toBeGreaterThan(0);
      }
    expect(r.stderr).toContain('best over baseline');
    const kept = readFileSync(join(results, 'steer-dataplane.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(kept.filter((x) => x.mode !== 'prog-test-run')).toHaveLength(MODES.length * 2);
    expect(readFileSync(join(results, 'steer-dataplane.svg'), 'utf8')).toContain('data-mode="iptables"');
    // Nothing left: every measurement's lab is gone, and so are its pins.
    expect((await listNetns()).filter((n) => !before.includes(n) && n.startsWith('godwit'))).toEqual([]);
    expect(existsSync('/sys/fs/bpf') && (await execCommand('ls', ['/sys/fs/bpf'])).stdout).not.toMatch(/godwit-bench-/);
  }, 420_000); // ten small labs, one per mode and proto
});
