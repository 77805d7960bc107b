/**
 * The routed lab fabric: every host on a /29 of its own behind a router namespace, agents and the
 * controller reaching one another through it, VIPs spread over the hosts by ECMP, and nothing
 * left behind after down.
 */
import { existsSync, readdirSync } from 'node:fs';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execCommand } from '../../lib/exec.js';
import { AGENT_PORT, agentPinDir, labDown, labDir, labUp, rootLink, startLabWorkload, type Lab } from '../../lab/lab.js';
import { inNetns, listNetns, ROUTED_CLIENT_MTU, ROUTED_HOST_MTU, type LabHost } from '../../lab/topology.js';
import { startTraffic, type TrafficHandle } from '../../lab/traffic.js';
import { stopWorkload } from '../../lab/workload.js';

const PORT = 7000;

function run(host: Pick<LabHost, 'netnsPath'>, cmd: string, args: string[], allowFailure = false) {
  const [file, a] = inNetns(host, cmd, args);
  return execCommand(file, a, { allowFailure });
}

async function linkOf(ns: string, dev: string): Promise<{ mtu: number; xdp?: { prog?: { name?: string } } }> {
  const r = await execCommand('ip', ['-n', ns, '-d', '-j', 'link', 'show', dev]);
  return (JSON.parse(r.stdout) as { mtu: number; xdp?: { prog?: { name?: string } } }[])[0];
}

/** UDP datagrams the host's kernel found no socket for (a VIP made local on the host counts here). */
async function udpNoPorts(host: LabHost): Promise<number> {
  const lines = (await run(host, 'cat', ['/proc/net/snmp'])).stdout.split('\n').filter((l) => l.startsWith('Udp:'));
  const [names, values] = lines.map((l) => l.split(/\s+/));
  return Number(values[names.indexOf('NoPorts')]);
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('lab: routed fabric', () => {
  let lab: Lab;
  let index = 0;
  const traffic: TrafficHandle[] = [];
  const workloads: number[] = [];

  beforeAll(async () => {
    lab = await labUp({ hosts: ['a', 'b'], fabric: 'routed' });
    index = lab.topology.index;
  });

  afterAll(async () => {
    for (const t of traffic) await t.stop().catch(() => undefined);
    for (const pid of workloads) await stopWorkload(pid).catch(() => undefined);
    if (lab) await lab.down();
    else if (index) await labDown(index);
  });

  it('puts each host on its own subnet behind the router', () => {
    const t = lab.topology;
    expect(t.fabric).toBe('routed');
    expect(t.router?.netns).toBe(`godwit${index}-router`);
    expect(t.hosts.map((h) => [h.address, h.subnet, h.gateway])).toEqual([
      [`198.18.${index}.2`, `198.18.${index}.0/29`, `198.18.${index}.1`],
      [`198.18.${index}.10`, `198.18.${index}.8/29`, `198.18.${index}.9`],
    ]);
    expect([t.client.address, t.client.subnet, t.client.gateway]).toEqual([`198.18.${index}.100`, `198.18.${index}.96/29`, `198.18.${index}.97`]);
    expect(t.ctl.address).toBe(`198.18.${index}.250`);
    expect(t.vipBlock).toBe(`198.19.${index}.0/24`);
    expect(t.vip(0)).toBe(`198.19.${index}.1`);
  });

  it('routes with forwarding on, rp_filter off, L4 multipath hashing, the MTUs, checksums off-loaded nowhere and the pass-through XDP programs', async () => {
    const router = lab.topology.router!;
    const sysctl = async (k: string) => (await run(router, 'sysctl', ['-n', k])).stdout.trim();
    expect(await sysctl('net.ipv4.ip_forward')).toBe('1');
    expect(await sysctl('net.ipv4.fib_multipath_hash_policy')).toBe('1');
    expect(await sysctl('net.ipv4.conf.all.rp_filter')).toBe('0');
    for (const h of lab.topology.hosts) {
      expect(await sysctl(`net.ipv4.conf.r-${h.name}.rp_filter`)).toBe('0');
      const r = await linkOf(router.netns, router.ifaceTo(h.name));
      expect(r.mtu).toBe(ROUTED_HOST_MTU);
      expect(r.xdp?.prog?.name).toBe('godwit_xdp_pass');
      expect((await linkOf(h.netns, 'eth0')).mtu).toBe(ROUTED_HOST_MTU);
      // Checksums computed on the wire, never CHECKSUM_PARTIAL handed across a veth.
      expect((await run(h, 'ethtool', ['-k', 'eth0'])).stdout).toMatch(/^tx-checksumming: off/m);
      expect((await run(router, 'ethtool', ['-k', router.ifaceTo(h.name)])).stdout).toMatch(/^tx-checksumming: off/m);
    }
    expect((await linkOf(router.netns, 'r-client')).mtu).toBe(ROUTED_CLIENT_MTU);
    expect((await linkOf(router.netns, 'r-client')).xdp?.prog?.name).toBe('godwit_xdp_pass');
    expect((await linkOf(lab.topology.client.netns, 'eth0')).mtu).toBe(ROUTED_CLIENT_MTU);
    const vipRoute = (await execCommand('ip', ['-n', router.netns, 'route', 'show', lab.topology.vipBlock!])).stdout;
    for (const h of lab.topology.hosts) expect(vipRoute).toContain(`nexthop via ${h.address} dev r-${h.name}`);
  });

  it('lets nothing on L2 reach another host: host b gets no ARP answer for host a', async () => {
    const [a, b] = lab.topology.hosts;
    const r = await run(b, 'arping', ['-c', '1', '-w', '1', '-I', 'eth0', a.address], true);
    expect(r.stdout).not.toMatch(/Received [1-9]/);
  });

  it('has every agent registered with the controller across the router, and the root namespace reaches each agent', async () => {
    const hosts = (await lab.controller.listHosts()).hosts ?? [];
    expect(hosts.filter((h) => h.ready).map((h) => h.name).sort()).toEqual(['a', 'b']);
    for (const name of ['a', 'b']) {
      const [host, port] = lab.agentAddress(name).split(':');
      const ok = await new Promise<boolean>((resolve) => {
        const s = connect({ host, port: Number(port), timeout: 2000 });
        s.once('connect', () => (s.destroy(), resolve(true)));
        s.once('error', () => resolve(false));
        s.once('timeout', () => (s.destroy(), resolve(false)));
      });
      expect(ok, `root -> agent ${name} at ${lab.agentAddress(name)}`).toBe(true);
    }
  });

  it('reaches a workload on each host from the client through the router (every byte checked)', async () => {
    // The hosts' own addresses first: a TCP connect from the client to each agent's port.
    for (const name of ['a', 'b']) {
      const script = `const s=require('node:net').connect(${AGENT_PORT},'${lab.host(name).address}',()=>{s.destroy();process.exit(0)});s.on('error',()=>process.exit(1));setTimeout(()=>process.exit(2),3000)`;
      expect((await run(lab.topology.client, process.execPath, ['-e', script], true)).exitCode, `client -> host ${name}`).toBe(0);
    }
    for (const [i, name] of ['a', 'b'].entries()) {
      const { pid, endpoint } = await startLabWorkload(lab, name, PORT, i);
      workloads.push(pid);
      const route = (await execCommand('ip', ['-n', lab.topology.router!.netns, 'route', 'show', `${endpoint.address}/32`])).stdout;
      expect(route).toContain(`via ${lab.host(name).address} dev r-${name}`);
      const t = startTraffic(lab.topology.client, { address: endpoint.address, port: PORT }, { connections: 20 });
      traffic.push(t);
      await t.ready;
      const r = await t.drain(10_000);
      expect(r).toMatchObject({ connections: 20, alive: 20, drained: true, bytesLost: 0, bytesDuplicated: 0, corrupted: 0 });
      expect(r.receivedBytes).toBe(r.sentBytes);
      await t.stop();
    }
  });

  it('spreads the flows to one VIP over every host (ECMP on the 5-tuple)', async () => {
    const vip = lab.topology.vip(0);
    // The VIP block local on each host, only for this check: the kernel counts datagrams nobody listens to.
    for (const h of lab.topology.hosts) await run(h, 'ip', ['route', 'add', 'local', lab.topology.vipBlock!, 'dev', 'lo']);
    try {
      const before = await Promise.all(lab.topology.hosts.map(udpNoPorts));
      const flows = 64;
      // One datagram from each of 64 sockets (64 source ports) to the same VIP:port.
      const script = `const d=require('node:dgram');let n=0;for(let i=0;i<${flows};i++){const s=d.createSocket('udp4');s.send('x',9,'${vip}',()=>{s.close();if(++n===${flows})process.exit(0)})}`;
      await run(lab.topology.client, process.execPath, ['-e', script]);
      let got: number[] = [];
      for (let i = 0; i < 50; i++) {
        const after = await Promise.all(lab.topology.hosts.map(udpNoPorts));
        got = after.map((v, k) => v - before[k]);
        if (got.reduce((x, y) => x + y, 0) >= flows) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(got.reduce((x, y) => x + y, 0)).toBe(flows);
      // Both hosts get some: with 64 flows and a fair hash, one host getting all is 2^-63.
      for (const n of got) expect(n).toBeGreaterThan(0);
    } finally {
      for (const h of lab.topology.hosts) await run(h, 'ip', ['route', 'del', 'local', lab.topology.vipBlock!, 'dev', 'lo'], true);
    }
  });

  it('leaves nothing after down: namespaces, links, routes, pins, processes, files', async () => {
    const pids = [...lab.pids.values(), ...workloads];
    await lab.down();
    lab = undefined as unknown as Lab;
    expect((await listNetns()).filter((n) => n.startsWith(`godwit${index}-`))).toEqual([]);
    expect((await execCommand('ip', ['-o', 'link', 'show'])).stdout).not.toContain(rootLink(index));
    expect((await execCommand('ip', ['route', 'show'])).stdout).not.toContain(`198.18.${index}.`);
    expect(existsSync(agentPinDir(index, 'a')) || existsSync(agentPinDir(index, 'b'))).toBe(false);
    if (existsSync('/sys/fs/bpf/godwit')) expect(readdirSync('/sys/fs/bpf/godwit').filter((d) => d.startsWith(`godwit${index}-`))).toEqual([]);
    expect(pids.filter(alive)).toEqual([]);
    expect(existsSync(labDir(index))).toBe(false);
  });
});
