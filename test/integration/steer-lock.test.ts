/**
 * The lock and steering on one interface, through the XDP chain (agent/linux/bpf/xdp-chain.ts):
 * host a of the steering fabric (test/support/steer-netns.ts) runs both, installed in either
 * order, in one pin folder. Traffic through the VIP works with both; steering (slot 0) runs
 * before the lock (slot 1), so a VIP packet DNATed to a locked workload endpoint, or tunnelled
 * to a by b and taken out of the tunnel there, is held by a's lock; taking either one away
 * leaves the other working and the root attached.
 */
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pinFolder } from '../../agent/linux/bpf/pin-folder.js';
import { ChainSlot, ROOT_PROG_NAME, XdpChain } from '../../agent/linux/bpf/xdp-chain.js';
import { EbpfNetLock } from '../../agent/linux/netlock-ebpf.js';
import type { SteeringTable } from '../../agent/steering.js';
import type { Endpoint } from '../../lib/endpoint.js';
import { SteerNetns, VIP, type EchoServer } from '../support/steer-netns.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const VIP_PORT = 7100;
const ECHO_PORT = 7101;
const LEASE_MS = 120_000;
const net = new SteerNetns('lk');
const log = pino({ level: 'silent' });
let lock: EbpfNetLock;
let chain: XdpChain;
let echo: EchoServer[];
let version = 0n;
let generation = 0;

/** The next generation: both backends, or (onlyA) a's alone, so that every VIP flow goes to a's workload. */
const table = (onlyA = false): SteeringTable => ({
  generation: ++generation,
  services: [
    {
      id: 1,
      proto: 'tcp',
      vip: VIP,
      vipPort: VIP_PORT,
      backends: [
        { id: 1, address: net.a.workload, port: ECHO_PORT, weight: 1, host: 'a', hostAddress: net.a.address, draining: false },
        ...(onlyA ? [] : [{ id: 2, address: net.b.workload, port: ECHO_PORT, weight: 1, host: 'b', hostAddress: net.b.address, draining: false }]),
      ],
    },
  ],
});
const applyBoth = async (t: SteeringTable) => {
  for (const h of [net.a, net.b]) await h.steering.apply(t);
};

/** Whether a TCP connection from the client to address:port opens (a dropped SYN: it does not). */
async function connects(address: string, port: number): Promise<boolean> {
  const r = await net.client.exec('timeout', ['5', 'bash', '-c', `exec 3<>/dev/tcp/${address}/${port}`], { allowFailure: true });
  return r.exitCode === 0;
}

/** 20 connections through the VIP, every byte echoed and checked by the client. */
async function vipTrafficWorks(): Promise<void> {
  const client = await net.startClient(VIP_PORT, 4096);
  try {
    const opened = await client.open(20);
    expect(opened.filter((r) => !r.ok)).toEqual([]);
    expect(new Set(opened.map((r) => r.peer))).toEqual(new Set([`${VIP}:${VIP_PORT}`]));
  } finally {
    client.child.stdin!.end();
  }
}

async function servicePackets(h = net.a): Promise<bigint> {
  return (await h.steering.counters()).services.get(1)?.packets ?? 0n;
}

async function lockDropsOf(e: Endpoint): Promise<bigint> {
  return (await lock.list()).find((x) => x.endpoint.address === e.address && x.endpoint.port === e.port)?.drops ?? 0n;
}

/** Locks `e`, checks that a connection to it does not open, unlocks, checks that one does. */
async function lockDrops(e: Endpoint): Promise<void> {
  const v = ++version;
  await lock.lock([e], v, LEASE_MS);
  expect(await connects(e.address, e.port)).toBe(false);
  expect(await lockDropsOf(e)).toBeGreaterThan(0n);
  await lock.unlock([e], v);
  expect(await connects(e.address, e.port)).toBe(true);
}

const workloadEndpoint = (): Endpoint => ({ proto: 'tcp', address: net.a.workload, port: ECHO_PORT });

/**
 * With every VIP flow steered to a's workload and its endpoint locked: a connection through the
 * VIP does not open, steering (the host `steeredBy`, whose counters grow) saw the SYNs first,
 * and a's lock held them after the DNAT (its drops grow). Unlocked, the connection opens.
 */
async function lockHoldsSteered(steeredBy = net.a): Promise<void> {
  await applyBoth(table(true));
  const e = workloadEndpoint();
  const v = ++version;
  await lock.lock([e], v, LEASE_MS);
  const before = await servicePackets(steeredBy);
  expect(await connects(VIP, VIP_PORT)).toBe(false);
  expect(await servicePackets(steeredBy)).toBeGreaterThan(before);
  expect(await lockDropsOf(e)).toBeGreaterThan(0n);
  await lock.unlock([e], v);
  expect(await connects(VIP, VIP_PORT)).toBe(true);
  await applyBoth(table());
}

async function rootAttached(): Promise<boolean> {
  return (await chain.attachment())?.progName === ROOT_PROG_NAME;
}

beforeAll(async () => {
  await net.setUp(); // steering installed on a and b
  // a's workload reachable directly as well, for the lock's check without steering.
  await net.router.exec('ip', ['route', 'add', `${net.a.workload}/32`, 'via', net.a.address]);
  echo = [await net.startEcho(net.a, ECHO_PORT), await net.startEcho(net.b, ECHO_PORT)];
  const pinDir = `${net.pinRoot}/a`;
  lock = new EbpfNetLock({ exec: net.a.exec, iface: 'eth0', pinDir, objectPath: `${REPO}build/bpf/lock.o`, log });
  chain = new XdpChain({ exec: net.a.exec, folder: pinFolder(pinDir), log, iface: 'eth0', rootObjectPath: `${REPO}build/bpf/root.o` });
  await applyBoth(table());
}, 180_000);

afterAll(async () => {
  await lock?.uninstall().catch(() => undefined);
  await net.tearDown();
}, 300_000); // teardown must finish even on a loaded machine: a cut-short one leaves namespaces behind

describe('the lock and steering on one interface', () => {
  const slotsNow = async () => [...(await chain.slots()).keys()].sort();

  it('steering first, then the lock: both in the chain, VIP traffic works, a VIP packet DNATed to a locked workload endpoint is held by the lock', async () => {
    await lock.install();
    expect(await slotsNow()).toEqual([ChainSlot.steer, ChainSlot.lock]);
    expect(ChainSlot.steer).toBeLessThan(ChainSlot.lock); // steering runs first
    expect(await rootAttached()).toBe(true);
    await vipTrafficWorks();
    await lockHoldsSteered();
    expect(echo[0].conns.length + echo[1].conns.length).toBeGreaterThanOrEqual(20);
  }, 180_000);

  it('a frame another host steered here is taken out of the tunnel before the lock, which holds it', async () => {
    // The VIP routed to b: b steers to a's workload through the tunnel, a decaps and DNATs, a's lock holds.
    await net.router.exec('ip', ['route', 'replace', `${VIP}/32`, 'via', net.b.address]);
    try {
      await lockHoldsSteered(net.b);
    } finally {
      await net.router.exec('ip', ['route', 'replace', `${VIP}/32`, 'via', net.a.address]);
    }
  }, 180_000);

  it('uninstalling steering leaves the lock working and the root attached', async () => {
    await net.a.steering.uninstall();
    expect([...(await chain.slots()).keys()]).toEqual([ChainSlot.lock]);
    expect(await rootAttached()).toBe(true);
    await lockDrops(workloadEndpoint());
  }, 120_000);

  it('the lock first, then steering: VIP traffic works again, steering still runs before the lock', async () => {
    await net.a.steering.install();
    expect(await slotsNow()).toEqual([ChainSlot.steer, ChainSlot.lock]);
    // Steering's maps were removed with it: the table is applied again, as an agent would.
    await applyBoth(table());
    await vipTrafficWorks();
    await lockHoldsSteered();
  }, 180_000);

  it('uninstalling the lock leaves steering working and the root attached; the last one out detaches it', async () => {
    await lock.uninstall();
    expect([...(await chain.slots()).keys()]).toEqual([ChainSlot.steer]);
    expect(await rootAttached()).toBe(true);
    await vipTrafficWorks();
    await net.a.steering.uninstall();
    expect(await chain.attachment()).toBeUndefined();
  }, 180_000);
});
