import { CONN_SLOT_LAYOUT, joinU64, LOCK_VALUE_LAYOUT, splitU64, TUPLE_KEY_LAYOUT, type KeptNewer, type PackedEntries } from './lock-map-codec.js';

/*
 * godwit_lock_conn, the exact-connection lock, as the agent writes it: an open-addressing hash
 * table with linear probing in an mmappable BPF array, shared with the XDP program, which only
 * reads it (bpf/godwit_maps.h explains the table; bpf/lock.c's conn_lease() is its lookup).
 *
 * A lock or unlock is a few loads and stores per connection in this process's memory, no system
 * call: 10,000 connections take well under a millisecond, where the kernel's batch update of a
 * hash map took 3-8 ms. The memory is the only copy of the state, so there is nothing to keep in
 * sync; a restarted agent maps the pinned table and carries on.
 *
 * Rules that keep a concurrent lookup from missing an entry that stays LIVE (the kernel reads
 * while this writes, on other CPUs):
 *  - an entry's key and lease are stored before its state becomes LIVE, with Atomics.store (a
 *    sequentially consistent store: neither V8 nor the CPU moves the earlier stores after it);
 *  - a LIVE entry's deadline is rewritten with one 64-bit store, never as two halves the program
 *    could read torn;
 *  - a LIVE slot is never reused: it becomes DELETED first, and only DELETED slots whose next
 *    slot is EMPTY become EMPTY, from the end of such a run backwards.
 *
 * This class must be the table's only writer on the host, one call at a time (the agent's
 * EbpfNetLock runs one operation at a time). Keys are little-endian u32 words, as keyWords()
 * gives them: the table and the hash are defined on the same words the program loads.
 */

/** What a table is: bpf/godwit_maps.h's GODWIT_CONN_* for the real one; smaller ones in tests. */
export interface ConnTableShape {
  /** Power of two. */
  slots: number;
  /** LIVE entries allowed (at most half the slots keeps probes short). */
  maxEntries: number;
  /** Longest probe: every entry sits within this many slots of its home slot. */
  maxProbe: number;
}

/** GODWIT_CONN_SLOTS, GODWIT_CONN_MAX_ENTRIES, GODWIT_CONN_MAX_PROBE. */
export const CONN_TABLE_SHAPE: ConnTableShape = { slots: 1 << 18, maxEntries: 131_072, maxProbe: 64 };

/** GODWIT_SLOT_*: a slot's state word. */
export const SLOT_EMPTY = 0;
export const SLOT_LIVE = 1;
export const SLOT_DELETED = 2;

/** struct godwit_conn_slot: u32 state, u32 pad, the 16-byte tuple key, the 32-byte lease. */
export const CONN_SLOT_BYTES = CONN_SLOT_LAYOUT.size;
const SLOT_WORDS = CONN_SLOT_BYTES / 4;
const SLOT_U64S = CONN_SLOT_BYTES / 8;
const KEY_WORDS = TUPLE_KEY_LAYOUT.size / 4;
/** Word offsets in a slot (u64 fields low word first). */
const W = { state: 0, pad: 1, key: 2, versionLo: 6, versionHi: 7, deadlineLo: 8, deadlineHi: 9, dropsLo: 10, dropsHi: 11, lastDropLo: 12, lastDropHi: 13 } as const;
/** u64 offset of the deadline in a slot. */
const DEADLINE_U64 = 4;
/** Byte offsets of the key and the lease in a slot. */
const KEY_BYTE = W.key * 4;
const LEASE_BYTE = W.versionLo * 4;

/** A lock found no room: nothing of that call was left written. */
export class ConnTableFullError extends Error {
  constructor(
    readonly reason: 'entries' | 'probe',
    readonly limit: number,
  ) {
    super(
      reason === 'entries'
        ? `the connection lock table holds at most ${limit} entries; unlock others or lock the endpoint instead`
        : `no free slot within ${limit} of a connection's home slot in the lock table; unlock others or lock the endpoint instead`,
    );
    this.name = 'ConnTableFullError';
  }
}

/** MurmurHash3's 32-bit mixing of one word into h (godwit_conn_mix in bpf/godwit_maps.h). */
function mix(h: number, w: number): number {
  w = Math.imul(w, 0xcc9e2d51);
  w = (w << 15) | (w >>> 17);
  w = Math.imul(w, 0x1b873593);
  h ^= w;
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

/** godwit_conn_hash: the 32-bit hash of the key k[at..at+4] (u32 words). Must match the C copy bit for bit. */
export function connHash(k: Uint32Array, at: number): number {
  let h = mix(mix(mix(mix(0, k[at]), k[at + 1]), k[at + 2]), k[at + 3]);
  h ^= 16;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Whether the u64 (vHi, vLo) is greater than (hi, lo). */
function above(vHi: number, vLo: number, hi: number, lo: number): boolean {
  return vHi > hi || (vHi === hi && vLo > lo);
}

export class ConnLockTable {
  private readonly words: Uint32Array;
  private readonly u64s: BigUint64Array;
  private readonly bytes: Buffer;
  private readonly mask: number;
  private live: number;

  /** `memory`: the table's values (mapPinnedArray), or any zeroed buffer of the shape in tests. */
  constructor(
    memory: ArrayBuffer,
    readonly shape: ConnTableShape = CONN_TABLE_SHAPE,
  ) {
    const { slots, maxEntries, maxProbe } = shape;
    if (!Number.isInteger(slots) || slots < 2 || (slots & (slots - 1)) !== 0) throw new RangeError(`${slots} slots: must be a power of two`);
    if (maxEntries < 1 || maxEntries > slots || maxProbe < 1 || maxProbe > slots) throw new RangeError(`table shape ${JSON.stringify(shape)} is inconsistent`);
    if (memory.byteLength < slots * CONN_SLOT_BYTES) throw new RangeError(`${memory.byteLength} bytes hold fewer than ${slots} slots of ${CONN_SLOT_BYTES}`);
    this.words = new Uint32Array(memory, 0, slots * SLOT_WORDS);
    this.u64s = new BigUint64Array(memory, 0, slots * SLOT_U64S);
    this.bytes = Buffer.from(memory, 0, slots * CONN_SLOT_BYTES);
    this.mask = slots - 1;
    this.live = this.recount();
  }

  /** LIVE entries, as counted at the last recount() plus this object's own writes since. */
  get size(): number {
    return this.live;
  }

  /** Counts the LIVE slots again (another writer, e.g. a second instance in tests, may have changed them). */
  recount(): number {
    let live = 0;
    for (let b = 0; b < this.words.length; b += SLOT_WORDS) if (this.words[b] === SLOT_LIVE) live++;
    this.live = live;
    return live;
  }

  /** The slot of the LIVE entry with key k[at..at+4], or -1. */
  find(k: Uint32Array, at: number): number {
    const home = connHash(k, at);
    for (let p = 0; p < this.shape.maxProbe; p++) {
      const s = (home + p) & this.mask;
      const state = this.words[s * SLOT_WORDS];
      if (state === SLOT_EMPTY) return -1;
      if (state === SLOT_LIVE && this.keyIs(s, k, at)) return s;
    }
    return -1;
  }

  /**
   * Locks every key (packed u32 words, 4 per key) with this version until deadlineNs: a new
   * entry, or the existing one re-leased, unless it holds a newer version (then kept, reported).
   * Re-leasing keeps the entry's drop counters. All or nothing: when the table has no room for
   * some key, what this call wrote is undone and ConnTableFullError thrown.
   */
  lock(keys: Uint32Array, version: bigint, deadlineNs: bigint): { locked: number; keptNewer: KeptNewer[] } {
    const n = keyCount(keys);
    const [vHi, vLo] = splitU64(version);
    const [dHi, dLo] = splitU64(deadlineNs);
    const { words, u64s } = this;
    const keptNewer: KeptNewer[] = [];
    const inserted = new Int32Array(n);
    const insertedOver = new Uint8Array(n); // the state each inserted slot had before: EMPTY or DELETED
    let insertedCount = 0;
    const released: { slot: number; vHi: number; vLo: number; deadline: bigint }[] = [];
    let locked = 0;
    try {
      for (let i = 0; i < n; i++) {
        const at = i * KEY_WORDS;
        const home = connHash(keys, at);
        let free = -1;
        let found = -1;
        for (let p = 0; p < this.shape.maxProbe; p++) {
          const s = (home + p) & this.mask;
          const state = words[s * SLOT_WORDS];
          if (state === SLOT_EMPTY) {
            if (free < 0) free = s;
            break;
          }
          if (state === SLOT_DELETED) {
            if (free < 0) free = s;
          } else if (this.keyIs(s, keys, at)) {
            found = s;
            break;
          }
        }
        if (found >= 0) {
          const b = found * SLOT_WORDS;
          const hHi = words[b + W.versionHi];
          const hLo = words[b + W.versionLo];
          if (above(hHi, hLo, vHi, vLo)) {
            keptNewer.push({ index: i, heldVersion: joinU64(hHi, hLo) });
            continue;
          }
          // The same key earlier in this call: one entry, counted once.
          if (hHi === vHi && hLo === vLo && words[b + W.deadlineHi] === dHi && words[b + W.deadlineLo] === dLo) continue;
          released.push({ slot: found, vHi: hHi, vLo: hLo, deadline: u64s[found * SLOT_U64S + DEADLINE_U64] });
          words[b + W.versionHi] = vHi;
          words[b + W.versionLo] = vLo;
          Atomics.store(u64s, found * SLOT_U64S + DEADLINE_U64, deadlineNs);
          locked++;
          continue;
        }
        if (this.live >= this.shape.maxEntries) throw new ConnTableFullError('entries', this.shape.maxEntries);
        if (free < 0) throw new ConnTableFullError('probe', this.shape.maxProbe);
        const b = free * SLOT_WORDS;
        words[b + W.pad] = 0;
        for (let w = 0; w < KEY_WORDS; w++) words[b + W.key + w] = keys[at + w];
        words[b + W.versionHi] = vHi;
        words[b + W.versionLo] = vLo;
        words[b + W.deadlineHi] = dHi;
        words[b + W.deadlineLo] = dLo;
        words[b + W.dropsHi] = 0;
        words[b + W.dropsLo] = 0;
        words[b + W.lastDropHi] = 0;
        words[b + W.lastDropLo] = 0;
        insertedOver[insertedCount] = words[b + W.state];
        inserted[insertedCount++] = free;
        Atomics.store(words, b + W.state, SLOT_LIVE); // last: publishes the entry
        this.live++;
        locked++;
      }
    } catch (err) {
      // Newest first, each slot back to what it was: no probe path of an entry that stays ran
      // through a slot that was EMPTY, so it may be EMPTY again.
      for (let j = insertedCount - 1; j >= 0; j--) {
        Atomics.store(words, inserted[j] * SLOT_WORDS + W.state, insertedOver[j]);
        this.live--;
      }
      for (const r of released.reverse()) {
        words[r.slot * SLOT_WORDS + W.versionHi] = r.vHi;
        words[r.slot * SLOT_WORDS + W.versionLo] = r.vLo;
        Atomics.store(u64s, r.slot * SLOT_U64S + DEADLINE_U64, r.deadline);
      }
      throw err;
    }
    return { locked, keptNewer };
  }

  /** Removes the entry of every key whose version is not newer than `version`; keys not held are skipped. */
  unlock(keys: Uint32Array, version: bigint): { unlocked: number; keptNewer: KeptNewer[] } {
    const n = keyCount(keys);
    const [vHi, vLo] = splitU64(version);
    const keptNewer: KeptNewer[] = [];
    let unlocked = 0;
    for (let i = 0; i < n; i++) {
      const s = this.find(keys, i * KEY_WORDS);
      if (s < 0) continue;
      const b = s * SLOT_WORDS;
      const hHi = this.words[b + W.versionHi];
      const hLo = this.words[b + W.versionLo];
      if (above(hHi, hLo, vHi, vLo)) {
        keptNewer.push({ index: i, heldVersion: joinU64(hHi, hLo) });
        continue;
      }
      this.remove(s);
      unlocked++;
    }
    return { unlocked, keptNewer };
  }

  /** Removes every entry whose lease has run out at monotonic time nowNs; returns how many. Recounts. */
  sweepExpired(nowNs: bigint): number {
    const [nHi, nLo] = splitU64(nowNs);
    let swept = 0;
    for (let s = 0; s < this.shape.slots; s++) {
      const b = s * SLOT_WORDS;
      if (this.words[b] !== SLOT_LIVE) continue;
      if (above(this.words[b + W.deadlineHi], this.words[b + W.deadlineLo], nHi, nLo)) continue; // deadline > now: running
      this.remove(s);
      swept++;
    }
    this.recount();
    return swept;
  }

  /** Every LIVE entry as packed tuple keys and godwit_lock_value leases (the codec decodes both). */
  entries(): PackedEntries {
    const ks = TUPLE_KEY_LAYOUT.size;
    const vs = LOCK_VALUE_LAYOUT.size;
    const slots: number[] = [];
    for (let s = 0; s < this.shape.slots; s++) if (this.words[s * SLOT_WORDS] === SLOT_LIVE) slots.push(s);
    const keys = Buffer.alloc(slots.length * ks);
    const values = Buffer.alloc(slots.length * vs);
    slots.forEach((s, i) => {
      const at = s * CONN_SLOT_BYTES;
      this.bytes.copy(keys, i * ks, at + KEY_BYTE, at + KEY_BYTE + ks);
      this.bytes.copy(values, i * vs, at + LEASE_BYTE, at + LEASE_BYTE + vs);
    });
    return { keys, values, count: slots.length };
  }

  private keyIs(s: number, k: Uint32Array, at: number): boolean {
    const b = s * SLOT_WORDS + W.key;
    const w = this.words;
    return w[b] === k[at] && w[b + 1] === k[at + 1] && w[b + 2] === k[at + 2] && w[b + 3] === k[at + 3];
  }

  /**
   * Marks LIVE slot s DELETED. If the run of DELETED slots through s ends at an EMPTY slot, no
   * probe needs any of them any more: they become EMPTY, the last first, so that a table whose
   * entries are all unlocked is all EMPTY again and probes stay short.
   */
  private remove(s: number): void {
    const { words, mask } = this;
    Atomics.store(words, s * SLOT_WORDS, SLOT_DELETED);
    this.live--;
    let end = s;
    for (let steps = 0; words[((end + 1) & mask) * SLOT_WORDS] === SLOT_DELETED; steps++) {
      if (steps > mask) return; // every slot DELETED: nothing EMPTY to end the run
      end = (end + 1) & mask;
    }
    if (words[((end + 1) & mask) * SLOT_WORDS] !== SLOT_EMPTY) return;
    for (let j = end, steps = 0; words[j * SLOT_WORDS] === SLOT_DELETED && steps <= mask; j = (j - 1) & mask, steps++) Atomics.store(words, j * SLOT_WORDS, SLOT_EMPTY);
  }
}

function keyCount(keys: Uint32Array): number {
  if (keys.length % KEY_WORDS !== 0) throw new RangeError(`${keys.length} words are not whole ${KEY_WORDS}-word keys`);
  return keys.length / KEY_WORDS;
}
