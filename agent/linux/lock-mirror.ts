import { hashKeyWords, joinU64, keyWords, LOCK_VALUE_LAYOUT, splitU64, VALUE_WORD, type HeldVersions } from './lock-map-codec.js';
import type { PackedEntries } from './bpf/map-access.js';

/*
 * What one pinned lock map holds, as the agent last wrote or read it: key -> version and
 * deadline. The version guard of every lock and unlock is checked here instead of against a
 * dump of the map, so an operation costs one batch write and no batch read (reading back
 * 10,000 entries costs the kernel about as much as deleting them: 2-3 ms on this machine kind).
 *
 * Why the mirror can stand in for the map:
 * - The agent is the maps' only writer of keys and versions. The XDP program (bpf/lock.c) only
 *   adds to drops/last_drop_ns in values it finds; it never creates, deletes or re-versions an
 *   entry. Neither does the kernel: a hash map never evicts.
 * - EbpfNetLock runs one operation at a time, and records a write here only after the kernel
 *   took all of it. A write that failed part way leaves the map unknown, so the mirror is
 *   reloaded from a dump before the error goes on.
 * - Whatever else changes the map (an operator's bpftool, a second agent process, a lab's
 *   clean-up) is found by the dump sweepExpired() makes every second anyway: it compares, logs a
 *   difference, and reloads. A pin that names another map than the mirror was loaded from (the
 *   lock reinstalled from scratch) is refused at the write by its kernel map id (native access).
 *
 * Drop counters are not mirrored: they change with every dropped packet, and the lock paths do
 * not need them (list() and listTuples() read the map).
 *
 * Keys are kept as u32 words, found through an open-addressing table: no string or object per
 * key. Measured here for 10,000 keys: recording them 0.3 ms and planning an unlock 0.5 ms; a
 * Map keyed by latin1 strings of the same bytes took 3 ms and 2 ms.
 */

/** How a dump differs from the mirror; all zero when they agree. */
export interface MirrorDifference {
  /** Entries in the map that the mirror does not have. */
  unknown: number;
  /** Entries in the mirror that the map does not have. */
  missing: number;
  /** Entries in both whose version or deadline differ. */
  changed: number;
}

/** Entries the mirror makes room for at first; it doubles whenever it is full. */
const MIN_CAPACITY = 512;

/*
 * Layout, chosen for the CPU cache (the kernel's batch work just before or after a lookup
 * evicts most of it): entries sit densely, in the order they were written, one record of u32
 * words each (hash, version low/high, deadline low/high, then the key); a separate table of
 * slots finds them (linear probing, at most half full), each slot two words: entry index + 1
 * and the key's hash, so a probe past another key rarely has to read that key's entry. A lock
 * request names its keys in much the order an earlier lock wrote them, so lookups walk the
 * entries nearly in sequence. Whole records in the probe table made planning an unlock of
 * 10,000 keys about twice as slow here; without the hash in the slot, an unlock of 100,000
 * planned a third slower.
 */
const HASH = 0;
const V_LO = 1;
const V_HI = 2;
const D_LO = 3;
const D_HI = 4;
const KEY = 5;

export class LockMirror implements HeldVersions {
  private readonly perKey: number;
  /** Words per entry. */
  private readonly stride: number;
  /** Per slot: entry index + 1 (0: empty), then the key's hash. */
  private slots = new Uint32Array(0);
  private mask = 0;
  private entries = new Uint32Array(0);
  private capacity = 0;
  private count = 0;
  /**
   * The kernel id of the map the mirror was loaded from, when the map access tells it: writes
   * planned from the mirror are refused by a pin that names another map.
   */
  mapId: number | undefined;

  constructor(
    readonly keySize: number,
    held?: PackedEntries,
    mapId?: number,
  ) {
    if (keySize <= 0 || keySize % 4 !== 0) throw new RangeError(`mirror key size ${keySize} is not a positive multiple of 4`);
    this.perKey = keySize / 4;
    this.stride = KEY + this.perKey;
    this.resize(MIN_CAPACITY, false);
    if (held) this.reset(held, mapId);
  }

  /** How many entries are held. */
  get size(): number {
    return this.count;
  }

  /** find() answers entry indexes, below the number of entries. */
  get slotCount(): number {
    return this.count;
  }

  find(keys: Uint32Array, at: number): number {
    const { perKey, stride, slots, entries, mask } = this;
    const hash = hashKeyWords(keys, at, perKey);
    for (let slot = hash & mask; ; slot = (slot + 1) & mask) {
      const e = slots[2 * slot] - 1;
      if (e < 0) return -1;
      if (slots[2 * slot + 1] !== hash) continue;
      const base = e * stride + KEY;
      let w = 0;
      while (w < perKey && entries[base + w] === keys[at + w]) w++;
      if (w === perKey) return e;
    }
  }

  versionHi(entry: number): number {
    return this.entries[entry * this.stride + V_HI];
  }

  versionLo(entry: number): number {
    return this.entries[entry * this.stride + V_LO];
  }

  version(entry: number): bigint {
    return joinU64(this.versionHi(entry), this.versionLo(entry));
  }

  deadlineNs(entry: number): bigint {
    return joinU64(this.entries[entry * this.stride + D_HI], this.entries[entry * this.stride + D_LO]);
  }

  /** The entry of a key (keySize bytes), or undefined. */
  get(key: Buffer): { version: bigint; deadlineNs: bigint } | undefined {
    if (key.length !== this.keySize) throw new RangeError(`mirror key: ${key.length} bytes, expected ${this.keySize}`);
    const e = this.find(keyWords(key), 0);
    return e < 0 ? undefined : { version: this.version(e), deadlineNs: this.deadlineNs(e) };
  }

  /** Replaces everything with a dump of the map (mapId: the map it came from). */
  reset(held: PackedEntries, mapId?: number): void {
    let capacity = MIN_CAPACITY;
    while (capacity < held.count) capacity *= 2;
    this.resize(capacity, false);
    this.mapId = mapId;
    const keys = keyWords(held.keys);
    const values = keyWords(held.values);
    const vw = LOCK_VALUE_LAYOUT.size / 4;
    for (let h = 0; h < held.count; h++) {
      const v = h * vw;
      this.put(keys, h * this.perKey, values[v + VALUE_WORD.version + 1], values[v + VALUE_WORD.version], values[v + VALUE_WORD.deadlineNs + 1], values[v + VALUE_WORD.deadlineNs]);
    }
  }

  /** Records a batch update the kernel took: every key now holds version and deadlineNs. */
  record(keys: Buffer, version: bigint, deadlineNs: bigint): void {
    const n = this.keysIn(keys);
    if (this.count + n > this.capacity) {
      let capacity = this.capacity;
      while (capacity < this.count + n) capacity *= 2;
      this.resize(capacity, true);
    }
    const [vHi, vLo] = splitU64(version);
    const [dHi, dLo] = splitU64(deadlineNs);
    const words = keyWords(keys);
    for (let i = 0; i < n; i++) this.put(words, i * this.perKey, vHi, vLo, dHi, dLo);
  }

  /** Records a batch delete the kernel took; keys the mirror does not hold are skipped. */
  forget(keys: Buffer): void {
    const n = this.keysIn(keys);
    const words = keyWords(keys);
    for (let i = 0; i < n; i++) {
      const e = this.find(words, i * this.perKey);
      if (e >= 0) this.remove(e);
    }
  }

  /** How many held entries have a key that `test` accepts (given the key's u32 words and where it starts). */
  countKeys(test: (words: Uint32Array, at: number) => boolean): number {
    let n = 0;
    for (let e = 0; e < this.count; e++) if (test(this.entries, e * this.stride + KEY)) n++;
    return n;
  }

  /** Records that the map holds nothing any more (an unlock of every entry): cheaper than forgetting each key. */
  clear(): void {
    if (this.count === 0) return;
    this.slots.fill(0);
    this.count = 0;
  }

  /** How a dump of the map differs from the mirror (versions and deadlines; drops are not compared). */
  differences(held: PackedEntries): MirrorDifference {
    const keys = keyWords(held.keys);
    const values = keyWords(held.values);
    const vw = LOCK_VALUE_LAYOUT.size / 4;
    const t = this.entries;
    let unknown = 0;
    let changed = 0;
    for (let h = 0; h < held.count; h++) {
      const e = this.find(keys, h * this.perKey);
      if (e < 0) {
        unknown++;
        continue;
      }
      const v = h * vw;
      const r = e * this.stride;
      if (
        t[r + V_LO] !== values[v + VALUE_WORD.version] ||
        t[r + V_HI] !== values[v + VALUE_WORD.version + 1] ||
        t[r + D_LO] !== values[v + VALUE_WORD.deadlineNs] ||
        t[r + D_HI] !== values[v + VALUE_WORD.deadlineNs + 1]
      )
        changed++;
    }
    return { unknown, missing: this.count - (held.count - unknown), changed };
  }

  private keysIn(keys: Buffer): number {
    if (keys.length % this.keySize !== 0) throw new RangeError(`mirror: ${keys.length} bytes are not whole ${this.keySize}-byte keys`);
    return keys.length / this.keySize;
  }

  /** Sets key words[at..] to the version and deadline (u32 halves), adding it if new (room for it is made by the caller). */
  private put(words: Uint32Array, at: number, vHi: number, vLo: number, dHi: number, dLo: number): void {
    const { perKey, stride, slots, entries, mask } = this;
    const hash = hashKeyWords(words, at, perKey);
    let slot = hash & mask;
    let e = -1;
    for (; slots[2 * slot] !== 0; slot = (slot + 1) & mask) {
      if (slots[2 * slot + 1] !== hash) continue;
      const base = (slots[2 * slot] - 1) * stride + KEY;
      let w = 0;
      while (w < perKey && entries[base + w] === words[at + w]) w++;
      if (w === perKey) {
        e = slots[2 * slot] - 1;
        break;
      }
    }
    if (e < 0) {
      e = this.count++;
      slots[2 * slot] = e + 1;
      slots[2 * slot + 1] = hash;
      entries[e * stride + HASH] = hash;
      for (let w = 0; w < perKey; w++) entries[e * stride + KEY + w] = words[at + w];
    }
    const r = e * stride;
    entries[r + V_LO] = vLo;
    entries[r + V_HI] = vHi;
    entries[r + D_LO] = dLo;
    entries[r + D_HI] = dHi;
  }

  /** The slot that points at entry e. */
  private slotOf(e: number): number {
    let slot = this.entries[e * this.stride + HASH] & this.mask;
    while (this.slots[2 * slot] !== e + 1) slot = (slot + 1) & this.mask;
    return slot;
  }

  /**
   * Removes entry e: its slot is emptied and later slots of its probe run move back so every key
   * stays findable; the last entry moves into its place so the entries stay dense.
   */
  private remove(e: number): void {
    const { slots, entries, stride, mask } = this;
    let hole = this.slotOf(e);
    for (let next = (hole + 1) & mask; slots[2 * next] !== 0; next = (next + 1) & mask) {
      const home = slots[2 * next + 1] & mask;
      // The entry at `next` may move into the hole unless its home lies cyclically in (hole, next].
      const stays = hole <= next ? home > hole && home <= next : home > hole || home <= next;
      if (stays) continue;
      slots[2 * hole] = slots[2 * next];
      slots[2 * hole + 1] = slots[2 * next + 1];
      hole = next;
    }
    slots[2 * hole] = 0;
    const last = --this.count;
    if (e === last) return;
    slots[2 * this.slotOf(last)] = e + 1;
    entries.copyWithin(e * stride, last * stride, (last + 1) * stride);
  }

  /** Room for `capacity` entries, with the current ones unless `keep` is false. */
  private resize(capacity: number, keep: boolean): void {
    const old = this.entries;
    this.capacity = capacity;
    this.entries = new Uint32Array(capacity * this.stride);
    this.slots = new Uint32Array(capacity * 4); // twice as many slots as entries, two words each
    this.mask = capacity * 2 - 1;
    if (!keep) {
      this.count = 0;
      return;
    }
    this.entries.set(old.subarray(0, this.count * this.stride));
    for (let e = 0; e < this.count; e++) {
      const hash = this.entries[e * this.stride + HASH];
      let slot = hash & this.mask;
      while (this.slots[2 * slot] !== 0) slot = (slot + 1) & this.mask;
      this.slots[2 * slot] = e + 1;
      this.slots[2 * slot + 1] = hash;
    }
  }
}
