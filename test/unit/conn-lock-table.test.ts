import { describe, it, expect } from 'vitest';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execCommand } from '../../lib/exec.js';
import { CONN_SLOT_BYTES, CONN_TABLE_SHAPE, connHash, ConnLockTable, ConnTableFullError, SLOT_DELETED, SLOT_EMPTY, SLOT_LIVE, type ConnTableShape } from '../../agent/linux/conn-lock-table.js';
import { decodeLockValueAt, decodeTupleKey, encodeTupleKeys, keyWords } from '../../agent/linux/lock-map-codec.js';

/*
 * The connection table's rules on plain memory, with a small table so that collisions, probe
 * runs and wrap-around are easy to make. The kernel side (bpf/lock.c reading the same table)
 * is in test/integration/netlock-tuples.test.ts.
 */
const repo = fileURLToPath(new URL('../../', import.meta.url));
const SMALL: ConnTableShape = { slots: 16, maxEntries: 8, maxProbe: 4 };
const FAR = 10n ** 18n;

function table(shape = SMALL) {
  const memory = new ArrayBuffer(shape.slots * CONN_SLOT_BYTES);
  return { t: new ConnLockTable(memory, shape), states: () => Array.from({ length: shape.slots }, (_, s) => new Uint32Array(memory)[(s * CONN_SLOT_BYTES) / 4]), memory };
}

/** A key (4 words) with a distinct first word, whose home slot in `slots` is `home`. */
function keyWithHome(home: number, slots: number, skip = new Set<number>()): number[] {
  for (let w = 1; ; w++) {
    if (skip.has(w)) continue;
    const k = Uint32Array.of(w, 0x0100_0a0a, 0x5000_1f40, 6);
    if ((connHash(k, 0) & (slots - 1)) === home) {
      skip.add(w);
      return Array.from(k);
    }
  }
}

/** n keys that all have home slot `home`. */
function colliding(n: number, home: number, slots = SMALL.slots): number[][] {
  const used = new Set<number>();
  return Array.from({ length: n }, () => keyWithHome(home, slots, used));
}

const words = (...keys: number[][]) => Uint32Array.from(keys.flat());

describe('connection lock table', () => {
  it('locks, finds and unlocks entries, and leaves the table all EMPTY', () => {
    const { t, states } = table();
    const [a, b, c] = colliding(3, 5);
    expect(t.lock(words(a, b, c), 1n, FAR)).toEqual({ locked: 3, keptNewer: [] });
    expect(t.size).toBe(3);
    // One home slot: a at it, b and c probed to the next ones.
    expect([a, b, c].map((k) => t.find(Uint32Array.from(k), 0))).toEqual([5, 6, 7]);
    expect(states().slice(5, 9)).toEqual([SLOT_LIVE, SLOT_LIVE, SLOT_LIVE, SLOT_EMPTY]);

    // The middle one goes: DELETED, so that c stays reachable past it.
    expect(t.unlock(words(b), 1n)).toEqual({ unlocked: 1, keptNewer: [] });
    expect(states().slice(5, 8)).toEqual([SLOT_LIVE, SLOT_DELETED, SLOT_LIVE]);
    expect(t.find(Uint32Array.from(c), 0)).toBe(7);

    // c goes: the run of DELETED slots now ends at an EMPTY one, so all of it empties.
    t.unlock(words(c), 1n);
    expect(states().slice(5, 8)).toEqual([SLOT_LIVE, SLOT_EMPTY, SLOT_EMPTY]);
    t.unlock(words(a), 1n);
    expect(states().every((s) => s === SLOT_EMPTY)).toBe(true);
    expect(t.size).toBe(0);
  });

  it('empties a DELETED run whose last entry goes first, and reuses DELETED slots', () => {
    const { t, states } = table();
    const [a, b, c, d] = colliding(4, 9);
    t.lock(words(a, b, c), 1n, FAR);
    t.unlock(words(a, b), 1n);
    expect(states().slice(9, 12)).toEqual([SLOT_DELETED, SLOT_DELETED, SLOT_LIVE]);
    t.lock(words(d), 1n, FAR); // the first free slot of its probe: a DELETED one
    expect(t.find(Uint32Array.from(d), 0)).toBe(9);
    t.unlock(words(c, d), 1n);
    expect(states().every((s) => s === SLOT_EMPTY)).toBe(true);
  });

  it('wraps around the end of the table', () => {
    const { t, states } = table();
    const keys = colliding(3, 15);
    t.lock(words(...keys), 1n, FAR);
    expect(keys.map((k) => t.find(Uint32Array.from(k), 0))).toEqual([15, 0, 1]);
    t.unlock(words(keys[0]), 1n);
    expect(t.find(Uint32Array.from(keys[2]), 0)).toBe(1);
    t.unlock(words(keys[2], keys[1]), 1n);
    expect(states().every((s) => s === SLOT_EMPTY)).toBe(true);
  });

  it('guards by version: an older lock or unlock leaves a newer entry as it is, and says so', () => {
    const { t } = table();
    const [a, b] = colliding(2, 3);
    t.lock(words(a), 7n, FAR);
    expect(t.lock(words(b, a), 5n, 123n)).toEqual({ locked: 1, keptNewer: [{ index: 1, heldVersion: 7n }] });
    expect(t.unlock(words(a, b), 6n)).toEqual({ unlocked: 1, keptNewer: [{ index: 0, heldVersion: 7n }] });
    // An equal version wins: a retried lock re-leases its own entry.
    expect(t.lock(words(a), 7n, FAR + 1n).locked).toBe(1);
    const held = t.entries();
    expect(decodeLockValueAt(held.values, 0)).toMatchObject({ version: 7n, deadlineNs: FAR + 1n });
    expect(t.unlock(words(a), 7n).unlocked).toBe(1);
  });

  it('counts a key asked for twice in one call once, and keeps drop counts across a re-lease', () => {
    const { t, memory } = table();
    const [a] = colliding(1, 2);
    expect(t.lock(words(a, a), 1n, FAR).locked).toBe(1);
    // What the XDP program does on a drop: an atomic add to the lease's drops (u64 at slot byte 40).
    new BigUint64Array(memory)[(2 * CONN_SLOT_BYTES + 40) / 8] = 3n;
    t.lock(words(a), 2n, FAR);
    expect(decodeLockValueAt(t.entries().values, 0)).toMatchObject({ version: 2n, drops: 3n });
    expect(t.unlock(words(a, a), 2n).unlocked).toBe(1);
  });

  it('refuses a lock past maxEntries and undoes the whole call', () => {
    const { t, states } = table();
    const first = colliding(1, 0)[0];
    t.lock(words(first), 1n, FAR);
    const before = states();
    const more = Array.from({ length: 8 }, (_, i) => [1000 + i, 1, 2, 3]);
    const err = (() => {
      try {
        t.lock(words(first, ...more), 2n, FAR); // 1 re-lease + 8 new > 8 entries
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
    const keys = colliding(5, 7);
    t.lock(words(...keys.slice(0, 3)), 1n, FAR);
    const before = states();
    expect(() => t.lock(words(keys[3], keys[4]), 1n, FAR)).toThrow(ConnTableFullError);
    expect(states()).toEqual(before);
    expect(t.size).toBe(3);
  });

  it('sweeps expired entries only', () => {
    const { t } = table();
    const [a, b] = colliding(2, 11);
    t.lock(words(a), 1n, 100n);
    t.lock(words(b), 1n, 300n);
    expect(t.sweepExpired(200n)).toBe(1);
    expect(t.find(Uint32Array.from(a), 0)).toBe(-1);
    expect(t.find(Uint32Array.from(b), 0)).toBe(12); // still past a's DELETED slot
    expect(t.sweepExpired(300n)).toBe(1); // the deadline is exclusive, as in the program
    expect(t.size).toBe(0);
  });

  it('lists entries as packed tuple keys and leases', () => {
    const { t } = table(CONN_TABLE_SHAPE);
    const tuples = Array.from({ length: 1000 }, (_, i) => ({ proto: 'tcp' as const, localAddress: '198.18.0.1', localPort: 7000, remoteAddress: `198.19.${i >> 8}.${i & 255}`, remotePort: 1024 + i }));
    t.lock(keyWords(encodeTupleKeys(tuples)), 4n, FAR);
    const held = t.entries();
    expect(held.count).toBe(1000);
    const listed = new Set(Array.from({ length: held.count }, (_, i) => JSON.stringify(decodeTupleKey(held.keys, i * 16))));
    expect(listed).toEqual(new Set(tuples.map((x) => JSON.stringify(x))));
    expect(new ConnLockTable(t['words'].buffer as ArrayBuffer).size).toBe(1000); // a second view counts what is there
  });

  it('hashes every key exactly as bpf/godwit_maps.h does', async () => {
    // The header's godwit_conn_hash, compiled for this host, against connHash on the same keys.
    const dir = await mkdtemp(join(tmpdir(), 'godwit-hash-'));
    try {
      const keys = Array.from({ length: 200 }, (_, i) => [(i * 2654435761) >>> 0, (i * 40503) >>> 0, 0xffff_ffff - i, i % 3 === 0 ? 17 : 6]);
      await writeFile(
        join(dir, 'hash.c'),
        `#include <stdio.h>
#include "godwit_maps.h"
static const __u32 keys[][4] = { ${keys.map((k) => `{ ${k.map((w) => `${w}u`).join(', ')} }`).join(',\n')} };
int main(void) {
	for (unsigned i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) printf("%u\\n", godwit_conn_hash((const struct godwit_tuple_key *)keys[i]));
	return 0;
}
`,
      );
      await execCommand('clang', ['-O2', '-I', `${repo}bpf`, '-o', join(dir, 'hash'), join(dir, 'hash.c')]);
      const fromC = (await execCommand(join(dir, 'hash'), [])).stdout.trim().split('\n').map(Number);
      expect(fromC).toEqual(keys.map((k) => connHash(Uint32Array.from(k), 0)));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
