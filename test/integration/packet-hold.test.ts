import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import type { ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import type { Endpoint } from '../../lib/endpoint.js';
import { execCommand } from '../../lib/exec.js';
import { lockPins } from '../../agent/linux/lock-maps.js';
import { netnsPath } from '../../agent/linux/netns-exec.js';
import { LockNetns } from '../support/lock-netns.js';

/*
 * Held packets, end to end on a real XDP lock: what the lock stops is kept in its ring and,
 * delivered, reaches the workload's socket exactly once and in order. The tests deliver while the
 * lock still stops everything from the peer (delivery is local, behind the XDP hook), so what
 * arrives can only be the held copies, never a retransmission. Host "a" runs the servers behind
 * the lock, "b" the peer.
 */
const net = new LockNetns({ tag: 'h', subnet: 248, buildNative: true });
const UDP_PORT = 7100;
const TCP_PORT = 7200;
const udpEp: Endpoint = { proto: 'udp', address: net.a.address, port: UDP_PORT };
const tcpEp: Endpoint = { proto: 'tcp', address: net.a.address, port: TCP_PORT };

/** Prints every datagram and every TCP chunk it receives as a JSON line. */
const SERVERS = `
const [addr, udpPort, tcpPort] = process.argv.slice(1);
const out = (o) => console.log(JSON.stringify(o));
const u = require('node:dgram').createSocket('udp4');
u.on('message', (m) => out({ udp: m.toString() }));
u.bind(Number(udpPort), addr, () => {
  require('node:net').createServer((s) => s.on('data', (d) => out({ tcp: d.toString() }))).listen(Number(tcpPort), addr, () => console.log('listening'));
});
`;

/**
 * The peer: stdin lines "udp <text>" send a datagram, "tcp <text>" write to its one TCP
 * connection (Nagle off: one segment per write), "stats" prints the connection's state.
 */
const PEER = `
const [addr, udpPort, tcpPort] = process.argv.slice(1);
const u = require('node:dgram').createSocket('udp4');
const s = require('node:net').connect({ host: addr, port: Number(tcpPort) }, () => { s.setNoDelay(true); console.log('connected'); });
s.on('error', (e) => console.log(JSON.stringify({ error: e.code || e.message })));
require('node:readline').createInterface({ input: process.stdin }).on('line', (line) => {
  const [kind, text] = line.split(' ');
  if (kind === 'udp') u.send(text, Number(udpPort), addr);
  if (kind === 'tcp') s.write(text);
});
`;

const received: { udp: string[]; tcp: string[]; errors: string[] } = { udp: [], tcp: [], errors: [] };
let peer: ChildProcess;

/**
 * What the agent on "a" does: take the endpoint's held packets and deliver them. It runs in a's
 * namespace, as the agent does: delivery sends to a local address of the namespace it runs in.
 */
const TAKE_AND_DELIVER = `
const [module, ringPin, endpoint, deliver] = process.argv.slice(1);
import(module).then(({ RingHeldTraffic }) => {
  const held = new RingHeldTraffic({ ringPin });
  const taken = held.take([JSON.parse(endpoint)]);
  console.log(JSON.stringify({ taken: taken.count, delivered: deliver === 'deliver' ? held.deliver(taken) : 0 }));
});
`;

async function takeHeld(e: Endpoint, deliver: 'deliver' | 'take only'): Promise<{ taken: number; delivered: number }> {
  const module = fileURLToPath(new URL('../../dist/agent/linux/packet-hold.js', import.meta.url));
  const args = ['-e', TAKE_AND_DELIVER, module, lockPins(net.lockOpts.pinDir).heldRing, JSON.stringify(e), deliver];
  const r = await execCommand('nsenter', [`--net=${netnsPath(net.a.netns)}`, process.execPath, ...args], { timeoutMs: 30_000 });
  return JSON.parse(r.stdout) as { taken: number; delivered: number };
}

const send = (line: string) => peer.stdin!.write(line + '\n');

async function until(what: string, cond: () => boolean, timeoutMs = 5000): Promise<void> {
  for (const t0 = Date.now(); !cond(); await sleep(20)) if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
}

beforeAll(async () => {
  await net.setUp();
  const args = [net.a.address, String(UDP_PORT), String(TCP_PORT)];
  await net.startNode(net.a, SERVERS, args, {
    ready: 'listening',
    onLine: (line) => {
      const o = JSON.parse(line) as { udp?: string; tcp?: string };
      if (o.udp !== undefined) received.udp.push(o.udp);
      if (o.tcp !== undefined) received.tcp.push(o.tcp);
    },
  });
  peer = await net.startNode(net.b, PEER, args, { ready: 'connected', onLine: (line) => received.errors.push(line) });
});

afterAll(() => net.tearDown());

describe('packets the lock holds', () => {
  it('delivers stopped UDP datagrams, each once and in order', async () => {
    await net.lock.lock([udpEp], 1n, 60_000);
    for (let i = 0; i < 5; i++) send(`udp d${i}`);
    await sleep(300);
    expect(received.udp).toEqual([]); // stopped, not delivered

    expect(await takeHeld(udpEp, 'deliver')).toEqual({ taken: 5, delivered: 5 });
    await until('the datagrams', () => received.udp.length >= 5);
    await sleep(100);
    expect(received.udp).toEqual(['d0', 'd1', 'd2', 'd3', 'd4']);
    await net.lock.unlock([udpEp], 1n);
    expect(await takeHeld(udpEp, 'take only')).toEqual({ taken: 0, delivered: 0 }); // taken once: nothing left to deliver twice
  });

  it('delivers stopped TCP data as one joined segment; the connection goes on without a reset', async () => {
    send('tcp before.');
    await until('data before the lock', () => received.tcp.join('') === 'before.');

    await net.lock.lock([tcpEp], 2n, 60_000);
    const words = ['alpha.', 'bravo.', 'charlie.', 'delta.', 'echo.'];
    for (const w of words) {
      send(`tcp ${w}`);
      await sleep(20);
    }
    // Long enough for the peer's retransmission timer (200 ms) to fire into the lock at least once.
    await sleep(500);
    expect(received.tcp.join('')).toBe('before.');
    const drops = (await net.lock.list()).find((e) => e.endpoint.port === TCP_PORT)?.drops ?? 0n;
    expect(drops).toBeGreaterThan(BigInt(words.length)); // the five segments and at least one retransmission

    // The five segments and their retransmissions, joined.
    expect(await takeHeld(tcpEp, 'deliver')).toEqual({ taken: 1, delivered: 1 });
    await until('the held data', () => received.tcp.join('').length >= 'before.'.length + words.join('').length);
    expect(received.tcp.join('')).toBe('before.' + words.join(''));

    await net.lock.unlock([tcpEp], 2n);
    send('tcp after.');
    await until('data after the unlock', () => received.tcp.join('').endsWith('after.'));
    await sleep(300); // a duplicate, if the peer still retransmitted, would show up here
    expect(received.tcp.join('')).toBe('before.' + words.join('') + 'after.');
    expect(received.errors).toEqual([]);
  });
});
