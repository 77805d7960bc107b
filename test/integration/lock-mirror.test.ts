import { describe, it, expect, beforeAll, afterAll, afterEach, vi } from 'vitest';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { execCommand } from '../../lib/exec.js';
import type { Endpoint } from '../../lib/endpoint.js';
import { ENDPOINT_MAP_SHAPE, lockPins, type LockPins } from '../../agent/linux/lock-maps.js';
import { EbpfNetLock } from '../../agent/linux/netlock-ebpf.js';
import { BpfMapError, NativeMap } from '../../agent/linux/bpf/native-map.js';
import { encodeEndpointKeys, encodeLockValue } from '../../agent/linux/lock-map-codec.js';

/*
 * EbpfNetLock's mirror of the endpoint lock map (agent/linux/lock-mirror.ts) against real pinned
 * maps: what it costs (no map read on a lock or unlock) and how it heals when the map changes
 * behind its back. Exact-connection locks have no mirror (they are written in the mmapped
 * connection table, agent/linux/conn-lock-table.ts), so every case here locks endpoints.
 * Bare maps made with bpftool, no XDP program: only map access is under test (the XDP path is in
 * netlock*.test.ts). Everything lives under one bpffs folder, removed afterwards.
 */
const repo = fileURLToPath(new URL('../../', import.meta.url));
const root = `/sys/fs/bpf/godwit-lm-${randomBytes(3).toString('hex')}`;

/** Endpoint i: tcp port 7000 on 198.18.(i / 256).(i % 256), so up to 65,536 distinct entries. */
const endpoint = (i: number): Endpoint => ({ proto: 'tcp', address: `198.18.${(i >> 8) & 255}.${i & 255}`, port: 7000 });
const endpoints = (n: number, from = 0) => Array.from({ length: n }, (_, k) => endpoint(from + k));
const FAR = 10n ** 18n; // a deadline that never comes

/** BPF_F_MMAPABLE (uapi linux/bpf.h): the connection table is mapped into the agent's memory. */
const BPF_F_MMAPABLE = 1 << 10;

/**
 * Every map EbpfNetLock touches without install(), created by hand where install() would pin
 * them (sizes from bpf/lock_maps.h): the endpoint hash map, and the connection table, which
 * sweepExpired() maps and sweeps too.
 */
async function createMaps(name: string, endpointEntries = ENDPOINT_MAP_SHAPE.maxEntries): Promise<LockPins> {
  const pins = lockPins(`${root}/${name}`);
  await execCommand('mkdir', ['-p', pins.mapsDir]);
  await createEndpointMap(pins, endpointEntries);
  // The kernel keeps 15 characters of a map's name: godwit_lock_conn is godwit_lock_con.
  await execCommand('bpftool', ['map', 'create', pins.connTable, 'type', 'array', 'key', '4', 'value', '56', 'entries', '262144', 'name', 'godwit_lock_con', 'flags', String(BPF_F_MMAPABLE)]);
  return pins;
}

async function createEndpointMap(pins: LockPins, entries = ENDPOINT_MAP_SHAPE.maxEntries): Promise<void> {
  await execCommand('bpftool', ['map', 'create', pins.lockMap, 'type', 'hash', 'key', '8', 'value', '32', 'entries', String(entries), 'name', 'godwit_lock_ep']);
}

/** A pino line, parsed. */
interface LogLine {
  msg: string;
  why?: string;
  [field: string]: unknown;
}

/** A lock on `pins` whose log lines land in `logged`. */
function lockOn(pins: LockPins, logged: LogLine[], mapMethod: 'native' | 'bpftool' = 'native') {
  const log = pino({ level: 'debug' }, { write: (line: string) => void logged.push(JSON.parse(line) as LogLine) });
  return new EbpfNetLock({ exec: execCommand, iface: 'lo', pinDir: pins.dir, objectPath: `${repo}build/bpf/lock.o`, mapMethod, log });
}

const differed = (logged: LogLine[]) => logged.filter((l) => l.msg.startsWith('lock map differed'));
const versionsOf = async (lock: EbpfNetLock) => new Map((await lock.list()).map((e) => [e.endpoint.address, e.version]));

beforeAll(async () => {
  await execCommand('bash', [`${repo}scripts/build-native.sh`], { timeoutMs: 120_000 });
});

afterAll(async () => {
  await execCommand('rm', ['-rf', root]);
});

afterEach(() => {
  vi.restoreAllMocks();
});

describe('the endpoint lock map mirror', () => {
  it('guards versions without reading the map: one dump on first use, none per lock or unlock', async () => {
    const pins = await createMaps('plain');
    const logged: LogLine[] = [];
    const lock = lockOn(pins, logged);
    const dumps = vi.spyOn(NativeMap.prototype, 'dump');
    const all = endpoints(3000);

    await lock.lock(all, 5n, 60_000);
    expect(dumps).toHaveBeenCalledTimes(1); // the mirror loads
    await lock.lock(all.slice(0, 1000), 7n, 60_000);
    await lock.lock(all.slice(0, 2000), 6n, 60_000); // 1,000 kept at 7, 1,000 rewritten at 6
    await lock.unlock(all, 5n); // only the 1,000 still at 5 go
    expect(dumps).toHaveBeenCalledTimes(1);

    const held = await lock.list(); // list() reads the map itself
    expect(held.length).toBe(2000);
    expect(held.filter((e) => e.version === 7n).length).toBe(1000);
    expect(held.filter((e) => e.version === 6n).length).toBe(1000);
    await lock.unlock(all, 7n);
    expect(await lock.list()).toEqual([]);
    expect(await lock.sweepExpired()).toBe(0);
    expect(differed(logged)).toEqual([]); // the sweep's check found the mirror true
  });

  it('heals a write made behind its back at the next sweep, and says so', async () => {
    const pins = await createMaps('external');
    const logged: LogLine[] = [];
    const lock = lockOn(pins, logged);
    await lock.lock([endpoint(1)], 5n, 60_000);

    // An operator's write: a newer entry the agent did not make.
    await new NativeMap(pins.lockMap, ENDPOINT_MAP_SHAPE).update(encodeEndpointKeys([endpoint(2)]), encodeLockValue({ version: 9n, deadlineNs: FAR, drops: 0n, lastDropNs: 0n }));
    expect(await lock.sweepExpired()).toBe(0);
    expect(differed(logged)).toMatchObject([{ map: 'godwit_lock_ep', why: 'sweep', unknown: 1, missing: 0, changed: 0 }]);

    await lock.lock([endpoint(1), endpoint(2)], 7n, 60_000); // the newer entry is now known and kept
    expect(await versionsOf(lock)).toEqual(new Map([[endpoint(1).address, 7n], [endpoint(2).address, 9n]]));
  });

  it('notices at once when an unlock finds fewer entries than it held', async () => {
    const pins = await createMaps('deleted');
    const logged: LogLine[] = [];
    const lock = lockOn(pins, logged);
    await lock.lock(endpoints(3), 5n, 60_000);
    expect(await new NativeMap(pins.lockMap, ENDPOINT_MAP_SHAPE).delete(encodeEndpointKeys([endpoint(0)]))).toBe(1);

    await lock.unlock(endpoints(3), 5n);
    expect(await lock.list()).toEqual([]);
    expect(logged.filter((l) => l.msg === 'unlock found entries already gone from the map')).toMatchObject([{ map: 'godwit_lock_ep', planned: 3, deleted: 2 }]);
    expect(await lock.sweepExpired()).toBe(0);
    expect(differed(logged)).toEqual([]); // the mirror forgot what the unlock deleted, the missing one too
  });

  it('finds a map replaced at its pin before writing, and plans against the new one', async () => {
    const pins = await createMaps('replaced');
    const logged: LogLine[] = [];
    const lock = lockOn(pins, logged);
    await lock.lock([endpoint(1)], 9n, 60_000);

    // The lock reinstalled from scratch: a new, empty map at the same pin.
    await execCommand('rm', ['-f', pins.lockMap]);
    await createEndpointMap(pins);

    // The mirror still says endpoint 1 is held at 9; a lock at 5 would be kept out by it, and write nothing.
    await lock.lock([endpoint(1)], 5n, 60_000);
    expect(await versionsOf(lock)).toEqual(new Map([[endpoint(1).address, 5n]]));
    expect(differed(logged)).toMatchObject([{ map: 'godwit_lock_ep', missing: 1 }]);
    expect(differed(logged)[0].why).toMatch(/now names map \d+, not map \d+/);
  });

  it('after a write that failed part way, holds what the map holds', async () => {
    const pins = await createMaps('full', 4);
    const logged: LogLine[] = [];
    const lock = lockOn(pins, logged);
    const err = await lock.lock(endpoints(6), 3n, 60_000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BpfMapError);
    expect(err).toMatchObject({ code: 'E2BIG', applied: 4 });
    expect((await lock.list()).length).toBe(4);

    // The mirror knows the 4 that went in: an older lock keeps them, an unlock removes them.
    await lock.lock(endpoints(4), 2n, 60_000);
    expect([...(await versionsOf(lock)).values()]).toEqual([3n, 3n, 3n, 3n]);
    await lock.unlock(endpoints(6), 3n);
    expect(await lock.list()).toEqual([]);
    expect(await lock.sweepExpired()).toBe(0);
    expect(differed(logged).length).toBe(1); // the reload after the failure, nothing since
  });

  it('guards the same way through bpftool', async () => {
    const pins = await createMaps('bpftool');
    const lock = lockOn(pins, [], 'bpftool');
    expect(lock.mapMethod).toBe('bpftool');
    await lock.lock(endpoints(3), 2n, 60_000);
    await lock.lock(endpoints(3), 1n, 60_000); // older: kept out
    expect([...(await versionsOf(lock)).values()]).toEqual([2n, 2n, 2n]);
    await lock.unlock(endpoints(3), 1n); // older: nothing goes
    expect((await lock.list()).length).toBe(3);
    await lock.unlock(endpoints(3), 2n);
    expect(await lock.list()).toEqual([]);
  });
});
