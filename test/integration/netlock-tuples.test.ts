import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { execCommand } from '../../lib/exec.js';
import type { Endpoint } from '../../lib/endpoint.js';
import type { FourTuple } from '../../agent/netlock.js';
import { MapLayoutError } from '../../agent/linux/bpf/map-layout.js';
import { LEGACY_TUPLE_MAP_SHAPE as TUPLE_MAP_SHAPE, lockPins } from '../../agent/linux/lock-maps.js';
import { EbpfNetLock } from '../../agent/linux/netlock-ebpf.js';
import { BpfMapError, BpfMapShapeError, NativeMap } from '../../agent/linux/bpf/native-map.js';
import { connHash, CONN_TABLE_SHAPE } from '../../agent/linux/conn-lock-table.js';
import { encodeLockValue, encodeTupleKey, encodeTupleKeys } from '../../agent/linux/lock-map-codec.js';
import { netnsPath } from '../../agent/linux/netns-exec.js';
import { LockNetns } from '../support/lock-netns.js';

/*
 * Exact-connection (4-tuple) lock entries on a veth host, in the connection table the agent
 * writes in memory and the XDP program reads.
 * "a" (198.18.251.1) runs a TCP echo server on :7000 with the lock on its eth0; "b"
 * (198.18.251.2) holds two established connections to it from fixed ports, plus short probes.
 */
const net = new LockNetns({ tag: 'tt', subnet: 251, buildNative: true });
const nsB = net.b.netns;
const pinRoot = net.pinRoot;
const ADDR_A = net.a.address;
const ADDR_B = net.b.address;
const PORT = 7000;
/** Local ports of the two long-lived connections from b. */
const CLIENT_PORTS = [41001, 41002];
const endpoint: Endpoint = { proto: 'tcp', address: ADDR_A, port: PORT };
const conn = (remotePort: number): FourTuple => ({ proto: 'tcp', localAddress: ADDR_A, localPort: PORT, remoteAddress: ADDR_B, remotePort });
const [conn1, conn2] = CLIENT_PORTS.map(conn);

const lockOpts = net.lockOpts;

/** Echo server: every byte back. */
const ECHO_SERVER = `
require('node:net').createServer((s) => { s.on('error', () => {}); s.pipe(s); })
  .listen(${PORT}, '${ADDR_A}', () => console.log('listening'));
`;

/**
 * Two connections from fixed local ports. stdin "send I TOKEN" writes TOKEN on connection I;
 * stdout "echo I TOKEN" for every line that comes back.
 */
const TWO_CONNECTIONS = `
const net = require('node:net');
const [host, port, ...locals] = process.argv.slice(1);
let open = 0;
const socks = locals.map((lp, i) => {
  const s = net.connect({ host, port: Number(port), localPort: Number(lp) }, () => { if (++open === locals.length) console.log('ready'); });
  let buf = '';
  s.setEncoding('utf8');
  s.on('data', (d) => { buf += d; let n; while ((n = buf.indexOf('\\n')) >= 0) { console.log('echo ' + i + ' ' + buf.slice(0, n)); buf = buf.slice(n + 1); } });
  s.on('error', (e) => console.log('error ' + i + ' ' + e.code));
  return s;
});
require('node:readline').createInterface({ input: process.stdin }).on('line', (l) => {
  const [cmd, i, token] = l.split(' ');
  if (cmd === 'send') socks[Number(i)].write(token + '\\n');
});
`;

/** Prints "connected", an error code or "timeout" for one connect from b. */
const CONNECT_PROBE = `
const net = require('node:net');
const [host, port, localPort, ms] = process.argv.slice(1);
const done = (r) => { console.log(r); process.exit(0); };
const s = net.connect({ host, port: Number(port), localPort: Number(localPort) });
s.on('connect', () => done('connected'));
s.on('error', (e) => done(e.code || e.message));
setTimeout(() => done('timeout'), Number(ms));
`;

let client: ChildProcess | undefined;
let lock: EbpfNetLock | undefined;
const echoes: string[] = [];
const echoWaiters: (() => void)[] = [];
/** Fresh source ports for probes: a 4-tuple is never reused (no TIME_WAIT surprises). */
let nextProbePort = 42000;

/** Collects the client's echo lines and wakes whoever waits for one. */
function onEcho(line: string): void {
  echoes.push(line);
  echoWaiters.splice(0).forEach((w) => w());
}

/** Sends a token on connection i; resolves whether its echo came back within ms. */
async function echoWithin(i: number, ms: number, token = randomBytes(4).toString('hex')): Promise<boolean> {
  client!.stdin!.write(`send ${i} ${token}\n`);
  return waitForEcho(i, token, ms);
}

async function waitForEcho(i: number, token: string, ms: number): Promise<boolean> {
  const line = `echo ${i} ${token}`;
  const deadline = Date.now() + ms;
  while (!echoes.includes(line)) {
    const left = deadline - Date.now();
    if (left <= 0) return false;
    await Promise.race([new Promise<void>((r) => echoWaiters.push(r)), sleep(left)]);
  }
  return true;
}

async function probe(timeoutMs = 1000): Promise<string> {
  const r = await execCommand('nsenter', [`--net=${netnsPath(nsB)}`, process.execPath, '-e', CONNECT_PROBE, ADDR_A, String(PORT), String(nextProbePort++), String(timeoutMs)], {
    timeoutMs: timeoutMs + 10_000,
  });
  return r.stdout.trim();
}

async function tupleEntry(t: FourTuple) {
  return (await lock!.listTuples()).find((e) => e.tuple.remotePort === t.remotePort && e.tuple.remoteAddress === t.remoteAddress);
}

/** n distinct connections to the endpoint, from peers 198.19.x.y (never on the wire). */
function manyTuples(n: number, from = 0): FourTuple[] {
  return Array.from({ length: n }, (_, k) => {
    const i = from + k;
    return { proto: i % 3 === 0 ? 'udp' : 'tcp', localAddress: ADDR_A, localPort: PORT, remoteAddress: `198.19.${(i >> 8) & 255}.${i & 255}`, remotePort: 1024 + (i >> 16) };
  });
}

const tupleId = (t: FourTuple) => `${t.proto}/${t.remoteAddress}/${t.remotePort}/${t.localAddress}/${t.localPort}`;

beforeAll(async () => {
  await net.setUp();
  await net.startNode(net.a, ECHO_SERVER, [], { ready: 'listening', onLine: onEcho });
  lock = net.lock;
  client = await net.startNode(net.b, TWO_CONNECTIONS, [ADDR_A, String(PORT), ...CLIENT_PORTS.map(String)], { ready: 'ready', onLine: onEcho });
});

afterAll(() => net.tearDown());

describe('exact-connection lock entries', () => {
  it('installs both lock maps, read and written natively', async () => {
    expect(lock!.mapMethod).toBe('native');
    expect(await lock!.listTuples()).toEqual([]);
    expect(await echoWithin(0, 2000)).toBe(true);
    expect(await echoWithin(1, 2000)).toBe(true);
  });

  it('drops exactly the locked connection; its sibling and new connections keep working', async () => {
    await lock!.lockTuples([conn1], 1n, 30_000);
    const held = 'held-' + randomBytes(4).toString('hex');
    expect(await echoWithin(0, 600, held)).toBe(false); // silently dropped, no RST: the connection lives
    expect(await echoWithin(1, 2000)).toBe(true);
    expect(await probe()).toBe('connected');

    const entry = await tupleEntry(conn1);
    expect(entry).toMatchObject({ tuple: conn1, version: 1n, expired: false });
    expect(entry!.drops).toBeGreaterThan(0n);
    expect(await lock!.list()).toEqual([]); // no endpoint entry was involved

    await lock!.unlockTuples([conn1], 1n);
    expect(await lock!.listTuples()).toEqual([]);
    // TCP retransmits the held segment: the echo arrives without resending it.
    expect(await waitForEcho(0, held, 10_000)).toBe(true);
    expect(await echoWithin(0, 2000)).toBe(true);
    await lock!.unlockTuples([conn1], 1n); // idempotent
  });

  it('drops when either an endpoint or a connection entry matches', async () => {
    await lock!.lock([endpoint], 3n, 30_000);
    expect(await probe()).toBe('timeout');
    const held = 'ep-' + randomBytes(4).toString('hex');
    expect(await echoWithin(1, 600, held)).toBe(false);
    await lock!.lockTuples([conn2], 3n, 30_000);
    await lock!.unlock([endpoint], 3n);
    expect(await probe()).toBe('connected'); // the endpoint is free again ...
    expect(await waitForEcho(1, held, 1500)).toBe(false); // ... but this connection is still held
    await lock!.unlockTuples([conn2], 3n);
    expect(await waitForEcho(1, held, 10_000)).toBe(true);
  });

  it('stops dropping by itself when the lease runs out, and sweeps the entry', async () => {
    await lock!.lockTuples([conn1], 20n, 500);
    const held = 'lease-' + randomBytes(4).toString('hex');
    expect(await echoWithin(0, 300, held)).toBe(false);
    const entry = await tupleEntry(conn1);
    expect(entry!.drops).toBeGreaterThan(0n);

    await sleep(Math.max(0, Number(entry!.deadlineNs - process.hrtime.bigint()) / 1e6) + 50);
    expect(await waitForEcho(0, held, 10_000)).toBe(true); // no unlock happened
    expect((await tupleEntry(conn1))?.expired).toBe(true);

    expect(await lock!.sweepExpired()).toBe(1);
    expect(await lock!.listTuples()).toEqual([]);
    expect(await lock!.sweepExpired()).toBe(0);
  });

  it('guards connection lock and unlock with the version', async () => {
    await lock!.lockTuples([conn1], 5n, 30_000);
    const locked = await tupleEntry(conn1);

    await lock!.unlockTuples([conn1], 4n); // older unlock: ignored
    expect((await tupleEntry(conn1))?.version).toBe(5n);
    const held = 'ver-' + randomBytes(4).toString('hex');
    expect(await echoWithin(0, 400, held)).toBe(false);

    await lock!.lockTuples([conn1], 3n, 1); // older lock: does not shorten the lease
    let entry = await tupleEntry(conn1);
    expect(entry?.version).toBe(5n);
    expect(entry?.deadlineNs).toBe(locked!.deadlineNs);

    await lock!.lockTuples([conn1], 7n, 30_000); // newer lock: wins, re-leases the entry
    entry = await tupleEntry(conn1);
    expect(entry?.version).toBe(7n);
    expect(entry!.deadlineNs).toBeGreaterThan(locked!.deadlineNs);
    expect(entry!.drops).toBeGreaterThanOrEqual(1n); // the drops so far are kept

    await lock!.unlockTuples([conn1], 7n);
    expect(await lock!.listTuples()).toEqual([]);
    expect(await waitForEcho(0, held, 10_000)).toBe(true);
  });

  it('rejects malformed tuples before touching the map', async () => {
    await expect(lock!.lockTuples([{ ...conn1, remoteAddress: 'nope' }], 1n, 1000)).rejects.toMatchObject({ name: 'LockRequestError', field: 'tuples' });
    await expect(lock!.lockTuples([conn1], -1n, 1000)).rejects.toMatchObject({ field: 'version' });
    await expect(lock!.lockTuples([conn1], 1n, 0)).rejects.toMatchObject({ field: 'leaseMs' });
    expect(await lock!.listTuples()).toEqual([]);
  });

  it('round-trips 10,000 connections through the connection table, version guard included', async () => {
    const tuples = manyTuples(10_000);
    await lock!.lockTuples(tuples, 10n, 60_000);
    let listed = await lock!.listTuples();
    expect(listed.length).toBe(10_000);
    expect(new Set(listed.map((e) => tupleId(e.tuple)))).toEqual(new Set(tuples.map(tupleId)));
    expect(listed.every((e) => e.version === 10n && !e.expired)).toBe(true);

    // Another agent on the same pins (a restarted one) reads the same entries from the kernel's table.
    const other = new EbpfNetLock(lockOpts);
    expect((await other.listTuples()).length).toBe(10_000);

    // A newer lock of half of them; an unlock of all at a version between: only the newer half stays.
    const newer = tuples.filter((_, i) => i % 2 === 0);
    await lock!.lockTuples(newer, 20n, 60_000);
    await lock!.unlockTuples(tuples, 15n);
    listed = await lock!.listTuples();
    expect(listed.length).toBe(5_000);
    expect(new Set(listed.map((e) => tupleId(e.tuple)))).toEqual(new Set(newer.map(tupleId)));
    expect(listed.every((e) => e.version === 20n)).toBe(true);

    await lock!.unlockTuples(tuples, 20n);
    expect(await lock!.listTuples()).toEqual([]);
  });

  it('stops a connection whose entry sits down a probe run, past colliding and deleted entries', async () => {
    // Decoys: made-up peers whose keys have conn1's home slot, locked first, so conn1's entry
    // lands three slots further. Only a program that hashes and probes as the agent's writer
    // (native/bpfmap/conn_table.c, the same lock_maps.h) does finds it.
    const home = connHash(encodeTupleKey(conn1)) & (CONN_TABLE_SHAPE.slots - 1);
    const decoys: FourTuple[] = [];
    for (let i = 1; decoys.length < 3; i++) {
      const t: FourTuple = { ...conn1, remoteAddress: `198.19.${(i >> 8) & 255}.${i & 255}`, remotePort: 40000 + (i >> 16) };
      if ((connHash(encodeTupleKey(t)) & (CONN_TABLE_SHAPE.slots - 1)) === home) decoys.push(t);
    }
    await lock!.lockTuples(decoys, 8n, 30_000);
    await lock!.lockTuples([conn1], 8n, 30_000);
    const held = 'probe-' + randomBytes(4).toString('hex');
    expect(await echoWithin(0, 600, held)).toBe(false);
    expect((await tupleEntry(conn1))!.drops).toBeGreaterThan(0n);

    await lock!.unlockTuples(decoys, 8n); // their slots are DELETED now, not EMPTY: the probe goes on past them
    expect(await waitForEcho(0, held, 600)).toBe(false);
    await lock!.unlockTuples([conn1], 8n);
    expect(await waitForEcho(0, held, 10_000)).toBe(true);
    expect(await lock!.listTuples()).toEqual([]);
  });

  it('keeps held connection locks across a reinstall', async () => {
    await lock!.lockTuples([conn1], 30n, 30_000);
    const restarted = new EbpfNetLock(lockOpts);
    await restarted.install();
    await restarted.install(); // idempotent
    lock = restarted;
    expect((await tupleEntry(conn1))?.version).toBe(30n);
    const held = 're-' + randomBytes(4).toString('hex');
    expect(await echoWithin(0, 400, held)).toBe(false);
    await lock.unlockTuples([conn1], 30n);
    expect(await waitForEcho(0, held, 10_000)).toBe(true);
  });

  it('upgrades a host whose connection entries are in the older hash map (layout 3), keeping them held', async () => {
    // What a layout-3 host has: no connection table, a tuple hash map holding conn2.
    const pins = lockPins(lockOpts.pinDir);
    await lock!.lock([endpoint], 40n, 30_000);
    await execCommand('rm', ['-f', pins.connTable]);
    await execCommand('bpftool', ['map', 'create', pins.legacyTupleMap, 'type', 'hash', 'key', '16', 'value', '32', 'entries', String(TUPLE_MAP_SHAPE.maxEntries), 'name', 'godwit_lock_tup']);
    const far = process.hrtime.bigint() + 30_000_000_000n;
    await new NativeMap(pins.legacyTupleMap, TUPLE_MAP_SHAPE).update(encodeTupleKeys([conn2]), encodeLockValue({ version: 6n, deadlineNs: far, drops: 0n, lastDropNs: 0n }));

    const upgraded = new EbpfNetLock(lockOpts);
    await upgraded.install();
    lock = upgraded;
    expect((await lock.list()).map((e) => e.version)).toEqual([40n]); // the endpoint map was reused
    expect(await lock.listTuples()).toMatchObject([{ tuple: conn2, version: 6n, deadlineNs: far }]); // copied over
    expect((await execCommand('test', ['-e', pins.legacyTupleMap], { allowFailure: true })).exitCode).not.toBe(0); // and the old pin gone
    await lock.unlock([endpoint], 40n);
    const held = 'up-' + randomBytes(4).toString('hex');
    expect(await echoWithin(1, 400, held)).toBe(false); // the new program holds conn2
    expect(await echoWithin(0, 2000)).toBe(true);
    await lock.unlockTuples([conn2], 6n);
    expect(await waitForEcho(1, held, 10_000)).toBe(true);
  });

  it('refuses to reuse a pinned connection table with another layout', async () => {
    const badDir = `${pinRoot}/bad`;
    await execCommand('mkdir', ['-p', `${badDir}/maps`]);
    // The right size, but not mmappable: the agent could not write it in memory.
    await execCommand('bpftool', ['map', 'create', `${badDir}/maps/godwit_lock_conn`, 'type', 'array', 'key', '4', 'value', '56', 'entries', String(CONN_TABLE_SHAPE.slots), 'name', 'godwit_lock_con']);
    await expect(new EbpfNetLock({ ...lockOpts, pinDir: badDir }).install()).rejects.toBeInstanceOf(MapLayoutError);
    await execCommand('rm', ['-rf', badDir]);
  });
});

describe('NativeMap on a bare pinned map', () => {
  const dir = `${pinRoot}/bare`;
  const pin = `${dir}/m`;

  beforeAll(async () => {
    await execCommand('mkdir', ['-p', dir]);
    await execCommand('bpftool', ['map', 'create', pin, 'type', 'hash', 'key', '16', 'value', '32', 'entries', '4', 'name', 'godwit_t_bare']);
  });

  afterAll(async () => {
    await execCommand('rm', ['-rf', dir]);
  });

  it('writes, reads and deletes whole batches, skipping keys that are not there', async () => {
    const m = new NativeMap(pin, TUPLE_MAP_SHAPE);
    const keys = encodeTupleKeys(manyTuples(3));
    const values = Buffer.concat([1n, 2n, 3n].map((version) => encodeLockValue({ version, deadlineNs: 9n, drops: 0n, lastDropNs: 0n })));
    await m.update(keys, values);
    const held = await m.dump();
    expect(held.count).toBe(3);
    const byKey = new Map(Array.from({ length: 3 }, (_, i) => [held.keys.subarray(i * 16, i * 16 + 16).toString('hex'), held.values.subarray(i * 32, i * 32 + 32).toString('hex')]));
    for (let i = 0; i < 3; i++) expect(byKey.get(keys.subarray(i * 16, i * 16 + 16).toString('hex'))).toBe(values.subarray(i * 32, i * 32 + 32).toString('hex'));

    const missing = encodeTupleKeys(manyTuples(1, 500));
    expect(await m.delete(Buffer.concat([keys.subarray(0, 16), missing, keys.subarray(16)]))).toBe(3);
    expect((await m.dump()).count).toBe(0);
  });

  it('reports a full map with how much went in', async () => {
    const m = new NativeMap(pin, TUPLE_MAP_SHAPE);
    const keys = encodeTupleKeys(manyTuples(6));
    const err = await m.update(keys, Buffer.alloc(6 * 32)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BpfMapError);
    expect(err).toMatchObject({ code: 'E2BIG', applied: 4, pin });
    expect(await m.delete(keys)).toBe(4);
  });

  it('refuses a map of another shape and a missing pin', async () => {
    await expect(new NativeMap(pin, { ...TUPLE_MAP_SHAPE, keySize: 8 }).dump()).rejects.toBeInstanceOf(BpfMapShapeError);
    await expect(new NativeMap(`${dir}/none`, TUPLE_MAP_SHAPE).dump()).rejects.toMatchObject({ name: 'BpfMapError', code: 'ENOENT' });
  });
});
