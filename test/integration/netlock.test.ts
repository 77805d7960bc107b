import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { setTimeout as sleep } from 'node:timers/promises';
import { execCommand } from '../../lib/exec.js';
import type { Endpoint } from '../../lib/endpoint.js';
import { MapLayoutError } from '../../agent/linux/bpf/map-layout.js';
import { ChainSlot } from '../../agent/linux/bpf/xdp-chain.js';
import { EbpfNetLock } from '../../agent/linux/netlock-ebpf.js';
import { netnsPath } from '../../agent/linux/netns-exec.js';
import { LockNetns } from '../support/lock-netns.js';

/*
 * Two lab hosts as network namespaces joined by a veth pair: "a" (198.18.250.1) runs a TCP
 * server on :7000 with the lock on its eth0, "b" (198.18.250.2) is the peer that connects.
 */
const net = new LockNetns({ tag: 't', subnet: 250 });
const nsB = net.b.netns;
const pinRoot = net.pinRoot;
const ADDR_A = net.a.address;
const PORT = 7000;
const tcpEp: Endpoint = { proto: 'tcp', address: ADDR_A, port: PORT };
const udpEp: Endpoint = { proto: 'udp', address: ADDR_A, port: PORT };

const execA = net.a.exec;
const lockOpts = net.lockOpts;

/** Prints "connected", an error code (ECONNREFUSED when a RST came back) or "timeout". */
const CONNECT_PROBE = `
const net = require('node:net');
const [host, port, ms] = process.argv.slice(1);
const done = (r) => { console.log(r); process.exit(0); };
const s = net.connect({ host, port: Number(port) });
s.on('connect', () => done('connected'));
s.on('error', (e) => done(e.code || e.message));
setTimeout(() => done('timeout'), Number(ms));
`;

const UDP_SEND = `
const s = require('node:dgram').createSocket('udp4');
const [host, port] = process.argv.slice(1);
s.send('ping', Number(port), host, (err) => { if (err) throw err; s.close(); });
`;

async function connectFromB(port = PORT, timeoutMs = 1000): Promise<string> {
  const r = await execCommand('nsenter', [`--net=${netnsPath(nsB)}`, process.execPath, '-e', CONNECT_PROBE, ADDR_A, String(port), String(timeoutMs)], {
    timeoutMs: timeoutMs + 10_000,
  });
  return r.stdout.trim();
}

async function xdpProgOnA(): Promise<{ id: number; name: string } | undefined> {
  const [link] = JSON.parse((await execA('ip', ['-j', 'link', 'show', 'dev', 'eth0'])).stdout) as { xdp?: { prog?: { id: number; name: string } } }[];
  return link?.xdp?.prog;
}

/** The program id in the lock's chain slot (ChainSlot.lock of the pinned godwit_xdp_chain). */
async function lockSlotProgId(): Promise<number | undefined> {
  const rows = JSON.parse((await execCommand('bpftool', ['-j', 'map', 'dump', 'pinned', `${lockOpts.pinDir}/maps/godwit_xdp_chain`])).stdout) as { formatted: { key: number; value: number } }[];
  return rows.find((r) => r.formatted.key === ChainSlot.lock)?.formatted.value;
}

async function entryFor(e: Endpoint) {
  return (await lock!.list()).find((x) => x.endpoint.proto === e.proto && x.endpoint.address === e.address && x.endpoint.port === e.port);
}

let lock: EbpfNetLock | undefined;

// Probes exit right after connecting, so the server sees resets: ignore them per socket.
const SERVER = `require('node:net').createServer((s) => { s.on('error', () => {}); s.end('hi\\n'); }).listen(${PORT}, '${ADDR_A}', () => console.log('listening'))`;

beforeAll(async () => {
  await net.setUp();
  await net.startNode(net.a, SERVER, [], { ready: 'listening' });
  lock = net.lock;
});

afterAll(() => net.tearDown());

describe('EbpfNetLock on a veth host', () => {
  it('installs natively with an empty lock map', async () => {
    expect(lock!.attachMode).toBe('native');
    expect((await xdpProgOnA())?.name).toBe('godwit_xdp_root'); // the chain's root, with the lock in its slot
    expect(await lockSlotProgId()).toBeDefined();
    expect(await lock!.list()).toEqual([]);
  });

  it('lets connections through while nothing is locked', async () => {
    expect(await connectFromB()).toBe('connected');
  });

  it('drops SYNs to a locked endpoint silently and counts them', async () => {
    await lock!.lock([tcpEp], 10n, 30_000);
    expect(await connectFromB()).toBe('timeout'); // no RST: not ECONNREFUSED
    // Contrast: a closed port that is not locked still answers with a RST.
    expect(await connectFromB(PORT + 1, 1000)).toBe('ECONNREFUSED');
    const [entry, ...rest] = await lock!.list();
    expect(rest).toEqual([]);
    expect(entry.endpoint).toEqual(tcpEp);
    expect(entry.version).toBe(10n);
    expect(entry.expired).toBe(false);
    expect(entry.drops).toBeGreaterThan(0n);
  });

  it('unlocks, and unlocking again is harmless', async () => {
    await lock!.unlock([tcpEp], 10n);
    expect(await lock!.list()).toEqual([]);
    expect(await connectFromB()).toBe('connected');
    await lock!.unlock([tcpEp], 10n);
  });

  it('guards lock and unlock with the version', async () => {
    await lock!.lock([tcpEp], 5n, 30_000);
    const [locked] = await lock!.list();

    await lock!.unlock([tcpEp], 4n); // older unlock: ignored
    expect(await connectFromB()).toBe('timeout');
    let [entry] = await lock!.list();
    expect(entry.version).toBe(5n);

    await lock!.lock([tcpEp], 3n, 1); // older lock: does not shorten the lease
    [entry] = await lock!.list();
    expect(entry.version).toBe(5n);
    expect(entry.deadlineNs).toBe(locked.deadlineNs);

    await lock!.lock([tcpEp], 7n, 30_000); // newer lock: wins, rewrites the entry whole
    [entry] = await lock!.list();
    expect(entry.version).toBe(7n);
    expect(entry.deadlineNs).toBeGreaterThan(locked.deadlineNs);
    expect(entry.drops).toBe(0n); // the count starts over (a lock does not read the map); no SYN came since

    await lock!.unlock([tcpEp], 7n);
    expect(await lock!.list()).toEqual([]);
  });

  it('stops dropping by itself when the lease runs out, and sweeps the entry', async () => {
    await lock!.lock([tcpEp], 20n, 500);
    expect(await connectFromB(PORT, 300)).toBe('timeout');
    const [entry] = await lock!.list();
    expect(entry.drops).toBeGreaterThan(0n);

    const leftMs = Number(entry.deadlineNs - process.hrtime.bigint()) / 1e6;
    await sleep(Math.max(0, leftMs) + 50);
    expect(await connectFromB()).toBe('connected'); // no unlock happened
    const [stale] = await lock!.list();
    expect(stale.expired).toBe(true);

    expect(await lock!.sweepExpired()).toBe(1);
    expect(await lock!.list()).toEqual([]);
    expect(await lock!.sweepExpired()).toBe(0);
  });

  it('locks UDP and TCP on the same port independently', async () => {
    await lock!.lock([udpEp], 1n, 30_000);
    expect(await connectFromB()).toBe('connected');
    await execCommand('nsenter', [`--net=${netnsPath(nsB)}`, process.execPath, '-e', UDP_SEND, ADDR_A, String(PORT)]);
    await sleep(100);
    const [entry] = await lock!.list();
    expect(entry.endpoint).toEqual(udpEp);
    expect(entry.drops).toBe(1n);
    await lock!.unlock([udpEp], 1n);
  });

  it('keeps held locks across a reinstall (agent restart)', async () => {
    await lock!.lock([tcpEp], 30n, 30_000);
    const before = await xdpProgOnA();
    const lockBefore = await lockSlotProgId();

    const restarted = new EbpfNetLock(lockOpts);
    await restarted.install();
    await restarted.install(); // idempotent
    lock = restarted;

    const after = await xdpProgOnA();
    expect(after).toEqual(before); // the root stays attached
    expect(await lockSlotProgId()).not.toBe(lockBefore); // the lock program was replaced, the map was not
    const entry = await entryFor(tcpEp);
    expect(entry?.version).toBe(30n);
    expect(await connectFromB()).toBe('timeout');
    expect((await entryFor(tcpEp))?.drops).toBeGreaterThan(entry!.drops);

    await lock.unlock([tcpEp], 30n);
    expect(await connectFromB()).toBe('connected');
  });

  it('refuses to reuse a pinned map with another layout', async () => {
    const badDir = `${pinRoot}/bad`;
    await execCommand('mkdir', ['-p', `${badDir}/maps`]);
    await execCommand('bpftool', ['map', 'create', `${badDir}/maps/godwit_lock_ep`, 'type', 'hash', 'key', '8', 'value', '16', 'entries', '16', 'name', 'godwit_lock_ep']);
    const other = new EbpfNetLock({ ...lockOpts, pinDir: badDir });
    await expect(other.install()).rejects.toBeInstanceOf(MapLayoutError);
    expect((await xdpProgOnA())?.id).toBeDefined(); // the running lock was not touched
    await execCommand('rm', ['-rf', badDir]);
  });

  it('falls back to generic XDP where the driver has no native XDP (a bridge)', async () => {
    await execA('ip', ['link', 'add', 'br0', 'type', 'bridge']); // goes away with the namespace
    const onBridge = new EbpfNetLock({ ...lockOpts, iface: 'br0', pinDir: `${pinRoot}/br` });
    try {
      await onBridge.install();
      expect(onBridge.attachMode).toBe('generic');
      await onBridge.install(); // replaces its own generic program in place
      expect(onBridge.attachMode).toBe('generic');
    } finally {
      await onBridge.uninstall();
    }
    const [br] = JSON.parse((await execA('ip', ['-j', 'link', 'show', 'dev', 'br0'])).stdout) as { xdp?: unknown }[];
    expect(br.xdp).toBeUndefined();
  });

  it('uninstalls: detaches the program and removes the pins', async () => {
    await lock!.uninstall();
    expect(await xdpProgOnA()).toBeUndefined();
    expect((await execCommand('test', ['-e', lockOpts.pinDir], { allowFailure: true })).exitCode).not.toBe(0);
    await lock!.uninstall(); // idempotent
  });
});
