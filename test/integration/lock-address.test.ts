import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import type { ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { addressWide, type Endpoint } from '../../lib/endpoint.js';
import { execCommand } from '../../lib/exec.js';
import { lockScope } from '../../agent/lock-scope.js';
import { lockPins } from '../../agent/linux/lock-maps.js';
import { netnsPath } from '../../agent/linux/netns-exec.js';
import type { LockEntry } from '../../agent/netlock.js';
import { LockNetns } from '../support/lock-netns.js';

/*
 * Address-wide lock entries (port ANY_PORT) on a real XDP lock: what a migration adds
 * (agent/lock-scope.ts) so that the return traffic of a workload's own outgoing connections,
 * addressed to its address and an ephemeral port, is stopped, held and delivered like the rest.
 * Host "a" is locked and also owns OTHER, an address that is never locked; "b" is the peer.
 */
const net = new LockNetns({ tag: 'aw', subnet: 243, buildNative: true });
const OTHER = '198.18.243.3';
/** UDP ports a listens on, on its own address and on OTHER: none is an endpoint of the lock. */
const UDP_PORTS = [7301, 41999];

/** a's UDP receivers: prints each datagram as {to, text}. */
const RECEIVERS = `
const [addrs, ports] = process.argv.slice(1).map((s) => s.split(','));
let pending = addrs.length * ports.length;
for (const a of addrs) for (const p of ports) {
  const u = require('node:dgram').createSocket('udp4');
  u.on('message', (m) => console.log(JSON.stringify({ to: a + ':' + p, text: m.toString() })));
  u.bind(Number(p), a, () => { if (--pending === 0) console.log('listening'); });
}
`;

/** b's sender: stdin lines "ADDR PORT TEXT" send a datagram; "tcp ADDR PORT" tries a TCP connect and prints what happened. */
const SENDER = `
const u = require('node:dgram').createSocket('udp4');
u.bind(0, () => console.log('ready'));
require('node:readline').createInterface({ input: process.stdin }).on('line', (line) => {
  const [a, b, c] = line.split(' ');
  if (a === 'tcp') {
    const s = require('node:net').connect({ host: b, port: Number(c) });
    s.on('connect', () => { console.log(JSON.stringify({ connect: 'established' })); s.destroy(); });
    s.on('error', (e) => console.log(JSON.stringify({ connect: e.code })));
  } else u.send(c, Number(b), a);
});
`;

const received: string[] = [];
const connects: string[] = [];
let sender: ChildProcess;
const send = (line: string) => sender.stdin!.write(line + '\n');

async function until(what: string, cond: () => boolean, timeoutMs = 5000): Promise<void> {
  for (const t0 = Date.now(); !cond(); await sleep(20)) if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
}

function entry(entries: LockEntry[], e: Endpoint): LockEntry | undefined {
  return entries.find((x) => x.endpoint.proto === e.proto && x.endpoint.address === e.address && x.endpoint.port === e.port);
}

/**
 * Takes the held packets of each list of endpoints in turn, in a's namespace and one process
 * (what one take drains but does not claim stays with that process for the next), as the agent
 * does; delivers each take if asked.
 */
const TAKE_AND_DELIVER = `
const [module, ringPin, lists, deliver] = process.argv.slice(1);
import(module).then(({ RingHeldTraffic }) => {
  const held = new RingHeldTraffic({ ringPin });
  console.log(JSON.stringify(JSON.parse(lists).map((endpoints) => {
    const taken = held.take(endpoints);
    return { taken: taken.count, delivered: deliver === 'deliver' ? held.deliver(taken) : 0 };
  })));
});
`;

type Take = { taken: number; delivered: number };

async function takeHeld(lists: Endpoint[][], deliver: 'deliver' | 'take only'): Promise<Take[]> {
  const module = fileURLToPath(new URL('../../dist/agent/linux/packet-hold.js', import.meta.url));
  const args = ['-e', TAKE_AND_DELIVER, module, lockPins(net.lockOpts.pinDir).heldRing, JSON.stringify(lists), deliver];
  const r = await execCommand('nsenter', [`--net=${netnsPath(net.a.netns)}`, process.execPath, ...args], { timeoutMs: 30_000 });
  return JSON.parse(r.stdout) as Take[];
}

/** Whatever a test left locked is unlocked, and the ring emptied, so the next starts clean. */
async function clearLock(): Promise<void> {
  const left = await net.lock.list();
  if (left.length > 0) await net.lock.unlock(left.map((e) => e.endpoint), 0xffff_ffff_ffff_ffffn);
  await takeHeld([[addressWide('tcp', net.a.address), addressWide('udp', net.a.address)]], 'take only');
}

beforeAll(async () => {
  await net.setUp();
  await execCommand('ip', ['-n', net.a.netns, 'addr', 'add', `${OTHER}/24`, 'dev', 'eth0']);
  await net.startNode(net.a, RECEIVERS, [`${net.a.address},${OTHER}`, UDP_PORTS.join(',')], {
    ready: 'listening',
    onLine: (line) => {
      const o = JSON.parse(line) as { to: string; text: string };
      received.push(`${o.to} ${o.text}`);
    },
  });
  sender = await net.startNode(net.b, SENDER, [], {
    ready: 'ready',
    onLine: (line) => connects.push((JSON.parse(line) as { connect: string }).connect),
  });
}, 600_000);

afterEach(() => clearLock());
afterAll(() => net.tearDown(), 300_000);

describe('address-wide lock entries', () => {
  const udpAll = addressWide('udp', net.a.address);
  const tcpAll = addressWide('tcp', net.a.address);

  it('stop and count packets to every port of the address, and nothing to another address', async () => {
    await net.lock.lock([udpAll, tcpAll], 1n, 60_000);
    for (const port of UDP_PORTS) {
      send(`${net.a.address} ${port} locked-${port}`);
      send(`${OTHER} ${port} free-${port}`);
    }
    send(`tcp ${net.a.address} 7400`); // a SYN to a port nobody listens on: stopped, so no RST comes back
    await until('the datagrams to the other address', () => received.length >= UDP_PORTS.length);
    await sleep(300);
    expect(received.sort()).toEqual(UDP_PORTS.map((p) => `${OTHER}:${p} free-${p}`).sort());
    expect(connects).toEqual([]);

    const entries = await net.lock.list();
    expect(entry(entries, udpAll)?.drops).toBe(BigInt(UDP_PORTS.length));
    expect(entry(entries, tcpAll)?.drops).toBeGreaterThanOrEqual(1n);

    // The held ring has them: taken by the address-wide entry (the SYN and its retransmissions too).
    const [udpTaken, tcpTaken] = await takeHeld([[udpAll], [tcpAll]], 'take only');
    expect(udpTaken.taken).toBe(UDP_PORTS.length);
    expect(tcpTaken.taken).toBeGreaterThanOrEqual(1);

    await net.lock.unlock([udpAll, tcpAll], 1n);
    await until('the connect refused once unlocked', () => connects.length > 0, 10_000);
    expect(connects).toEqual(['ECONNREFUSED']);
    received.length = 0;
    send(`${net.a.address} ${UDP_PORTS[1]} after`);
    await until('a datagram after unlock', () => received.length === 1);
    expect(received).toEqual([`${net.a.address}:${UDP_PORTS[1]} after`]);
    expect(await net.lock.list()).toEqual([]);
  });

  it('an exact and an address-wide entry of one address lock and unlock on their own, versions as for any entry', async () => {
    const exact: Endpoint = { proto: 'udp', address: net.a.address, port: UDP_PORTS[0] };
    received.length = 0;
    await net.lock.lock([exact], 5n, 60_000);
    await net.lock.lock([udpAll], 6n, 60_000);
    send(`${net.a.address} ${UDP_PORTS[0]} x1`);
    send(`${net.a.address} ${UDP_PORTS[1]} w1`);
    await sleep(300);
    expect(received).toEqual([]);
    let entries = await net.lock.list();
    expect(entry(entries, exact)?.drops).toBe(1n); // the exact entry counts its own packet: it is looked up first
    expect(entry(entries, udpAll)?.drops).toBe(1n);

    // An older version does not remove the address-wide entry; its own version does, and leaves the exact one.
    await net.lock.unlock([udpAll], 5n);
    expect(entry(await net.lock.list(), udpAll)).toBeDefined();
    await net.lock.unlock([udpAll], 6n);
    entries = await net.lock.list();
    expect(entries.map((e) => e.endpoint)).toEqual([exact]);
    send(`${net.a.address} ${UDP_PORTS[0]} x2`);
    send(`${net.a.address} ${UDP_PORTS[1]} w2`);
    await until('the datagram to the other port', () => received.length === 1);
    await sleep(200);
    expect(received).toEqual([`${net.a.address}:${UDP_PORTS[1]} w2`]);
    expect(entry(await net.lock.list(), exact)?.drops).toBe(2n);

    // The other way round: the exact entry goes, the address-wide one now stops its port.
    await net.lock.lock([udpAll], 7n, 60_000);
    await net.lock.unlock([exact], 5n);
    send(`${net.a.address} ${UDP_PORTS[0]} x3`);
    await sleep(300);
    entries = await net.lock.list();
    expect(entries.map((e) => e.endpoint)).toEqual([udpAll]);
    expect(entry(entries, udpAll)?.drops).toBe(1n);
    expect(received).toEqual([`${net.a.address}:${UDP_PORTS[1]} w2`]);
    await net.lock.unlock([udpAll], 7n);
    expect(await net.lock.list()).toEqual([]);
  });
});

/**
 * A workload's outgoing connection: a client on a, bound to a's address (as a workload that
 * moves must be), connected to a server on b. stdin "send TEXT" writes on the connection; every
 * chunk received is printed.
 */
const OUT_CLIENT = `
const [addr, server, port] = process.argv.slice(1);
const s = require('node:net').connect({ host: server, port: Number(port), localAddress: addr }, () => {
  s.setNoDelay(true);
  console.log(JSON.stringify({ localPort: s.localPort }));
  console.log('connected');
});
s.on('data', (d) => console.log(JSON.stringify({ data: d.toString() })));
s.on('error', (e) => console.log(JSON.stringify({ error: e.code || e.message })));
s.on('close', () => console.log(JSON.stringify({ error: 'closed' })));
require('node:readline').createInterface({ input: process.stdin }).on('line', (l) => s.write(l.slice(5)));
`;

/** The peer's server on b: one connection; stdin "send TEXT" writes on it; every chunk received is printed. */
const PEER_SERVER = `
const [addr, port] = process.argv.slice(1);
let conn;
const srv = require('node:net').createServer((s) => {
  conn = s;
  s.setNoDelay(true);
  s.on('data', (d) => console.log(JSON.stringify({ data: d.toString() })));
  s.on('error', (e) => console.log(JSON.stringify({ error: e.code || e.message })));
});
srv.listen(Number(port), addr, () => console.log('listening'));
require('node:readline').createInterface({ input: process.stdin }).on('line', (l) => conn.write(l.slice(5)));
`;

describe('held return traffic of an outgoing connection', () => {
  it('is taken with the address-wide entry and delivered to the real socket: the connection survives the lock window, every byte in order', async () => {
    const SERVER_PORT = 7500;
    const atClient: string[] = [];
    const atServer: string[] = [];
    const errors: string[] = [];
    let localPort = 0;
    const server = await net.startNode(net.b, PEER_SERVER, [net.b.address, String(SERVER_PORT)], {
      ready: 'listening',
      onLine: (l) => {
        const o = JSON.parse(l) as { data?: string; error?: string };
        if (o.data !== undefined) atServer.push(o.data);
        if (o.error) errors.push(`server: ${o.error}`);
      },
    });
    const client = await net.startNode(net.a, OUT_CLIENT, [net.a.address, net.b.address, String(SERVER_PORT)], {
      ready: 'connected',
      onLine: (l) => {
        const o = JSON.parse(l) as { data?: string; error?: string; localPort?: number };
        if (o.localPort) localPort = o.localPort;
        if (o.data !== undefined) atClient.push(o.data);
        if (o.error) errors.push(`client: ${o.error}`);
      },
    });
    const toClient = (t: string) => server.stdin!.write(`send ${t}\n`);
    const toServer = (t: string) => client.stdin!.write(`send ${t}\n`);
    toClient('hello.');
    toServer('hi.');
    await until('data both ways before the lock', () => atClient.join('') === 'hello.' && atServer.join('') === 'hi.');

    // What a migration locks for a workload whose one endpoint is a listening port elsewhere:
    // the connection's return traffic (to localPort, an ephemeral port) matches only the address-wide entry.
    const listening: Endpoint = { proto: 'tcp', address: net.a.address, port: 7000 };
    const scope = lockScope([listening]);
    await net.lock.lock(scope, 3n, 60_000);
    const words = Array.from({ length: 8 }, (_, i) => `word${i}-${'x'.repeat(100 * i)}.`);
    for (const w of words) {
      toClient(w);
      await sleep(20);
    }
    const upWords = ['up0.', 'up1.', 'up2.'];
    for (const w of upWords) toServer(w); // a's own sends leave; b's acknowledgments of them are held
    // Long enough for the peer's retransmission timer (200 ms) to fire into the lock at least once.
    await sleep(600);
    expect(atClient.join('')).toBe('hello.');
    await until('the client data at the server', () => atServer.join('') === 'hi.' + upWords.join(''));
    const drops = entry(await net.lock.list(), addressWide('tcp', net.a.address))?.drops ?? 0n;
    expect(drops).toBeGreaterThan(BigInt(words.length));
    expect(localPort).toBeGreaterThan(1024);

    // The exact endpoint takes none of them; the address-wide entry takes them all (joined).
    const [exactTake, held] = await takeHeld([[listening], scope], 'deliver');
    expect(exactTake).toEqual({ taken: 0, delivered: 0 });
    expect(held.taken).toBeGreaterThanOrEqual(1);
    expect(held.delivered).toBe(held.taken);
    // Delivered while the lock still stops the peer: what arrives can only be the held copies.
    await until('the held data at the client', () => atClient.join('').length >= ('hello.' + words.join('')).length);
    expect(atClient.join('')).toBe('hello.' + words.join(''));

    await net.lock.unlock(scope, 3n);
    toClient('after.');
    toServer('after-up.');
    await until('data both ways after unlock', () => atClient.join('').endsWith('after.') && atServer.join('').endsWith('after-up.'));
    await sleep(300); // a duplicate, if the peer still retransmitted, would show up here
    expect(atClient.join('')).toBe('hello.' + words.join('') + 'after.');
    expect(atServer.join('')).toBe('hi.' + upWords.join('') + 'after-up.');
    expect(errors).toEqual([]);
  });
});
