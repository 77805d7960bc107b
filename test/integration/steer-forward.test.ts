/**
 * Forwarding by the steering data plane (bpf/steer.c) in a routed fabric of three hosts
 * (test/support/steer-netns.ts with host c), real TCP with every byte echoed and checked:
 *  - a workload address whose table entry names host b, delivered by the fabric to host a: a
 *    tunnels it whole to b (address marker), replies leave b directly, a counts it forwarded;
 *  - a VIP backend that moved from a to b while host c still steers with the older table: c
 *    tunnels to a, a forwards to b (once), the connections live on when c catches up;
 *  - the return traffic of a workload's outbound connection (to its address and an ephemeral
 *    port), delivered to a, follows the address to b;
 *  - hosts that disagree (a says b, b says a): a frame already forwarded once is dropped and
 *    counted stale where it lands, never answered with a reset; the connections survive once
 *    the tables agree again.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { netnsPath } from '../../agent/linux/netns-exec.js';
import type { SteeringBackend, SteeringTable } from '../../agent/steering.js';
import { execCommand } from '../../lib/exec.js';
import { CLIENT_ADDRESS, SteerNetns, VIP, type EchoServer, type SteerHost } from '../support/steer-netns.js';

const VIP_PORT = 7200;
const ECHO_PORT = 7201;
const net = new SteerNetns('fw', { hostC: true });
const c = () => net.c!;
let echo: EchoServer;

/** The workload: its echo server listens on b's workload address. In the tables it runs on `on`. */
const workloadOn = (on: SteerHost): SteeringBackend => ({ id: 1, address: net.b.workload, port: ECHO_PORT, weight: 1, host: on.name, hostAddress: on.address, draining: false });
const table = (generation: number, on: SteerHost): SteeringTable => ({
  generation,
  services: [{ id: 1, proto: 'tcp', vip: VIP, vipPort: VIP_PORT, backends: [workloadOn(on)] }],
  addresses: [{ address: net.b.workload, host: on.name, hostAddress: on.address }],
});
const apply = async (t: SteeringTable, ...hosts: SteerHost[]) => {
  for (const h of hosts) expect(await h.steering.apply(t)).toEqual({ generation: t.generation, applied: true });
};
const forwarding = (h: SteerHost) => h.steering.forwarding();

/**
 * An outbound connection from `from` (bound to the workload address) to the client's echo
 * server: `rounds` chunks of 32 KiB each way, every byte compared. Prints "ok" or the failure.
 */
const OUTBOUND = `
const net = require('net');
const crypto = require('crypto');
const [host, port, from, rounds] = process.argv.slice(1);
const s = net.connect({ host, port: Number(port), localAddress: from }, async () => {
  for (let r = 0; r < Number(rounds); r++) {
    const data = crypto.randomBytes(32768);
    const got = await new Promise((resolve) => {
      const parts = []; let n = 0;
      const on = (d) => { parts.push(d); n += d.length; if (n >= data.length) { s.off('data', on); resolve(Buffer.concat(parts)); } };
      s.on('data', on);
      s.write(data);
    });
    if (!got.equals(data)) { console.log('mismatch in round ' + r); process.exit(1); }
  }
  console.log('ok ' + s.localAddress + ':' + s.localPort);
  clearTimeout(timer);
  s.end();
});
s.on('error', (e) => { console.log('error ' + (e.code || e)); process.exit(1); });
const timer = setTimeout(() => { console.log('timeout'); process.exit(1); }, 20000);
`;

/** Exit code of a TCP connect from the client that gives up after `seconds`: 0 opened, 124 no answer, other: refused or reset. */
async function connectExit(address: string, port: number, seconds: number): Promise<number> {
  const r = await net.client.exec('timeout', [String(seconds), 'bash', '-c', `exec 3<>/dev/tcp/${address}/${port}`], { allowFailure: true });
  return r.exitCode;
}

beforeAll(async () => {
  await net.setUp(); // steering installed on a, b and c
  echo = await net.startEcho(net.b, ECHO_PORT);
}, 180_000);

afterAll(() => net.tearDown(), 300_000); // a cut-short teardown leaves namespaces behind

describe('forwarding by the steering data plane', () => {
  it('tunnels a workload address that runs elsewhere whole to its host: every byte echoed, replies come back, forwarded counted', async () => {
    // The fabric still delivers b's workload address to a (announced from there before it moved).
    await net.router.exec('ip', ['route', 'add', `${net.b.workload}/32`, 'via', net.a.address]);
    await apply(table(1, net.b), ...net.hosts);
    const before = await forwarding(net.a);
    const client = await net.startClient(ECHO_PORT, 4096, net.b.workload);
    try {
      const opened = await client.open(20);
      expect(opened.filter((r) => !r.ok)).toEqual([]);
      expect(new Set(opened.map((r) => r.peer))).toEqual(new Set([`${net.b.workload}:${ECHO_PORT}`]));
      expect((await client.round()).filter((r) => !r.ok)).toEqual([]);
      expect(echo.conns.length).toBe(20);
      const after = await forwarding(net.a);
      // At least a SYN, an ACK and two chunks per connection went through a.
      expect(after.forwarded - before.forwarded).toBeGreaterThanOrEqual(20n * 4n);
      expect(after.staleDropped).toBe(before.staleDropped);
      // b delivered them (its address is local there): it forwarded and dropped nothing.
      expect(await forwarding(net.b)).toEqual({ forwarded: 0n, staleDropped: 0n });
    } finally {
      client.child.stdin!.end();
    }
  }, 120_000);

  it('steers the return traffic of the workload\'s outbound connections (its address, an ephemeral port) to its host', async () => {
    const server = await net.startEcho({ netns: net.client.netns, workload: CLIENT_ADDRESS }, 7202);
    const before = await forwarding(net.a);
    const r = await execCommand('nsenter', [`--net=${netnsPath(net.b.netns)}`, process.execPath, '-e', OUTBOUND, CLIENT_ADDRESS, '7202', net.b.workload, '4'], { allowFailure: true, timeoutMs: 30_000 });
    expect(r.stdout.trim()).toMatch(new RegExp(`^ok ${net.b.workload.replace(/\./g, '\\.')}:\\d+$`));
    expect(server.conns.map((c) => c.split(':')[0])).toEqual([net.b.workload]);
    // The client's echo went to a (the fabric's route) and on to b: 4 x 32 KiB, over 20 segments each.
    expect((await forwarding(net.a)).forwarded - before.forwarded).toBeGreaterThanOrEqual(4n * 20n);
  }, 60_000);

  it('forwards a moved backend\'s frames from its old host to its new one while a third host steers with the older table; connections survive', async () => {
    await net.router.exec('ip', ['route', 'replace', `${VIP}/32`, 'via', c().address]);
    // Generation 2: the workload on a. Generation 3: it moved to b; c has not learnt it yet.
    await apply(table(2, net.a), c());
    await apply(table(3, net.b), net.a, net.b);
    const accepted = echo.conns.length;
    const before = await forwarding(net.a);
    const client = await net.startClient(VIP_PORT, 3000);
    try {
      const opened = await client.open(30);
      expect(opened.filter((r) => !r.ok)).toEqual([]);
      expect(new Set(opened.map((r) => r.peer))).toEqual(new Set([`${VIP}:${VIP_PORT}`]));
      expect(echo.conns.length).toBe(accepted + 30);
      const during = await forwarding(net.a);
      expect(during.forwarded - before.forwarded).toBeGreaterThanOrEqual(30n * 3n);
      expect(during.staleDropped).toBe(before.staleDropped);
      expect((await c().steering.counters()).backends.get(1)?.flows).toBe(30n); // c steered them

      // c catches up: it tunnels to b directly, a forwards no more, every connection goes on.
      await apply(table(3, net.b), c());
      expect((await client.round()).filter((r) => !r.ok)).toEqual([]);
      expect(echo.conns.length).toBe(accepted + 30);
      expect((await forwarding(net.a)).forwarded).toBe(during.forwarded);
    } finally {
      client.child.stdin!.end();
    }
  }, 120_000);

  it('drops a frame forwarded once that is still not local, counts it stale, answers no reset; connections survive once the tables agree', async () => {
    const client = await net.startClient(VIP_PORT, 2000);
    try {
      expect((await client.open(10)).filter((r) => !r.ok)).toEqual([]);
      const accepted = echo.conns.length;
      const [aBefore, bBefore] = [await forwarding(net.a), await forwarding(net.b)];
      // Disagreement: c and b say the workload is on a, a says b. c -> a -> b (forwarded once) -> dropped at b.
      await apply(table(4, net.a), c(), net.b);
      const round = client.round();
      // A new connection's SYNs vanish: the connect times out, no reset (which would end it at once).
      expect(await connectExit(VIP, VIP_PORT, 2)).toBe(124);
      const [aDuring, bDuring] = [await forwarding(net.a), await forwarding(net.b)];
      expect(aDuring.forwarded).toBeGreaterThan(aBefore.forwarded);
      expect(bDuring.staleDropped).toBeGreaterThan(bBefore.staleDropped);
      expect(bDuring.forwarded).toBe(bBefore.forwarded); // b sent nothing back: no loop
      expect(aDuring.staleDropped).toBe(aBefore.staleDropped);

      // The tables agree again (the workload on b): retransmissions get through, every byte checked.
      await apply(table(5, net.b), ...net.hosts);
      expect((await round).filter((r) => !r.ok)).toEqual([]);
      expect(echo.conns.length).toBe(accepted);
    } finally {
      client.child.stdin!.end();
    }
  }, 120_000);

  it('drops a tunnelled frame whose backend no table here knows, counted stale', async () => {
    // c steers to backend 1 on a; a's table (generation 6) has no such backend.
    await apply({ generation: 6, services: [{ id: 1, proto: 'tcp', vip: VIP, vipPort: VIP_PORT, backends: [] }] }, net.a);
    await apply(table(6, net.a), c());
    const before = await forwarding(net.a);
    expect(await connectExit(VIP, VIP_PORT, 2)).toBe(124);
    const after = await forwarding(net.a);
    expect(after.staleDropped).toBeGreaterThan(before.staleDropped);
    expect(after.forwarded).toBe(before.forwarded);
  }, 60_000);
});
