/**
 * The steering map handoff with the real kernel: two "hosts" (the steering object loaded twice,
 * under two pin folders, attached to nothing), one workload's flows, reverse NAT and counters
 * exported from host a, carried through the image's steering file, imported into host b; then
 * forgotten on a. Another workload's state on both hosts must not move.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { entriesDigest, handoffDigest, readHandoffFile, removeHandoffFile, writeHandoffFile } from '../../agent/handoff-file.js';
import { batchShape } from '../../agent/linux/bpf/map-spec.js';
import { batchValueBytes, NativeMap, possibleCpus } from '../../agent/linux/bpf/native-map.js';
import { readHandoffFileMapped, WorkloadSelectorError } from '../../agent/linux/steer-handoff.js';
import { FLOW_RNAT, STEER_MAPS } from '../../agent/linux/steer-map-codec.js';
import { EbpfSteering } from '../../agent/linux/steering-ebpf.js';
import type { PackedMapEntries, SteeringCounter, WorkloadSelector } from '../../agent/steering.js';
import { execCommand } from '../../lib/exec.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const log = pino({ enabled: false });
const tag = randomBytes(3).toString('hex');
const pinDirs = { a: `/sys/fs/bpf/gwt-hoff-${tag}-a`, b: `/sys/fs/bpf/gwt-hoff-${tag}-b` };
const hosts = {
  a: new EbpfSteering({ exec: execCommand, iface: 'lo', pinDir: pinDirs.a, objectPath: `${REPO}build/bpf/steer.o`, hostAddress: '198.18.252.1', attach: false, log }),
  b: new EbpfSteering({ exec: execCommand, iface: 'lo', pinDir: pinDirs.b, objectPath: `${REPO}build/bpf/steer.o`, hostAddress: '198.18.252.2', attach: false, log }),
};
let imageDir = '';

// The moving workload: backends 11 and 12 at 198.18.251.11; the other one: backend 21 at .21.
const MOVING: WorkloadSelector = { addresses: ['198.18.251.11'], backendIds: [11, 12] };
const STAYING_ID = 21;
const STAYING_ADDRESS = '198.18.251.21';

afterAll(async () => {
  for (const h of Object.values(hosts)) await h.uninstall().catch(() => undefined);
  for (const d of Object.values(pinDirs)) await execCommand('rm', ['-rf', d]);
  if (imageDir) await rm(imageDir, { recursive: true, force: true });
}, 120_000);

const ip = (a: string) => Buffer.from(a.split('.').map(Number));

/** n flows of clients 10.<seed>.x.y to VIP 198.19.252.1:80, on backend `id`, flags FLOW_RNAT. */
function flows(seed: number, n: number, id: number): PackedMapEntries {
  const keys = Buffer.alloc(n * 16);
  const values = Buffer.alloc(n * 12);
  for (let i = 0; i < n; i++) {
    keys.writeUInt32BE((10 << 24) | (seed << 16) | i, i * 16);
    ip('198.19.252.1').copy(keys, i * 16 + 4);
    keys.writeUInt16BE(20000 + i, i * 16 + 8);
    keys.writeUInt16BE(80, i * 16 + 10);
    keys[i * 16 + 12] = 6;
    values.writeUInt32LE(id, i * 12);
    values.writeUInt32LE(1, i * 12 + 4);
    values.writeUInt32LE(FLOW_RNAT, i * 12 + 8);
  }
  return { keySize: 16, valueSize: 12, count: n, keys, values };
}

/** n reverse-NAT entries of backend address `backend`:8080 for clients 10.<seed>.x.y. */
function rnat(seed: number, n: number, backend: string): PackedMapEntries {
  const keys = Buffer.alloc(n * 16);
  const values = Buffer.alloc(n * 8);
  for (let i = 0; i < n; i++) {
    ip(backend).copy(keys, i * 16);
    keys.writeUInt32BE((10 << 24) | (seed << 16) | i, i * 16 + 4);
    keys.writeUInt16BE(8080, i * 16 + 8);
    keys.writeUInt16BE(20000 + i, i * 16 + 10);
    keys[i * 16 + 12] = 6;
    ip('198.19.252.1').copy(values, i * 8);
    values.writeUInt16BE(80, i * 8 + 4);
  }
  return { keySize: 16, valueSize: 8, count: n, keys, values };
}

const mapOf = (host: 'a' | 'b', m: typeof STEER_MAPS.flows | typeof STEER_MAPS.rnat | typeof STEER_MAPS.backendStats) => new NativeMap(join(pinDirs[host], 'maps', m.name), batchShape(m));

async function put(host: 'a' | 'b', m: typeof STEER_MAPS.flows | typeof STEER_MAPS.rnat, e: PackedMapEntries): Promise<void> {
  await mapOf(host, m).update(e.keys, e.values);
}

async function dump(host: 'a' | 'b', m: typeof STEER_MAPS.flows | typeof STEER_MAPS.rnat): Promise<PackedMapEntries> {
  const d = await mapOf(host, m).dump();
  return { keySize: m.keySize, valueSize: m.valueSize, count: d.count, keys: d.keys, values: d.values };
}

/** The entries of a dump whose 4 bytes at `at` of the key (keyed) or value are `match`. */
function where(e: PackedMapEntries, side: 'key' | 'value', at: number, match: (u32: number) => boolean): PackedMapEntries {
  const rows: number[] = [];
  for (let i = 0; i < e.count; i++) if (match(side === 'key' ? e.keys.readUInt32LE(i * e.keySize + at) : e.values.readUInt32LE(i * e.valueSize + at))) rows.push(i);
  return {
    keySize: e.keySize,
    valueSize: e.valueSize,
    count: rows.length,
    keys: Buffer.concat(rows.map((i) => e.keys.subarray(i * e.keySize, (i + 1) * e.keySize))),
    values: Buffer.concat(rows.map((i) => e.values.subarray(i * e.valueSize, (i + 1) * e.valueSize))),
  };
}

const u32 = (a: string) => ip(a).readUInt32LE(0);
const movingFlow = (id: number) => MOVING.backendIds.includes(id);

/** Counters of an id on every CPU: cpu c holds base * (c + 1). */
async function setCounters(host: 'a' | 'b', id: number, base: number): Promise<SteeringCounter> {
  const cpus = possibleCpus();
  const value = Buffer.alloc(batchValueBytes(batchShape(STEER_MAPS.backendStats)));
  let sum = 0n;
  for (let c = 0; c < cpus; c++) {
    const v = BigInt(base * (c + 1));
    value.writeBigUInt64LE(v, c * 24);
    value.writeBigUInt64LE(v * 100n, c * 24 + 8);
    value.writeBigUInt64LE(v / 10n, c * 24 + 16);
    sum += v;
  }
  const key = Buffer.alloc(4);
  key.writeUInt32LE(id);
  await mapOf(host, STEER_MAPS.backendStats).update(key, value);
  return { packets: sum, bytes: sum * 100n, flows: Array.from({ length: cpus }, (_, c) => BigInt(base * (c + 1)) / 10n).reduce((x, y) => x + y, 0n) };
}

const zero: SteeringCounter = { packets: 0n, bytes: 0n, flows: 0n };
const add = (x: SteeringCounter, y: SteeringCounter): SteeringCounter => ({ packets: x.packets + y.packets, bytes: x.bytes + y.bytes, flows: x.flows + y.flows });

describe('steering state handoff between two hosts (real kernel maps)', () => {
  it('exports one workload from a, carries it in the file, imports it into b, forgets it on a', async () => {
    imageDir = await mkdtemp(join(tmpdir(), 'gwt-hoff-img-'));
    await hosts.a.install();
    await hosts.b.install();

    // Host a: the moving workload's flows (two backends) and reverse NAT, another workload's too.
    await put('a', STEER_MAPS.flows, flows(1, 300, 11));
    await put('a', STEER_MAPS.flows, flows(2, 200, 12));
    await put('a', STEER_MAPS.flows, flows(3, 250, STAYING_ID));
    await put('a', STEER_MAPS.rnat, rnat(1, 300, '198.18.251.11'));
    await put('a', STEER_MAPS.rnat, rnat(3, 250, STAYING_ADDRESS));
    const aCounters = { 11: await setCounters('a', 11, 1000), 12: await setCounters('a', 12, 70), [STAYING_ID]: await setCounters('a', STAYING_ID, 5) };
    // Host b already steers the other workload and has counted for backend 11 before.
    await put('b', STEER_MAPS.flows, flows(4, 100, STAYING_ID));
    await put('b', STEER_MAPS.rnat, rnat(4, 100, STAYING_ADDRESS));
    const bBefore11 = await setCounters('b', 11, 3);
    const bBeforeStaying = await setCounters('b', STAYING_ID, 9);
    const bOthers = { flows: entriesDigest(await dump('b', STEER_MAPS.flows)), rnat: entriesDigest(await dump('b', STEER_MAPS.rnat)) };

    const aFlowsBefore = await dump('a', STEER_MAPS.flows);
    const aRnatBefore = await dump('a', STEER_MAPS.rnat);
    const exported = await hosts.a.exportWorkload(MOVING);
    expect(exported.flows.count).toBe(500);
    expect(exported.rnat.count).toBe(300);
    expect(entriesDigest(exported.flows)).toEqual(entriesDigest(where(aFlowsBefore, 'value', 0, movingFlow)));
    expect(entriesDigest(exported.rnat)).toEqual(entriesDigest(where(aRnatBefore, 'key', 0, (x) => x === u32('198.18.251.11'))));
    expect(exported.backendCounters).toEqual(new Map([[11, aCounters[11]], [12, aCounters[12]]]));
    // Exporting changed nothing on a.
    expect(entriesDigest(await dump('a', STEER_MAPS.flows))).toEqual(entriesDigest(aFlowsBefore));
    expect(entriesDigest(await dump('a', STEER_MAPS.rnat))).toEqual(entriesDigest(aRnatBefore));

    // Through the image's file, as a migration carries it (mapped on the target, as the agent reads it).
    expect(await readHandoffFileMapped(imageDir)).toBeUndefined();
    await writeHandoffFile(imageDir, exported);
    const carried = await readHandoffFileMapped(imageDir);
    expect(handoffDigest(carried!)).toEqual(handoffDigest(exported));
    expect(handoffDigest((await readHandoffFile(imageDir))!)).toEqual(handoffDigest(exported));
    expect(await hosts.b.importWorkload(carried!)).toBe(500 + 300 + 2);

    // b: exactly the moving workload's entries beside what it had; counters added to its own.
    const bFlows = await dump('b', STEER_MAPS.flows);
    const bRnat = await dump('b', STEER_MAPS.rnat);
    expect(entriesDigest(where(bFlows, 'value', 0, movingFlow))).toEqual(entriesDigest(exported.flows));
    expect(entriesDigest(where(bRnat, 'key', 0, (x) => x === u32('198.18.251.11')))).toEqual(entriesDigest(exported.rnat));
    expect(entriesDigest(where(bFlows, 'value', 0, (id) => id === STAYING_ID))).toEqual(bOthers.flows);
    expect(entriesDigest(where(bRnat, 'key', 0, (x) => x === u32(STAYING_ADDRESS)))).toEqual(bOthers.rnat);
    expect(bFlows.count).toBe(600);
    const bCounters = (await hosts.b.counters()).backends;
    expect(bCounters.get(11)).toEqual(add(bBefore11, aCounters[11]));
    expect(bCounters.get(12)).toEqual(aCounters[12]);
    expect(bCounters.get(STAYING_ID)).toEqual(bBeforeStaying);
    expect(await hosts.b.liveFlows([11, 12])).toBe(500);
    await removeHandoffFile(imageDir);

    // Forget on a: its reverse NAT and counters of the workload go, its flows stay (steered on
    // from here) without the flag that says a reverse-NAT entry exists here.
    expect(await hosts.a.forgetWorkload(MOVING)).toBe(300 + 2);
    const aFlows = await dump('a', STEER_MAPS.flows);
    const aRnat = await dump('a', STEER_MAPS.rnat);
    expect(aFlows.count).toBe(750);
    const kept = where(aFlows, 'value', 0, movingFlow);
    expect(kept.count).toBe(500);
    for (let i = 0; i < kept.count; i++) expect(kept.values.readUInt32LE(i * 12 + 8) & FLOW_RNAT).toBe(0);
    const unflagged = Buffer.from(exported.flows.values);
    for (let i = 0; i < exported.flows.count; i++) unflagged.writeUInt32LE(unflagged.readUInt32LE(i * 12 + 8) & ~FLOW_RNAT, i * 12 + 8);
    expect(entriesDigest(kept)).toEqual(entriesDigest({ ...exported.flows, values: unflagged }));
    expect(entriesDigest(where(aFlows, 'value', 0, (id) => id === STAYING_ID))).toEqual(entriesDigest(where(aFlowsBefore, 'value', 0, (id) => id === STAYING_ID)));
    expect(where(aRnat, 'key', 0, (x) => x === u32('198.18.251.11')).count).toBe(0);
    expect(entriesDigest(aRnat)).toEqual(entriesDigest(where(aRnatBefore, 'key', 0, (x) => x === u32(STAYING_ADDRESS))));
    const aAfter = (await hosts.a.counters()).backends;
    expect(aAfter.get(11) ?? zero).toEqual(zero);
    expect(aAfter.get(12) ?? zero).toEqual(zero);
    expect(aAfter.get(STAYING_ID)).toEqual(aCounters[STAYING_ID]);
    // Again: nothing left to remove.
    expect(await hosts.a.forgetWorkload(MOVING)).toBe(0);

    // A selector naming nothing valid is refused before anything is read.
    await expect(hosts.a.exportWorkload({ addresses: [], backendIds: [0] })).rejects.toBeInstanceOf(WorkloadSelectorError);
    await expect(hosts.a.forgetWorkload({ addresses: ['not-an-ip'], backendIds: [11] })).rejects.toThrow(/"not-an-ip" is not an IPv4 address/);
  }, 120_000);
});
