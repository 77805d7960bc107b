import { describe, it, expect, beforeAll, afterAll, afterEach, vi } from 'vitest';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { execCommand } from '../../lib/exec.js';
import type { FourTuple } from '../../agent/netlock.js';
import { EbpfNetLock, lockPins, TUPLE_MAP_SHAPE, type LockPins } from '../../agent/linux/netlock-ebpf.js';
import { BpfMapError, NativeLockMap } from '../../agent/linux/bpf-map-native.js';
import { encodeLockValue, encodeTupleKeys } from '../../agent/linux/lock-map-codec.js';

/*
 * EbpfNetLock's mirror of the lock maps (agent/linux/lock-mirror.ts) against real pinned maps:
 * what it costs (no map read on a lock or unlock) and how it heals when the map changes behind
 * its back. Bare maps made with bpftool, no XDP program: only map access is under test (the
 * XDP path is in netlock*.test.ts). Everything lives under one bpffs folder, removed afterwards.
 */
const repo = fileURLToPath(new URL('../../', import.meta.url));
const root = `/sys/fs/bpf/godwit-lm-${randomBytes(3).toString('hex')}`;

/** Connection i to the workload at 198.18.252.1:7000 from peer 198.19.(i / 256).(i % 256). */
const conn = (i: number): FourTuple => ({ proto: 'tcp', localAddress: '198.18.252.1', localPort: 7000, remoteAddress: `198.19.${(i >> 8) & 255}.${i & 255}`, remotePort: 40000 });
const conns = (n: number, from = 0) => Array.from({ length: n }, (_, k) => conn(from + k));
const FAR = 10n ** 18n; // a deadline that never comes

/** The host's two lock maps, created by hand where install() would pin them. */
async function createMaps(name: string, tupleEntries = TUPLE_MAP_SHAPE.maxEntries): Promise<LockPins> {
  const pins = lockPins(`${root}/${name}`);
  await execCommand('mkdir', ['-p', pins.mapsDir]);
  await createTupleMap(pins, tupleEntries);
  await execCommand('bpftool', ['map', 'create', pins.lockMap, 'type', 'hash', 'key', '8', 'value', '32', 'entries', '65536', 'name', 'godwit_lock_ep']);
  return pins;
}

async function createTupleMap(pins: LockPins, entries = TUPLE_MAP_SHAPE.maxEntries): Promise<void> {
  await execCommand('bpftool', ['map', 'create', pins.tupleMap, 'type', 'hash', 'key', '16', 'value', '32', 'entries', String(entries), 'name', 'godwit_lock_tup']);
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
const versionsOf = async (lock: EbpfNetLock) => new Map((await lock.listTuples()).map((e) => [e.tuple.remoteAddress, e.version]));

beforeAll(async () => {
  await execCommand('bash', [`${repo}scripts/build-native.sh`], { timeoutMs: 120_000 });
});

afterAll(async () => {
  await execCommand('rm', ['-rf', root]);
});

afterEach(() => {
  vi.restoreAllMocks();
});

describe('the lock maps mirror', () => {
  it('guards versions without reading the map: one dump on first use, none per lock or unlock', async () => {
    const pins = await createMaps('plain');
    const logged: LogLine[] = [];
    const lock = lockOn(pins, logged);
    const dumps = vi.spyOn(NativeLockMap.prototype, 'dump');
    const tuples = conns(3000);

    await lock.lockTuples(tuples, 5n, 60_000);
    expect(dumps).toHaveBeenCalledTimes(1); // the mirror loads
    await lock.lockTuples(tuples.slice(0, 1000), 7n, 60_000);
    await lock.lockTuples(tuples.slice(0, 2000), 6n, 60_000); // 1,000 kept at 7, 1,000 rewritten at 6
    await lock.unlockTuples(tuples, 5n); // only the 1,000 still at 5 go
    expect(dumps).toHaveBeenCalledTimes(1);

    const held = await lock.listTuples();
    expect(held.length).toBe(2000);
    expect(held.filter((e) => e.version === 7n).length).toBe(1000);
    expect(held.filter((e) => e.version === 6n).length).toBe(1000);
    await lock.unlockTuples(tuples, 7n);
    expect(await lock.listTuples()).toEqual([]);
    expect(await lock.sweepExpired()).toBe(0);
    expect(differed(logged)).toEqual([]); // the sweep's check found the mirror true
  });

  it('heals a write made behind its back at the next sweep, and says so', async () => {
    const pins = await createMaps('external');
    const logged: LogLine[] = [];
    const lock = lockOn(pins, logged);
    await lock.lockTuples([conn(1)], 5n, 60_000);

    // An operator's write: a newer entry the agent did not make.
    await new NativeLockMap(pins.tupleMap, TUPLE_MAP_SHAPE).update(encodeTupleKeys([conn(2)]), encodeLockValue({ version: 9n, deadlineNs: FAR, drops: 0n, lastDropNs: 0n }));
    expect(await lock.sweepExpired()).toBe(0);
    expect(differed(logged)).toMatchObject([{ map: 'godwit_lock_tuple', why: 'sweep', unknown: 1, missing: 0, changed: 0 }]);

    await lock.lockTuples([conn(1), conn(2)], 7n, 60_000); // the newer entry is now known and kept
    expect(await versionsOf(lock)).toEqual(new Map([[conn(1).remoteAddress, 7n], [conn(2).remoteAddress, 9n]]));
  });

  it('notices at once when an unlock finds fewer entries than it held', async () => {
    const pins = await createMaps('deleted');
    const logged: LogLine[] = [];
    const lock = lockOn(pins, logged);
    await lock.lockTuples(conns(3), 5n, 60_000);
    expect(await new NativeLockMap(pins.tupleMap, TUPLE_MAP_SHAPE).delete(encodeTupleKeys([conn(0)]))).toBe(1);

    await lock.unlockTuples(conns(3), 5n);
    expect(await lock.listTuples()).toEqual([]);
    expect(logged.filter((l) => l.msg === 'unlock found entries already gone from the map')).toMatchObject([{ planned: 3, deleted: 2 }]);
    expect(await lock.sweepExpired()).toBe(0);
    expect(differed(logged)).toEqual([]); // the mirror forgot what the unlock deleted, the missing one too
  });

  it('finds a map replaced at its pin before writing, and plans against the new one', async () => {
    const pins = await createMaps('replaced');
    const logged: LogLine[] = [];
    const lock = lockOn(pins, logged);
    await lock.lockTuples([conn(1)], 9n, 60_000);

    // The lock reinstalled from scratch: a new, empty map at the same pin.
    await execCommand('rm', ['-f', pins.tupleMap]);
    await createTupleMap(pins);

    // The mirror still says conn 1 is held at 9; a lock at 5 would be kept out by it, and write nothing.
    await lock.lockTuples([conn(1)], 5n, 60_000);
    expect(await versionsOf(lock)).toEqual(new Map([[conn(1).remoteAddress, 5n]]));
    expect(differed(logged)).toMatchObject([{ missing: 1 }]);
    expect(differed(logged)[0].why).toMatch(/now names map \d+, not map \d+/);
  });

  it('after a write that failed part way, holds what the map holds', async () => {
    const pins = await createMaps('full', 4);
    const logged: LogLine[] = [];
    const lock = lockOn(pins, logged);
    const err = await lock.lockTuples(conns(6), 3n, 60_000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BpfMapError);
    expect(err).toMatchObject({ code: 'E2BIG', applied: 4 });
    expect((await lock.listTuples()).length).toBe(4);

    // The mirror knows the 4 that went in: an older lock keeps them, an unlock removes them.
    await lock.lockTuples(conns(4), 2n, 60_000);
    expect([...(await versionsOf(lock)).values()]).toEqual([3n, 3n, 3n, 3n]);
    await lock.unlockTuples(conns(6), 3n);
    expect(await lock.listTuples()).toEqual([]);
    expect(await lock.sweepExpired()).toBe(0);
    expect(differed(logged).length).toBe(1); // the reload after the failure, nothing since
  });

  it('guards the same way through bpftool', async () => {
    const pins = await createMaps('bpftool');
    const lock = lockOn(pins, [], 'bpftool');
    expect(lock.mapMethod).toBe('bpftool');
    await lock.lockTuples(conns(3), 2n, 60_000);
    await lock.lockTuples(conns(3), 1n, 60_000); // older: kept out
    expect([...(await versionsOf(lock)).values()]).toEqual([2n, 2n, 2n]);
    await lock.unlockTuples(conns(3), 1n); // older: nothing goes
    expect((await lock.listTuples()).length).toBe(3);
    await lock.unlockTuples(conns(3), 2n);
    expect(await lock.listTuples()).toEqual([]);
  });
});
