import { describe, it, expect, beforeAll } from 'vitest';
import { fileURLToPath } from 'node:url';
import { execCommand } from '../../lib/exec.js';
import { CONN_SLOT_BYTES, CONN_TABLE_SHAPE, connHash, ConnLockTable, ConnTableFullError, SLOT_DELETED, SLOT_EMPTY, SLOT_LIVE, type ConnTableShape } from '../../agent/linux/conn-lock-table.js';
import { decodeLockValueAt, decodeTupleKey, encodeTupleKeys } from '../../agent/linux/lock-map-codec.js';

/*
 * The connection table's rules (native/bpfmap/conn_table.c, through ConnLockTable) on plain
 * memory, with a small table so that collisions, probe runs and wrap-around are easy to make.
 * The kernel side (bpf/lock.c reading the same table) is in test/integration/netlock-tuples.test.ts.
 */
const repo = fileURLToPath(new URL('../../', import.meta.url));
const SMALL: ConnTableShape = { slots: 16, maxEntries: 8, maxProbe: 4 };
const FAR = 10n ** 18n;

beforeAll(async () => {
  await execCommand('bash', [`${repo}scripts/build-native.sh`], { timeoutMs: 120_000 });
});

function table(shape = SMALL) {
  const memory = new ArrayBuffer(shape.slots * CONN_SLOT_BYTES);
  const t = new ConnLockTable(memory, shape);
  return { t, memory, states: () => Array.from({ length: shape.slots }, (_, s) => t.stateOf(s)) };
}

/** A 16-byte key from its four little-endian words. */
function key(...w: number[]): Buffer {
  const b = Buffer.alloc(16);
  w.forEach((x, i) => b.writeUInt32LE(x >>> 0, i * 4));
  return b;
}

/** n distinct keys that all have home slot `home` in a table of `slots`. */
function colliding(n: number, home: number, slots = SMALL.slots, from = 1): Buffer[] {
  const out: Buffer[] = [];
  for (let w = from; out.length < n; w++) {
    const k = key(w, 0x0100_0a0a, 0x5000_1f40, 6);
    if ((connHash(k) & (slots - 1)) === home) out.push(k);
  }
  return out;
}

const keys = (...ks: Buffer[]) => Buffer.concat(ks);

describe('connection lock table', () => {
  it('locks, finds and unlocks entries, and leaves the table all EMPTY', () => {
    const { t, states } = table();
    const [a, b, c] = colliding(3, 5);
    expect(t.lock(keys(a, b, c), 1n, FAR)).toEqual({ locked: 3, keptNewer: [] });
    expect(t.size).toBe(3);
    // One home slot: a at it, b and c probed to the next ones.
    expect([a, b, c].map((k) => t.slotOf(k))).toEqual([5, 6, 7]);
    expect(states().slice(5, 9)).toEqual([SLOT_LIVE, SLOT_LIVE, SLOT_LIVE, SLOT_EMPTY]);

    // The middle one goes: DELETED, so that c stays reachable past it.
    expect(t.unlock(keys(b), 1n)).toEqual({ unlocked: 1, keptNewer: [] });
    expect(states().slice(5, 8)).toEqual([SLOT_LIVE, SLOT_DELETED, SLOT_LIVE]);
    expect(t.slotOf(c)).toBe(7);

    // c goes: the run of DELETED slots now ends at an EMPTY one, so all of it empties.
    t.unlock(keys(c), 1n);
    expect(states().slice(5, 8)).toEqual([SLOT_LIVE, SLOT_EMPTY, SLOT_EMPTY]);
    t.unlock(keys(a), 1n);
    expect(states().every((s) => s === SLOT_EMPTY)).toBe(true);
    expect(t.size).toBe(0);
  });

  it('empties a DELETED run whose last entry goes first, and reuses DELETED slots', () => {
    const { t, states } = table();
    const [a, b, c, d] = colliding(4, 9);
    t.lock(keys(a, b, c), 1n, FAR);
    t.unlock(keys(a, b), 1n);
    expect(states().slice(9, 12)).toEqual([SLOT_DELETED, SLOT_DELETED, SLOT_LIVE]);
    t.lock(keys(d), 1n, FAR); // the first free slot of its probe: a DELETED one
    expect(t.slotOf(d)).toBe(9);
    t.unlock(keys(c, d), 1n);
    expect(states().every((s) => s === SLOT_EMPTY)).toBe(true);
  });

  it('wraps around the end of the table', () => {
    const { t, states } = table();
    const ks = colliding(3, 15);
    t.lock(keys(...ks), 1n, FAR);
    expect(ks.map((k) => t.slotOf(k))).toEqual([15, 0, 1]);
    t.unlock(keys(ks[0]), 1n);
    expect(t.slotOf(ks[2])).toBe(1);
    t.unlock(keys(ks[2], ks[1]), 1n);
    expect(states().every((s) => s === SLOT_EMPTY)).toBe(true);
  });

  it('guards by version: an older lock or unlock leaves a newer entry as it is, and says so', () => {
    const { t } = table();
    const [a, b] = colliding(2, 3);
    t.lock(keys(a), 7n, FAR);
    expect(t.lock(keys(b, a), 5n, 123n)).toEqual({ locked: 1, keptNewer: [{ index: 1, heldVersion: 7n }] });
    expect(t.unlock(keys(a, b), 6n)).toEqual({ unlocked: 1, keptNewer: [{ index: 0, heldVersion: 7n }] });
    // An equal version wins: a retried lock re-leases its own entry.
    expect(t.lock(keys(a), 7n, FAR + 1n).locked).toBe(1);
    const held = t.entries();
    expect(decodeLockValueAt(held.values, 0)).toMatchObject({ version: 7n, deadlineNs: FAR + 1n });
    expect(t.unlock(keys(a), 7n).unlocked).toBe(1);
  });

  it('counts a key asked for twice in one call once, and keeps drop counts across a re-lease', () => {
    const { t, memory } = table();
    const [a] = colliding(1, 2);
    expect(t.lock(keys(a, a), 1n, FAR).locked).toBe(1);
    // What the XDP program does on a drop: an atomic add to the lease's drops (u64 at slot byte 40).
    new BigUint64Array(memory)[(2 * CONN_SLOT_BYTES + 40) / 8] = 3n;
    t.lock(keys(a), 2n, FAR);
    expect(decodeLockValueAt(t.entries().values, 0)).toMatchObject({ version: 2n, drops: 3n });
    expect(t.unlock(keys(a, a), 2n).unlocked).toBe(1);
  });

  it('refuses a lock past maxEntries and undoes the whole call', () => {
    const { t, states } = table();
    const first = colliding(1, 0)[0];
    t.lock(keys(first), 1n, FAR);
    const before = states();
    const more = Array.from({ length: 8 }, (_, i) => key(1000 + i, 1, 2, 3));
    const err = (() => {
      try {
        t.lock(keys(first, ...more), 2n, FAR); // 1 re-lease + 8 new > 8 entries
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(ConnTableFullError);
    expect(err).toMatchObject({ reason: 'entries', limit: 8 });
    expect(states()).toEqual(before);
    expect(t.size).toBe(1);
    expect(decodeLockValueAt(t.entries().values, 0)).toMatchObject({ version: 1n, deadlineNs: FAR }); // the re-lease undone
  });

  it('refuses a key with no free slot within maxProbe of its home, and undoes the call', () => {
    const { t, states } = table({ slots: 16, maxEntries: 16, maxProbe: 4 });
    const ks = colliding(5, 7);
    t.lock(keys(...ks.slice(0, 3)), 1n, FAR);
    const before = states();
    expect(() => t.lock(keys(ks[3], ks[4]), 1n, FAR)).toThrow(ConnTableFullError);
    expect(states()).toEqual(before);
    expect(t.size).toBe(3);
  });

  it('sweeps expired entries only', () => {
    const { t } = table();
    const [a, b] = colliding(2, 11);
    t.lock(keys(a), 1n, 100n);
    t.lock(keys(b), 1n, 300n);
    expect(t.sweepExpired(200n)).toBe(1);
    expect(t.slotOf(a)).toBe(-1);
    expect(t.slotOf(b)).toBe(12); // still past a's DELETED slot
    expect(t.sweepExpired(300n)).toBe(1); // the deadline is exclusive, as in the program
    expect(t.size).toBe(0);
  });

  it('lists entries as packed tuple keys and leases', () => {
    const { t, memory } = table(CONN_TABLE_SHAPE);
    const tuples = Array.from({ length: 1000 }, (_, i) => ({ proto: 'tcp' as const, localAddress: '198.18.0.1', localPort: 7000, remoteAddress: `198.19.${i >> 8}.${i & 255}`, remotePort: 1024 + i }));
    t.lock(encodeTupleKeys(tuples), 4n, FAR);
    const held = t.entries();
    expect(held.count).toBe(1000);
    const listed = new Set(Array.from({ length: held.count }, (_, i) => JSON.stringify(decodeTupleKey(held.keys, i * 16))));
    expect(listed).toEqual(new Set(tuples.map((x) => JSON.stringify(x))));
    expect(new ConnLockTable(memory, CONN_TABLE_SHAPE).size).toBe(1000); // a second view counts what is there
  });
});
