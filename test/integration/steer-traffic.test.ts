/**
 * Steering with real TCP traffic in a routed fabric (test/support/steer-netns.ts): a client
 * talks to a VIP that the router sends to host a; a's XDP program spreads the connections over
 * a backend on a (DNAT) and backends on b (tunnelled, DNAT on b, direct reply from b). Every
 * byte is echoed and compared, the client must see the VIP as its peer, and a's counters must
 * match what the backends accepted.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SteeringBackend, SteeringTable } from '../../agent/steering.js';
import { CLIENT_ADDRESS, SteerNetns, VIP, type EchoServer, type OpenResult, type SteerHost } from '../support/steer-netns.js';

const VIP_PORT = 7000;
const net = new SteerNetns('tr');
let echo: Record<'a1' | 'b1' | 'b2', EchoServer>;

const be = (id: number, h: SteerHost, port: number, extra: Partial<SteeringBackend> = {}): SteeringBackend => ({
  id,
  address: h.workload,
  port,
  weight: 1,
  host: h.name,
  hostAddress: h.address,
  draining: false,
  ...extra,
});
const table = (generation: number, backends: SteeringBackend[]): SteeringTable => ({ generation, services: [{ id: 1, proto: 'tcp', vip: VIP, vipPort: VIP_PORT, backends }] });
const applyAll = async (t: SteeringTable) => {
  for (const h of [net.a, net.b]) expect(await h.steering.apply(t)).toEqual({ generation: t.generation, applied: true });
};

/** Which backend (echo server) accepted the connection from this client port. */
function backendOf(r: OpenResult): string {
  const peer = `${CLIENT_ADDRESS}:${r.localPort}`;
  const at = Object.entries(echo).filter(([, e]) => e.conns.includes(peer));
  if (at.length !== 1) throw new Error(`connection ${r.i} (${peer}) was accepted by ${at.length} backends`);
  return at[0][0];
}

beforeAll(async () => {
  await net.setUp();
  echo = { a1: await net.startEcho(net.a, 7001), b1: await net.startEcho(net.b, 7001), b2: await net.startEcho(net.b, 7002) };
  await applyAll(table(1, [be(1, net.a, 7001), be(2, net.b, 7001)]));
}, 120_000);

afterAll(() => net.tearDown(), 300_000); // a cut-short teardown leaves namespaces behind

describe('steering in a routed fabric', () => {
  it('spreads 200 connections over a backend on each host: every byte echoed, the VIP as peer, counters match', async () => {
    const client = await net.startClient(VIP_PORT, 8192);
    const opened = await client.open(200);
    expect(opened.filter((r) => !r.ok)).toEqual([]);
    expect(new Set(opened.map((r) => r.peer))).toEqual(new Set([`${VIP}:${VIP_PORT}`]));
    const byBackend = { a1: 0, b1: 0, b2: 0 };
    for (const r of opened) byBackend[backendOf(r) as keyof typeof byBackend]++;
    expect(byBackend.a1).toBeGreaterThan(0);
    expect(byBackend.b1).toBeGreaterThan(0);
    expect(byBackend.a1 + byBackend.b1).toBe(200);

    // A second exchange on every connection: each stays with its backend.
    expect((await client.round()).filter((r) => !r.ok)).toEqual([]);
    expect(echo.a1.conns.length + echo.b1.conns.length).toBe(200);

    const c = await net.a.steering.counters();
    expect(c.backends.get(1)?.flows).toBe(BigInt(byBackend.a1));
    expect(c.backends.get(2)?.flows).toBe(BigInt(byBackend.b1));
    expect(c.services.get(1)?.flows).toBe(200n);
    // Client-to-service bytes (IPv4 lengths) cover at least the two chunks each connection sent.
    expect(c.backends.get(1)!.bytes).toBeGreaterThanOrEqual(BigInt(byBackend.a1 * 2 * 8192));
    expect(c.backends.get(2)!.bytes).toBeGreaterThanOrEqual(BigInt(byBackend.b1 * 2 * 8192));
    expect(c.services.get(1)!.packets).toBe(c.backends.get(1)!.packets + c.backends.get(2)!.packets);
    // b only finished what a tunnelled: it counts nothing.
    expect((await net.b.steering.counters()).backends.size).toBe(0);
    expect(await net.a.steering.liveFlows([1, 2])).toBeGreaterThanOrEqual(200);
    client.child.stdin!.end();
  }, 120_000);

  it('keeps established connections through add and drain; a removal ends only that backend\'s', async () => {
    const client = await net.startClient(VIP_PORT, 1000);
    const first = await client.open(30);
    expect(first.filter((r) => !r.ok)).toEqual([]);
    const owner = new Map(first.map((r) => [r.i, backendOf(r)]));
    const accepted = () => echo.a1.conns.length + echo.b1.conns.length + echo.b2.conns.length;

    // Add b2 (weight 2).
    await applyAll(table(2, [be(1, net.a, 7001), be(2, net.b, 7001), be(3, net.b, 7002, { weight: 2 })]));
    expect(await net.a.steering.appliedGeneration()).toBe(2);
    expect(await net.b.steering.appliedGeneration()).toBe(2);
    const before = accepted();
    expect((await client.round()).filter((r) => !r.ok)).toEqual([]);
    expect(accepted()).toBe(before); // no connection was handed to another backend
    const second = await client.open(30);
    expect(second.filter((r) => !r.ok)).toEqual([]);
    expect(second.some((r) => backendOf(r) === 'b2')).toBe(true);

    // Drain a1: its connections go on, new ones avoid it.
    await applyAll(table(3, [be(1, net.a, 7001, { draining: true }), be(2, net.b, 7001), be(3, net.b, 7002, { weight: 2 })]));
    expect((await client.round()).filter((r) => !r.ok)).toEqual([]);
    const third = await client.open(20);
    expect(third.filter((r) => !r.ok)).toEqual([]);
    expect(third.filter((r) => backendOf(r) === 'a1')).toEqual([]);
    for (const r of second) owner.set(r.i, backendOf(r));
    for (const r of third) owner.set(r.i, backendOf(r));

    // Remove b1: exactly its connections end (the backend they are moved to resets them).
    await applyAll(table(4, [be(1, net.a, 7001, { draining: true }), be(3, net.b, 7002, { weight: 2 })]));
    const round = await client.round();
    const failed = round.filter((r) => !r.ok).map((r) => r.i).sort((x, y) => x - y);
    const onB1 = [...owner].filter(([, b]) => b === 'b1').map(([i]) => i).sort((x, y) => x - y);
    expect(onB1.length).toBeGreaterThan(0);
    expect(failed).toEqual(onB1);
    client.child.stdin!.end();
  }, 180_000);

  it('applies generations atomically under traffic: new and established connections all work across 40 flips', async () => {
    const client = await net.startClient(VIP_PORT, 2000);
    expect((await client.open(20)).filter((r) => !r.ok)).toEqual([]);
    // The same backends in both, weights and draining flipped: no flow loses its backend.
    const tables = [
      (g: number) => table(g, [be(1, net.a, 7001), be(3, net.b, 7002), be(4, net.b, 7001, { draining: true })]),
      (g: number) => table(g, [be(1, net.a, 7001, { weight: 5 }), be(3, net.b, 7002, { draining: true }), be(4, net.b, 7001)]),
    ];
    let opening = client.open(60);
    const start = await net.a.steering.appliedGeneration();
    for (let i = 1; i <= 40; i++) {
      await applyAll(tables[i % 2](start + i));
      if (i === 20) {
        expect((await opening).filter((r) => !r.ok)).toEqual([]);
        opening = client.open(60);
      }
    }
    expect((await opening).filter((r) => !r.ok)).toEqual([]);
    expect((await client.round()).filter((r) => !r.ok)).toEqual([]);
    expect(await net.a.steering.appliedGeneration()).toBe(start + 40);
    // A table at or below the held generation changes nothing.
    expect(await net.a.steering.apply(tables[0](start + 3))).toEqual({ generation: start + 40, applied: false });
    client.child.stdin!.end();
  }, 180_000);

  it('keeps every established flow and the applied generation through an agent restart (programs reloaded over the pinned maps)', async () => {
    const client = await net.startClient(VIP_PORT, 3000);
    const opened = await client.open(40);
    expect(opened.filter((r) => !r.ok)).toEqual([]);
    const generation = await net.a.steering.appliedGeneration();
    const accepted = echo.a1.conns.length + echo.b1.conns.length + echo.b2.conns.length;
    for (const h of [net.a, net.b]) {
      const again = await net.restartSteering(h);
      expect(await again.appliedGeneration()).toBe(generation);
    }
    expect((await client.round()).filter((r) => !r.ok)).toEqual([]);
    expect(echo.a1.conns.length + echo.b1.conns.length + echo.b2.conns.length).toBe(accepted);
    client.child.stdin!.end();
  }, 120_000);
});
