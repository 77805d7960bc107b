/**
 * The steering program's packet rewriting, checked byte for byte through BPF_PROG_TEST_RUN on
 * the real kernel: DNAT (IPv4 and TCP/UDP checksums fixed incrementally), the tunnel's
 * encapsulation and decapsulation, and the TC program's reverse NAT. Every checksum the programs
 * leave is compared with a from-scratch RFC 1071 computation (test/support/packets.ts).
 */
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { progTestRun } from '../../agent/linux/bpf/native-map.js';
import { STEER_TC_PROG, STEER_XDP_PROG } from '../../agent/linux/steer-object.js';
import { STEER_VXLAN_PORT, STEER_VXLAN_VNI, SteeringTableError } from '../../agent/linux/steer-map-codec.js';
import { EbpfSteering } from '../../agent/linux/steering-ebpf.js';
import type { SteeringTable } from '../../agent/steering.js';
import { execCommand } from '../../lib/exec.js';
import { buildFrame, carriedChecksums, endpointsOf, referenceChecksums } from '../support/packets.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const PIN_ROOT = `/sys/fs/bpf/godwit-stcsum-${randomBytes(3).toString('hex')}`;
const XDP_PASS = 2;
const XDP_TX = 3;
const XDP_REDIRECT = 4;
const TC_ACT_OK = 0;

const HOST_A = '198.19.2.2';
const HOST_B = '198.19.3.2';
const CLIENT = '198.51.100.7';

const table: SteeringTable = {
  generation: 1,
  services: [
    { id: 1, proto: 'tcp', vip: '203.0.113.10', vipPort: 80, backends: [{ id: 11, address: '10.1.0.11', port: 8080, weight: 1, host: 'a', hostAddress: HOST_A, draining: false }] },
    { id: 2, proto: 'udp', vip: '203.0.113.10', vipPort: 53, backends: [{ id: 21, address: '10.1.0.21', port: 5353, weight: 1, host: 'a', hostAddress: HOST_A, draining: false }] },
    { id: 3, proto: 'tcp', vip: '203.0.113.11', vipPort: 443, backends: [{ id: 31, address: '10.2.0.31', port: 8443, weight: 1, host: 'b', hostAddress: HOST_B, draining: false }] },
  ],
};

function host(name: string, hostAddress: string): EbpfSteering {
  const pinDir = `${PIN_ROOT}/${name}`;
  const objectPath = `${REPO}build/bpf/steer.o`;
  return new EbpfSteering({
    exec: execCommand,
    iface: 'lo',
    pinDir,
    objectPath,
    hostAddress,
    attach: false,
  });
}

const a = host('a', HOST_A);
const b = host('b', HOST_B);
const xdp = (h: EbpfSteering, frame: Buffer) => progTestRun(h.programs.progPin(STEER_XDP_PROG), frame);
const tc = (h: EbpfSteering, frame: Buffer) => progTestRun(h.programs.progPin(STEER_TC_PROG), frame);
const ipOf = (frame: Buffer) => frame.subarray(14);

function expectValidChecksums(frame: Buffer) {
  const ip = ipOf(frame);
  expect(carriedChecksums(ip)).toEqual(referenceChecksums(ip));
}

beforeAll(async () => {
  await execCommand(`${REPO}scripts/build-bpf.sh`, [], { timeoutMs: 60_000 });
  await a.install();
  await b.install();
  await a.apply(table);
  await b.apply(table);
}, 60_000);

afterAll(async () => {
  await a.uninstall().catch(() => undefined);
  await b.uninstall().catch(() => undefined);
  await execCommand('rm', ['-rf', PIN_ROOT]);
});

describe('steering DNAT at XDP', () => {
  it.each([0, 1, 7, 512, 1399])('rewrites a TCP segment with %i payload bytes to the local backend, checksums exact', (n) => {
    const frame = buildFrame({ proto: 'tcp', src: CLIENT, dst: '203.0.113.10', sport: 40000 + n, dport: 80, payload: randomBytes(n) });
    const r = xdp(a, frame);
    expect(r.retval).toBe(XDP_PASS);
    expect(r.data.length).toBe(frame.length);
    expect(endpointsOf(ipOf(r.data))).toEqual({ src: CLIENT, dst: '10.1.0.11', sport: 40000 + n, dport: 8080, proto: 6 });
    expectValidChecksums(r.data);
    // Nothing else changed: payload, TCP header past the ports, IP fields.
    expect(r.data.subarray(14 + 20 + 4, 14 + 20 + 16)).toEqual(frame.subarray(14 + 20 + 4, 14 + 20 + 16));
    expect(r.data.subarray(14 + 40)).toEqual(frame.subarray(14 + 40));
  });

  it('rewrites a UDP datagram with a checksum, and leaves a zero checksum zero', () => {
    const withSum = buildFrame({ proto: 'udp', src: CLIENT, dst: '203.0.113.10', sport: 5000, dport: 53, payload: randomBytes(33) });
    const r = xdp(a, withSum);
    expect(r.retval).toBe(XDP_PASS);
    expect(endpointsOf(ipOf(r.data))).toMatchObject({ dst: '10.1.0.21', dport: 5353 });
    expectValidChecksums(r.data);

    const noSum = buildFrame({ proto: 'udp', src: CLIENT, dst: '203.0.113.10', sport: 5001, dport: 53, payload: randomBytes(20), noUdpChecksum: true });
    const z = xdp(a, noSum);
    expect(z.retval).toBe(XDP_PASS);
    expect(carriedChecksums(ipOf(z.data))).toEqual({ ip: referenceChecksums(ipOf(z.data)).ip, l4: 0 });
  });

  it('passes packets that are not for a service untouched', () => {
    const frame = buildFrame({ proto: 'tcp', src: CLIENT, dst: '203.0.113.10', sport: 40000, dport: 81, payload: randomBytes(10) });
    const r = xdp(a, frame);
    expect(r.retval).toBe(XDP_PASS);
    expect(r.data).toEqual(frame);
  });
});

describe('steering tunnel between hosts', () => {
  const frame = buildFrame({ proto: 'tcp', src: CLIENT, dst: '203.0.113.11', sport: 41000, dport: 443, payload: randomBytes(301), dstMac: '02:aa:00:00:00:01', srcMac: '02:bb:00:00:00:02' });
  let tunnelled: Buffer;

  it('encapsulates a packet for a backend on another host: outer IPv4 checksum exact, inner frame unchanged', () => {
    const r = xdp(a, frame);
    // XDP_TX when the route to B leaves by the interface the packet came in on; this test runs
    // outside any fixture namespace, where the machine's own routes may say otherwise.
    expect([XDP_TX, XDP_REDIRECT]).toContain(r.retval);
    tunnelled = r.data;
    expect(tunnelled.length).toBe(frame.length + 50);
    const outer = ipOf(tunnelled);
    expect(outer.readUInt16BE(0)).toBe(0x4500);
    expect(outer.readUInt16BE(2)).toBe(frame.length + 36);
    expect(outer.readUInt16BE(10)).toBe(referenceChecksums(Buffer.concat([outer.subarray(0, 20), Buffer.alloc(8)])).ip);
    expect([...outer.subarray(12, 16)].join('.')).toBe(HOST_A);
    expect([...outer.subarray(16, 20)].join('.')).toBe(HOST_B);
    expect(outer[9]).toBe(17);
    const udp = outer.subarray(20, 28);
    expect(udp.readUInt16BE(0)).toBeGreaterThanOrEqual(49152);
    expect(udp.readUInt16BE(2)).toBe(STEER_VXLAN_PORT);
    expect(udp.readUInt16BE(4)).toBe(frame.length + 16);
    expect(udp.readUInt16BE(6)).toBe(0);
    const vxlan = outer.subarray(28, 36);
    expect(vxlan[0]).toBe(0x08);
    expect(vxlan.readUIntBE(1, 3)).toBe(31); // the backend the sender chose
    expect(vxlan.readUInt32BE(4)).toBe(STEER_VXLAN_VNI << 8);
    expect(outer.subarray(36)).toEqual(frame);
  });

  it('decapsulates on the backend\'s host and finishes the DNAT there, checksums exact', () => {
    const r = xdp(b, tunnelled);
    expect(r.retval).toBe(XDP_PASS);
    expect(r.data.length).toBe(frame.length);
    expect(endpointsOf(ipOf(r.data))).toEqual({ src: CLIENT, dst: '10.2.0.31', sport: 41000, dport: 8443, proto: 6 });
    expectValidChecksums(r.data);
    expect(r.data.subarray(0, 6)).toEqual(tunnelled.subarray(0, 6)); // this host's MAC, from the outer frame
    expect(r.data.subarray(14 + 40)).toEqual(frame.subarray(14 + 40));
  });

  it('ignores VXLAN frames to this host that are not godwit\'s (another VNI)', () => {
    const other = Buffer.from(tunnelled);
    other.writeUInt32BE(42 << 8, 14 + 32);
    const r = xdp(b, other);
    expect(r.retval).toBe(XDP_PASS);
    expect(r.data).toEqual(other);
  });
});

describe('reverse NAT at TC egress', () => {
  it('gives a tunnelled flow\'s reply the VIP as source, checksums exact', () => {
    const reply = buildFrame({ proto: 'tcp', src: '10.2.0.31', dst: CLIENT, sport: 8443, dport: 41000, payload: randomBytes(777) });
    const r = tc(b, reply);
    expect(r.retval).toBe(TC_ACT_OK);
    expect(endpointsOf(ipOf(r.data))).toEqual({ src: '203.0.113.11', dst: CLIENT, sport: 443, dport: 41000, proto: 6 });
    expectValidChecksums(r.data);
  });

  it('gives a local UDP flow\'s reply the VIP as source, checksums exact; a zero UDP checksum stays zero', () => {
    const reply = buildFrame({ proto: 'udp', src: '10.1.0.21', dst: CLIENT, sport: 5353, dport: 5000, payload: randomBytes(48) });
    const r = tc(a, reply);
    expect(r.retval).toBe(TC_ACT_OK);
    expect(endpointsOf(ipOf(r.data))).toMatchObject({ src: '203.0.113.10', sport: 53 });
    expectValidChecksums(r.data);
    const bare = buildFrame({ proto: 'udp', src: '10.1.0.21', dst: CLIENT, sport: 5353, dport: 5001, payload: randomBytes(9), noUdpChecksum: true });
    const z = tc(a, bare);
    expect(endpointsOf(ipOf(z.data))).toMatchObject({ src: '203.0.113.10', sport: 53 });
    expect(carriedChecksums(ipOf(z.data)).l4).toBe(0);
  });

  it('leaves other replies alone', () => {
    const reply = buildFrame({ proto: 'tcp', src: '10.2.0.31', dst: CLIENT, sport: 8443, dport: 9, payload: randomBytes(5) });
    const r = tc(b, reply);
    expect(r.retval).toBe(TC_ACT_OK);
    expect(r.data).toEqual(reply);
  });
});

describe('counters', () => {
  it('counted the steered packets and their new flows on the steering host only', async () => {
    const ca = await a.counters();
    expect(ca.backends.get(11)).toMatchObject({ packets: 5n, flows: 5n });
    expect(ca.backends.get(31)).toMatchObject({ packets: 1n, flows: 1n, bytes: BigInt(20 + 20 + 301) });
    expect(ca.services.get(2)).toMatchObject({ packets: 2n, flows: 2n });
    expect((await b.counters()).backends.size).toBe(0);
    expect(await a.liveFlows([11])).toBe(5);
    expect(await a.liveFlows([31, 21])).toBe(3);
    expect(await a.appliedGeneration()).toBe(1);
    expect(await host('never-installed', HOST_A).appliedGeneration()).toBe(0);
  });
});

describe('a table the data plane refuses', () => {
  it('changes nothing: same generation, same steering', async () => {
    const bad: SteeringTable = { generation: 2, services: [{ ...table.services[0], backends: [{ ...table.services[0].backends[0], weight: 0 }] }] };
    await expect(a.apply(bad)).rejects.toThrow(SteeringTableError);
    expect(await a.appliedGeneration()).toBe(1);
    const r = xdp(a, buildFrame({ proto: 'tcp', src: CLIENT, dst: '203.0.113.10', sport: 42000, dport: 80, payload: randomBytes(3) }));
    expect(endpointsOf(ipOf(r.data))).toMatchObject({ dst: '10.1.0.11', dport: 8080 });
  });
});
