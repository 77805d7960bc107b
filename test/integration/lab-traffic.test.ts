import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execCommand } from '../../lib/exec.js';
import {
  createTopology,
  destroyTopology,
  findFreeLabIndex,
  inNetns,
  listNetns,
  type LabHost,
  type LabTopology,
} from '../../lab/topology.js';
import { startTraffic, type TrafficHandle } from '../../lab/traffic.js';
import { processAlive, startWorkload, stopWorkload } from '../../lab/workload.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs a command inside a lab host's network namespace (nsenter --net). */
function run(host: LabHost, cmd: string, args: string[], allowFailure = false) {
  const [file, a] = inNetns(host, cmd, args);
  return execCommand(file, a, { allowFailure });
}

async function macOf(ns: string): Promise<string> {
  const r = await execCommand('ip', ['-n', ns, '-j', 'link', 'show', 'eth0']);
  return (JSON.parse(r.stdout) as { address: string }[])[0].address;
}

async function neighbour(ns: string, address: string): Promise<{ lladdr?: string; state?: string[] }> {
  const r = await execCommand('ip', ['-n', ns, '-j', 'neigh', 'show', address]);
  return (JSON.parse(r.stdout || '[]') as { lladdr?: string; state?: string[] }[])[0] ?? {};
}

describe('lab: topology, echo workload, traffic checker', () => {
  let index = 0;
  let lab: LabTopology;
  const workloads = new Set<number>();
  const traffic = new Set<TrafficHandle>();

  const startTracked = (...args: Parameters<typeof startTraffic>) => {
    const t = startTraffic(...args);
    traffic.add(t);
    return t;
  };
  const workloadOn = async (host: LabHost, address: string, port: number) => {
    const w = await startWorkload(host, address, port);
    workloads.add(w.pid);
    return w;
  };

  beforeAll(async () => {
    await execCommand('bash', [join(root, 'scripts/build-workload.sh')]);
    // Emits even when other files of the tree have type errors.
    await execCommand('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: root, allowFailure: true, timeoutMs: 120_000 });
    if (!existsSync(join(root, 'dist/lab/traffic-client.js'))) throw new Error('tsc did not emit dist/lab/traffic-client.js');
    index = await findFreeLabIndex();
    lab = await createTopology({ index, hosts: ['a', 'b'] });
  });

  afterAll(async () => {
    for (const t of traffic) await t.stop().catch(() => undefined);
    for (const pid of workloads) await stopWorkload(pid).catch(() => undefined);
    if (index) await destroyTopology(index);
    if (index) expect((await listNetns()).filter((n) => n.startsWith(`godwit${index}-`))).toEqual([]);
  });

  it('builds the lab in namespaces only', async () => {
    expect(lab.prefix).toBe(`godwit${index}`);
    expect(lab.subnet).toBe(`198.18.${index}.0/24`);
    expect(lab.hosts.map((h) => [h.netns, h.address])).toEqual([
      [`godwit${index}-a`, `198.18.${index}.1`],
      [`godwit${index}-b`, `198.18.${index}.2`],
    ]);
    expect(lab.client.address).toBe(`198.18.${index}.100`);
    expect(lab.ctl.address).toBe(`198.18.${index}.250`);
    expect(lab.workloadAddress(0)).toBe(`198.18.${index}.200`);
    // Nothing in the root namespace.
    const rootLinks = (await execCommand('ip', ['-o', 'link', 'show'])).stdout;
    expect(rootLinks).not.toMatch(/\bvh-(a|b|client)\b/);
    expect((await execCommand('ip', ['route', 'show'])).stdout).not.toContain(`198.18.${index}.`);
    // Hosts reach one another and the management host over the bridge.
    expect((await run(lab.client, 'arping', ['-c', '1', '-w', '2', '-I', 'eth0', lab.ctl.address])).stdout).toMatch(/Received 1 response/);
    expect((await run(lab.hosts[1], 'arping', ['-c', '1', '-w', '2', '-I', 'eth0', lab.hosts[0].address])).stdout).toMatch(/Received 1 response/);
    const lo = await execCommand('ip', ['-n', lab.hosts[0].netns, '-j', 'link', 'show', 'lo']);
    expect(JSON.parse(lo.stdout)[0].operstate).toBe('UNKNOWN'); // lo's "up"
  });

  it('echoes every byte of 200 connections; measures a freeze as a stall', async () => {
    const [a] = lab.hosts;
    const vip = lab.workloadAddress(0);
    // /32: the address alone, no second prefix route; ARP for it works (arp_ignore=0 answers for any local address).
    await run(a, 'ip', ['addr', 'add', `${vip}/32`, 'dev', 'eth0']);
    const w = await workloadOn(a, vip, 7000);
    expect(processAlive(w.pid)).toBe(true);

    const t = startTracked(lab.client, { address: vip, port: 7000 }, { connections: 200 });
    await t.ready;
    await sleep(1000);
    const first = await t.window();
    expect(first.alive).toBe(200);
    expect(first.receivedBytes).toBeGreaterThan(0);

    // Freeze the workload like a migration does: the checker must see it as a stall.
    process.kill(w.pid, 'SIGSTOP');
    await sleep(600);
    process.kill(w.pid, 'SIGCONT');
    await sleep(1000);
    const frozen = await t.window();
    expect(frozen.maxStallMs).toBeGreaterThanOrEqual(550);
    expect(frozen.maxStallMs).toBeLessThan(3000);
    const calm = await (async () => (await sleep(500), t.window()))();
    expect(calm.maxStallMs).toBeLessThan(500);

    const r = await t.drain(10_000);
    console.log('traffic report', JSON.stringify({ ...r, errors: undefined, mismatches: undefined }));
    expect(r).toMatchObject({ connections: 200, alive: 200, drained: true, bytesLost: 0, bytesDuplicated: 0, corrupted: 0 });
    expect(r.sentBytes).toBeGreaterThan(200 * 64 * 50);
    expect(r.receivedBytes).toBe(r.sentBytes);
    await t.stop();
    expect(await t.exited).toBe(0);

    // Killing the server closes every connection: the checker reports them closed.
    const t2 = startTracked(lab.client, { address: vip, port: 7000 }, { connections: 20 });
    await t2.ready;
    await stopWorkload(w.pid);
    workloads.delete(w.pid);
    // The closes arrive as the kernel tears the server's sockets down: wait for them rather than
    // bound their arrival in time.
    for (let i = 0; i < 100 && (await t2.stats()).alive > 0; i++) await sleep(100);
    const r2 = await t2.drain(2000);
    expect(r2.alive).toBe(0);
    expect(r2.corrupted).toBe(0);
    await t2.stop();
    await run(a, 'ip', ['addr', 'del', `${vip}/32`, 'dev', 'eth0']);
  });

  it('moves an address with a gratuitous ARP: the client follows it to the new host', async () => {
    const [a, b] = lab.hosts;
    const vip = lab.workloadAddress(1);
    const [macA, macB] = [await macOf(a.netns), await macOf(b.netns)];
    expect(macA).not.toBe(macB);

    await run(a, 'ip', ['addr', 'add', `${vip}/32`, 'dev', 'eth0']);
    const wa = await workloadOn(a, vip, 7001);
    const ta = startTracked(lab.client, { address: vip, port: 7001 }, { connections: 5 });
    await ta.ready;
    await sleep(200);
    expect((await ta.drain(5000)).bytesLost).toBe(0);
    await ta.stop();
    expect((await neighbour(lab.client.netns, vip)).lladdr).toBe(macA);

    // Move: a gives the address up, b takes it and announces it.
    await stopWorkload(wa.pid);
    workloads.delete(wa.pid);
    await run(a, 'ip', ['addr', 'del', `${vip}/32`, 'dev', 'eth0']);
    await run(b, 'ip', ['addr', 'add', `${vip}/32`, 'dev', 'eth0']);
    await run(b, 'arping', ['-U', '-c', '2', '-I', 'eth0', vip]);
    // The GARP alone moved the client's entry (it had a's MAC and was recent: no re-resolution yet).
    expect((await neighbour(lab.client.netns, vip)).lladdr).toBe(macB);

    await workloadOn(b, vip, 7001);
    const tb = startTracked(lab.client, { address: vip, port: 7001 }, { connections: 20 });
    await tb.ready;
    await sleep(300);
    const r = await tb.drain(5000);
    expect(r).toMatchObject({ alive: 20, drained: true, bytesLost: 0, bytesDuplicated: 0, corrupted: 0 });
    expect(r.sentBytes).toBeGreaterThan(0);
    await tb.stop();
    expect((await neighbour(lab.client.netns, vip)).lladdr).toBe(macB);
  });

  it('destroyTopology removes a half-built lab and its processes, and tolerates a missing one', async () => {
    const other = await findFreeLabIndex();
    expect(other).not.toBe(index);
    const ns = `godwit${other}-x`;
    await execCommand('ip', ['netns', 'add', ns]);
    let sleeper: number | undefined;
    try {
      const child = spawn('nsenter', [`--net=/run/netns/${ns}`, 'sleep', '600'], { stdio: 'ignore' });
      sleeper = child.pid!;
      await sleep(200);
      expect((await execCommand('ip', ['netns', 'pids', ns])).stdout.trim()).toBe(String(sleeper));
      await destroyTopology(other);
      expect(await listNetns()).not.toContain(ns);
      expect(processAlive(sleeper)).toBe(false);
      await destroyTopology(other); // nothing left: fine
    } finally {
      if (sleeper !== undefined && processAlive(sleeper)) process.kill(sleeper, 'SIGKILL');
      await execCommand('ip', ['netns', 'del', ns], { allowFailure: true });
    }
  });
});
