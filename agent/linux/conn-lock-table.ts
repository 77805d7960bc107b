import { bpfMapAddon, type BpfMapAddon } from './bpf/native-map.js';
import { CONN_SLOT_LAYOUT, LOCK_VALUE_LAYOUT, TUPLE_KEY_LAYOUT, type KeptNewer } from './lock-map-codec.js';
import type { PackedEntries } from './bpf/map-access.js';

/*
 * godwit_lock_conn, the exact-connection lock, as the agent sees it: an open-addressing hash
 * table with linear probing in an mmappable BPF array, shared with the XDP program, which only
 * reads it (bpf/lock_maps.h explains the table; bpf/lock.c's conn_lease() is its lookup).
 *
 * Every write goes through the native addon (native/bpfmap/conn_table.c), which holds the
 * rules that keep the kernel's concurrent lookups right, and hashes with the header's own
 * godwit_conn_hash: one copy of the table's logic, in C next to the program's. A lock or unlock
 * is a few loads and stores per connection in this process's memory, no system call. The
 * memory is the state, so there is nothing to keep in sync: a restarted agent maps the pinned
 * table and carries on. This side only reads (entries, counts) and keeps the count of entries.
 *
 * This must be the table's only writer on the host, one call at a time (EbpfNetLock runs one
 * operation at a time). Two instances over the same memory (tests, a restarted agent) each
 * count what they see when made; recount() catches up with the other's writes.
 */

/** What a table is: bpf/lock_maps.h's GODWIT_CONN_* for the real one; smaller ones in tests. */
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

/** sizeof(struct godwit_conn_slot): u32 state, u32 pad, the 16-byte tuple key, the 32-byte lease. */
export const CONN_SLOT_BYTES = CONN_SLOT_LAYOUT.size;
const SLOT_WORDS = CONN_SLOT_BYTES / 4;
/** Byte offsets of the key and the lease in a slot. */
const KEY_BYTE = slotMemberOffset('key');
const LEASE_BYTE = slotMemberOffset('lease');

function slotMemberOffset(name: string): number {
  const m = CONN_SLOT_LAYOUT.members.find((x) => x.name === name);
  if (!m) throw new Error(`${CONN_SLOT_LAYOUT.name} has no member ${name}`);
  return m.offset;
}

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

/** godwit_conn_hash of one packed 16-byte tuple key (its home slot is this masked). */
export function connHash(key: Uint8Array): number {
  return bpfMapAddon().connHash(key);
}

export class ConnLockTable {
  private readonly addon: BpfMapAddon;
  private readonly states: Uint32Array;
  private readonly bytes: Buffer;
  private live = 0;

  /** `memory`: the table's values (mapPinnedArray), or any zeroed buffer of the shape in tests. */
  constructor(
    private readonly memory: ArrayBuffer,
    readonly shape: ConnTableShape = CONN_TABLE_SHAPE,
  ) {
    const { slots, maxEntries, maxProbe } = shape;
    if (!Number.isInteger(slots) || slots < 2 || (slots & (slots - 1)) !== 0) throw new RangeError(`${slots} slots: must be a power of two`);
    if (maxEntries < 1 || maxEntries > slots || maxProbe < 1 || maxProbe > slots) throw new RangeError(`table shape ${JSON.stringify(shape)} is inconsistent`);
    if (memory.byteLength < slots * CONN_SLOT_BYTES) throw new RangeError(`${memory.byteLength} bytes hold fewer than ${slots} slots of ${CONN_SLOT_BYTES}`);
    this.addon = bpfMapAddon();
    this.states = new Uint32Array(memory, 0, slots * SLOT_WORDS);
    this.bytes = Buffer.from(memory, 0, slots * CONN_SLOT_BYTES);
    this.recount();
  }

  /** LIVE entries, as counted at the last recount() plus this object's own writes since. */
  get size(): number {
    return this.live;
  }

  /** Counts the LIVE slots again. */
  recount(): number {
    let live = 0;
    for (let b = 0; b < this.states.length; b += SLOT_WORDS) if (this.states[b] === SLOT_LIVE) live++;
    this.live = live;
    return live;
  }

  /** A slot's state (GODWIT_SLOT_*). */
  stateOf(slot: number): number {
    return this.states[slot * SLOT_WORDS];
  }

  /**
   * Locks every key (packed tuple keys) with this version until deadlineNs: a new entry, or the
   * existing one re-leased, unless it holds a newer version (then kept, reported). Re-leasing
   * keeps the entry's drop counters. All or nothing: when the table has no room for some key,
   * what this call wrote is undone and ConnTableFullError thrown.
   */
  lock(keys: Uint8Array, version: bigint, deadlineNs: bigint): { locked: number; keptNewer: KeptNewer[] } {
    const { slots, maxProbe, maxEntries } = this.shape;
    try {
      const r = this.addon.connLock(this.memory, slots, maxProbe, Math.max(0, maxEntries - this.live), keys, version, deadlineNs);
      this.live += r.inserted;
      return { locked: r.locked, keptNewer: r.keptNewer };
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (code === 'ENTRIES') throw new ConnTableFullError('entries', maxEntries);
      if (code === 'PROBE') throw new ConnTableFullError('probe', maxProbe);
      throw err;
    }
  }

  /** Removes the entry of every key whose version is not newer than `version`; keys not held are skipped. */
  unlock(keys: Uint8Array, version: bigint): { unlocked: number; keptNewer: KeptNewer[] } {
    const r = this.addon.connUnlock(this.memory, this.shape.slots, this.shape.maxProbe, keys, version);
    this.live -= r.unlocked;
    return r;
  }

  /** Removes every entry whose lease has run out at monotonic time nowNs (exclusive, as the program); returns how many. Recounts. */
  sweepExpired(nowNs: bigint): number {
    const swept = this.addon.connSweep(this.memory, this.shape.slots, nowNs);
    this.recount();
    return swept;
  }

  /** Every LIVE entry as packed tuple keys and godwit_lock_value leases (the codec decodes both). */
  entries(): PackedEntries {
    const ks = TUPLE_KEY_LAYOUT.size;
    const vs = LOCK_VALUE_LAYOUT.size;
    const slots: number[] = [];
    for (let s = 0; s < this.shape.slots; s++) if (this.stateOf(s) === SLOT_LIVE) slots.push(s);
    const keys = Buffer.alloc(slots.length * ks);
    const values = Buffer.alloc(slots.length * vs);
    slots.forEach((s, i) => {
      const at = s * CONN_SLOT_BYTES;
      this.bytes.copy(keys, i * ks, at + KEY_BYTE, at + KEY_BYTE + ks);
      this.bytes.copy(values, i * vs, at + LEASE_BYTE, at + LEASE_BYTE + vs);
    });
    return { keys, values, count: slots.length };
  }

  /** The slot holding the LIVE entry of this one packed key, or -1 (a scan: for tests and inspection, not the hot path). */
  slotOf(key: Uint8Array): number {
    const want = Buffer.from(key.buffer, key.byteOffset, TUPLE_KEY_LAYOUT.size);
    for (let s = 0; s < this.shape.slots; s++) {
      const at = s * CONN_SLOT_BYTES + KEY_BYTE;
      if (this.stateOf(s) === SLOT_LIVE && want.equals(this.bytes.subarray(at, at + TUPLE_KEY_LAYOUT.size))) return s;
    }
    return -1;
  }
}
