import { describe, it, expect } from 'vitest';
import type { FourTuple } from '../../agent/netlock.js';
import {
  encodeEndpointKeys,
  encodeLockValue,
  encodeTupleKeys,
  ENDPOINT_KEY_LAYOUT,
  heldEntries,
  planLock,
  planUnlock,
  TUPLE_KEY_LAYOUT,
} from '../../agent/linux/lock-map-codec.js';
import type { PackedEntries } from '../../agent/linux/bpf/map-access.js';
import { LockMirror } from '../../agent/linux/lock-mirror.js';

const ks = TUPLE_KEY_LAYOUT.size;
// Connection i comes from peer 198.(20 + i / 65536).(i / 256 % 256).(i % 256).
const tuple = (i: number): FourTuple => ({ proto: 'tcp', localAddress: '198.18.0.1', localPort: 7000, remoteAddress: `198.${20 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`, remotePort: 40000 });
const keysOf = (ids: readonly number[]) => encodeTupleKeys(ids.map(tuple));
const keyOf = (i: number) => keysOf([i]);

/** A dump holding ids at (version, deadline), with some drops the mirror must ignore. */
function dump(entries: readonly [id: number, version: bigint, deadlineNs: bigint][]): PackedEntries {
  return {
    keys: keysOf(entries.map(([id]) => id)),
    values: Buffer.concat(entries.map(([, version, deadlineNs], i) => encodeLockValue({ version, deadlineNs, drops: BigInt(i), lastDropNs: 7n }))),
    count: entries.length,
  };
}

describe('LockMirror', () => {
  it('loads a dump and finds its entries by key', () => {
    const m = new LockMirror(ks, dump([[1, 5n, 100n], [2, 2n ** 64n - 1n, 2n ** 40n]]), 42);
    expect(m.size).toBe(2);
    expect(m.mapId).toBe(42);
    expect(m.get(keyOf(1))).toEqual({ version: 5n, deadlineNs: 100n });
    expect(m.get(keyOf(2))).toEqual({ version: 2n ** 64n - 1n, deadlineNs: 2n ** 40n });
    expect(m.get(keyOf(3))).toBeUndefined();
  });

  it('records a batch update (new and rewritten keys) and forgets a batch delete', () => {
    const m = new LockMirror(ks, dump([[1, 5n, 100n]]));
    m.record(keysOf([1, 2, 3]), 9n, 900n);
    expect(m.size).toBe(3);
    for (const id of [1, 2, 3]) expect(m.get(keyOf(id))).toEqual({ version: 9n, deadlineNs: 900n });
    m.forget(keysOf([2, 7, 2])); // 7 was never there; 2 twice
    expect(m.size).toBe(2);
    expect(m.get(keyOf(2))).toBeUndefined();
    expect(m.get(keyOf(3))).toEqual({ version: 9n, deadlineNs: 900n });
    m.clear(); // an unlock of every entry
    expect(m.size).toBe(0);
    expect(m.get(keyOf(3))).toBeUndefined();
    m.record(keysOf([3]), 1n, 2n);
    expect(m.get(keyOf(3))).toEqual({ version: 1n, deadlineNs: 2n });
  });

  it('says how a dump differs: entries it lacks, entries gone, versions or deadlines changed', () => {
    const m = new LockMirror(ks, dump([[1, 5n, 100n], [2, 5n, 100n], [3, 5n, 100n], [4, 5n, 100n]]));
    expect(m.differences(dump([[1, 5n, 100n], [2, 5n, 100n], [3, 5n, 100n], [4, 5n, 100n]]))).toEqual({ unknown: 0, missing: 0, changed: 0 });
    expect(m.differences(dump([[1, 5n, 100n], [2, 6n, 100n], [3, 5n, 101n], [8, 1n, 1n], [9, 1n, 1n]]))).toEqual({ unknown: 2, missing: 1, changed: 2 });
    m.reset(dump([[8, 1n, 1n]]), 7);
    expect(m.size).toBe(1);
    expect(m.mapId).toBe(7);
    expect(m.get(keyOf(1))).toBeUndefined();
  });

  it('stays equal to a plain Map through 60,000 random updates and deletes (growth and probe runs included)', () => {
    const m = new LockMirror(ks);
    const ref = new Map<number, bigint>();
    let seed = 12345;
    const rand = (n: number) => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed % n;
    };
    for (let round = 0; round < 600; round++) {
      const ids = Array.from({ length: 1 + rand(200) }, () => rand(20_000));
      if (rand(3) === 0) {
        m.forget(keysOf(ids));
        for (const id of ids) ref.delete(id);
      } else {
        const version = BigInt(round);
        m.record(keysOf(ids), version, version * 10n);
        for (const id of ids) ref.set(id, version);
      }
      expect(m.size).toBe(ref.size);
    }
    for (let id = 0; id < 20_000; id++) {
      const want = ref.get(id);
      expect(m.get(keyOf(id))).toEqual(want === undefined ? undefined : { version: want, deadlineNs: want * 10n });
    }
  });

  it('works for 8-byte endpoint keys too', () => {
    const keys = encodeEndpointKeys([
      { proto: 'tcp', address: '198.18.0.1', port: 7000 },
      { proto: 'udp', address: '198.18.0.1', port: 7000 },
    ]);
    const m = new LockMirror(ENDPOINT_KEY_LAYOUT.size);
    m.record(keys, 3n, 30n);
    expect(m.size).toBe(2);
    expect(m.get(keys.subarray(8))).toEqual({ version: 3n, deadlineNs: 30n });
    m.forget(keys.subarray(0, 8));
    expect(m.get(keys.subarray(0, 8))).toBeUndefined();
    expect(() => m.record(Buffer.alloc(12), 1n, 1n)).toThrow(RangeError);
  });

  it('gives the same lock and unlock plans as the dump it mirrors', () => {
    const ids = Array.from({ length: 20_000 }, (_, i) => i);
    const held = dump(ids.filter((i) => i % 2 === 0).map((i) => [i, i % 4 === 0 ? 10n : 3n, 1n]));
    const mirror = new LockMirror(ks, held);
    const fromDump = heldEntries(ks, held);
    const wanted = keysOf([...ids, 0, 2, 1]); // repeats too
    for (const version of [2n, 5n, 10n, 11n]) {
      const a = planLock(ks, wanted, mirror, version, 77n);
      const b = planLock(ks, wanted, fromDump, version, 77n);
      expect(a.writes.count).toBe(b.writes.count);
      expect(a.writes.keys.equals(b.writes.keys)).toBe(true);
      expect(a.writes.values.equals(b.writes.values)).toBe(true);
      expect(a.keptNewer).toEqual(b.keptNewer);
      const u = planUnlock(ks, wanted, mirror, version);
      const w = planUnlock(ks, wanted, fromDump, version);
      expect(u.count).toBe(w.count);
      expect(u.deletes.equals(w.deletes)).toBe(true);
      expect(u.keptNewer).toEqual(w.keptNewer);
    }
    const lock5 = planLock(ks, wanted, mirror, 5n, 77n);
    expect(lock5.writes.count).toBe(15_000); // the 5,000 held at 10 stay
    expect(planUnlock(ks, wanted, mirror, 5n).count).toBe(5_000); // those held at 3
  });

  it('plans a lock, records it, and the next plans see it: versions guarded without a dump', () => {
    const m = new LockMirror(ks);
    const keys = keysOf([1, 2, 3]);
    const lock = planLock(ks, keys, m, 7n, 100n);
    m.record(lock.writes.keys, 7n, 100n);
    expect(planLock(ks, keys, m, 6n, 200n).keptNewer.map((k) => k.heldVersion)).toEqual([7n, 7n, 7n]); // older lock: nothing written
    expect(planUnlock(ks, keys, m, 6n).count).toBe(0); // older unlock: nothing deleted
    const unlock = planUnlock(ks, keysOf([2, 2, 9]), m, 7n);
    expect(unlock.count).toBe(1);
    m.forget(unlock.deletes);
    expect(m.size).toBe(2);
    expect(planUnlock(ks, keysOf([2]), m, 7n).count).toBe(0); // idempotent
  });
});
