import { isIPv4 } from 'node:net';
import { ANY_PORT, type Endpoint } from '../../lib/endpoint.js';
import type { FourTuple } from '../netlock.js';
import type { PackedEntries } from './bpf/map-access.js';
import type { StructLayout } from './bpf/struct-layout.js';

/*
 * Byte layout of the lock maps (bpf/lock_maps.h), for user space, and the version-guarded
 * lock/unlock decisions over whole packed batches of entries. Pure: no I/O.
 *
 * The header is the source of truth; test/unit/lock-map-codec.test.ts checks these layouts
 * against the compiled object's BTF, and the driver checks them against a pinned map's BTF
 * before reusing it.
 */

/**
 * GODWIT_LOCK_LAYOUT_VERSION in bpf/lock_maps.h (2: the tuple map was added; 3: the held-packet
 * ring; 4: the connection table replaced the tuple map). Since 4, each map has its own version
 * (lock-maps.ts), recorded per host by bpf/layout-record.ts.
 */
export const LOCK_LAYOUT_VERSION = 4;
/** Map name in bpf/lock.c; also the file name bpftool pins it under. */
export const LOCK_MAP_NAME = 'godwit_lock_ep';
/** GODWIT_LOCK_EP_MAX_ENTRIES in bpf/lock_maps.h. */
export const LOCK_MAP_MAX_ENTRIES = 65536;
/** The table of exact-connection entries in bpf/lock.c (agent/linux/conn-lock-table.ts); bpftool pins it under this full name. */
export const LOCK_CONN_MAP_NAME = 'godwit_lock_conn';
/**
 * Layouts 2 and 3 kept exact-connection entries in this hash map (16-byte tuple key, 32-byte
 * lease, LEGACY_TUPLE_MAP_MAX_ENTRIES); install copies a pinned one's live entries into the
 * connection table and removes it.
 */
export const LEGACY_TUPLE_MAP_NAME = 'godwit_lock_tuple';
export const LEGACY_TUPLE_MAP_MAX_ENTRIES = 131072;

export const ENDPOINT_KEY_LAYOUT: StructLayout = {
  name: 'godwit_endpoint_key',
  size: 8,
  members: [
    { name: 'addr', offset: 0, size: 4 },
    { name: 'port', offset: 4, size: 2 },
    { name: 'proto', offset: 6, size: 1 },
    { name: 'pad', offset: 7, size: 1 },
  ],
};

export const LOCK_VALUE_LAYOUT: StructLayout = {
  name: 'godwit_lock_value',
  size: 32,
  members: [
    { name: 'version', offset: 0, size: 8 },
    { name: 'deadline_ns', offset: 8, size: 8 },
    { name: 'drops', offset: 16, size: 8 },
    { name: 'last_drop_ns', offset: 24, size: 8 },
  ],
};

export const TUPLE_KEY_LAYOUT: StructLayout = {
  name: 'godwit_tuple_key',
  size: 16,
  members: [
    { name: 'saddr', offset: 0, size: 4 },
    { name: 'daddr', offset: 4, size: 4 },
    { name: 'sport', offset: 8, size: 2 },
    { name: 'dport', offset: 10, size: 2 },
    { name: 'proto', offset: 12, size: 1 },
    { name: 'pad', offset: 13, size: 3 },
  ],
};

/** One slot of godwit_lock_conn (conn-lock-table.ts reads and writes it by these offsets). */
export const CONN_SLOT_LAYOUT: StructLayout = {
  name: 'godwit_conn_slot',
  size: 56,
  members: [
    { name: 'state', offset: 0, size: 4 },
    { name: 'pad', offset: 4, size: 4 },
    { name: 'key', offset: 8, size: TUPLE_KEY_LAYOUT.size },
    { name: 'lease', offset: 24, size: LOCK_VALUE_LAYOUT.size },
  ],
};

/** struct godwit_lock_value, decoded. */
export interface LockValue {
  version: bigint;
  /** CLOCK_MONOTONIC ns; the program drops only while now < deadlineNs. */
  deadlineNs: bigint;
  drops: bigint;
  lastDropNs: bigint;
}

/** Linux IPPROTO_* numbers, as in the key's proto byte. */
const IPPROTO: Record<Endpoint['proto'], number> = { tcp: 6, udp: 17 };

function offsetOf(layout: StructLayout, member: string): number {
  const m = layout.members.find((x) => x.name === member);
  if (!m) throw new Error(`${layout.name} has no member ${member}`);
  return m.offset;
}

const KEY = {
  addr: offsetOf(ENDPOINT_KEY_LAYOUT, 'addr'),
  port: offsetOf(ENDPOINT_KEY_LAYOUT, 'port'),
  proto: offsetOf(ENDPOINT_KEY_LAYOUT, 'proto'),
  pad: offsetOf(ENDPOINT_KEY_LAYOUT, 'pad'),
};

const TUPLE = {
  saddr: offsetOf(TUPLE_KEY_LAYOUT, 'saddr'),
  daddr: offsetOf(TUPLE_KEY_LAYOUT, 'daddr'),
  sport: offsetOf(TUPLE_KEY_LAYOUT, 'sport'),
  dport: offsetOf(TUPLE_KEY_LAYOUT, 'dport'),
  proto: offsetOf(TUPLE_KEY_LAYOUT, 'proto'),
  pad: offsetOf(TUPLE_KEY_LAYOUT, 'pad'),
};

/** The u32 word of an endpoint key whose low half is the port. */
const PORT_WORD = KEY.port / 4;
if (KEY.port % 4 !== 0) throw new Error('lock key layout: the port must start a u32 word');

const VALUE = {
  version: offsetOf(LOCK_VALUE_LAYOUT, 'version'),
  deadlineNs: offsetOf(LOCK_VALUE_LAYOUT, 'deadline_ns'),
  drops: offsetOf(LOCK_VALUE_LAYOUT, 'drops'),
  lastDropNs: offsetOf(LOCK_VALUE_LAYOUT, 'last_drop_ns'),
};

/**
 * Address and port in network byte order, every byte (the pad too) written: the kernel hashes all 8.
 * Port ANY_PORT (0) is an address-wide entry (lib/endpoint.ts); which ports a caller may ask for
 * is checked above this layer (lockEndpointProblem), the layout holds any u16.
 */
export function encodeEndpointKey(e: Endpoint): Buffer {
  if (!isIPv4(e.address)) throw new RangeError(`lock key: "${e.address}" is not an IPv4 address`);
  if (!Number.isInteger(e.port) || e.port < ANY_PORT || e.port > 0xffff) throw new RangeError(`lock key: port ${e.port} is not 1-65535 (or ${ANY_PORT}: every port)`);
  const proto = IPPROTO[e.proto];
  if (proto === undefined) throw new RangeError(`lock key: proto "${e.proto}" is not tcp or udp`);
  const b = Buffer.alloc(ENDPOINT_KEY_LAYOUT.size);
  e.address.split('.').forEach((octet, i) => b.writeUInt8(Number(octet), KEY.addr + i));
  b.writeUInt16BE(e.port, KEY.port);
  b.writeUInt8(proto, KEY.proto);
  b.writeUInt8(0, KEY.pad);
  return b;
}

/**
 * Whether the endpoint key at words[at..] (keyWords(): u32 words in this host's byte order,
 * little endian) is address-wide: its port, bytes 4-5 of the key, is ANY_PORT (0).
 */
export function isAddressWideKey(words: Uint32Array, at: number): boolean {
  return (words[at + PORT_WORD] & 0xffff) === ANY_PORT;
}

export function decodeEndpointKey(b: Buffer): Endpoint {
  if (b.length !== ENDPOINT_KEY_LAYOUT.size) throw new RangeError(`lock key: ${b.length} bytes, expected ${ENDPOINT_KEY_LAYOUT.size}`);
  const protoNumber = b.readUInt8(KEY.proto);
  const proto = (Object.keys(IPPROTO) as Endpoint['proto'][]).find((p) => IPPROTO[p] === protoNumber);
  if (!proto) throw new RangeError(`lock key: IP protocol ${protoNumber} is neither TCP nor UDP`);
  const address = [0, 1, 2, 3].map((i) => b.readUInt8(KEY.addr + i)).join('.');
  return { proto, address, port: b.readUInt16BE(KEY.port) };
}

/** Packs endpoint keys back to back, as the kernel's batch calls take them. */
export function encodeEndpointKeys(endpoints: readonly Endpoint[]): Buffer {
  return Buffer.concat(endpoints.map(encodeEndpointKey), endpoints.length * ENDPOINT_KEY_LAYOUT.size);
}

/**
 * Writes dotted-quad `text` into b[at..at+4] (network order) and returns true, or returns false
 * if it is not an IPv4 address in the form node:net's isIPv4 accepts (no leading zeros).
 * Hand-rolled: a lock of 100,000 tuples parses 200,000 addresses.
 */
function writeIPv4(text: string, b: Buffer, at: number): boolean {
  if (typeof text !== 'string' || text.length < 7 || text.length > 15) return false;
  let octet = 0;
  let digits = 0;
  let index = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 46 /* . */) {
      if (digits === 0 || index === 3) return false;
      b[at + index++] = octet;
      octet = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      if (digits > 0 && octet === 0) return false; // a leading zero
      octet = octet * 10 + (c - 48);
      if (octet > 255) return false;
      digits++;
    } else {
      return false;
    }
  }
  if (digits === 0 || index !== 3) return false;
  b[at + 3] = octet;
  return true;
}

function isPort(p: number): boolean {
  return Number.isInteger(p) && p >= 1 && p <= 0xffff;
}

/**
 * The local address of the tuple last written, and where its bytes are: the connections of one
 * request mostly share the workload's address, so it is parsed once (a string compare is cheaper).
 */
interface LocalAddressMemo {
  text: string;
  at: number;
}

/** Why tuple `t` cannot be a lock key, or undefined; written into b at `at` when it can. */
function writeTupleKey(t: FourTuple, b: Buffer, at: number, local?: LocalAddressMemo): string | undefined {
  if (t === null || typeof t !== 'object') return 'not a 4-tuple object';
  const proto = t.proto === 'tcp' ? IPPROTO.tcp : t.proto === 'udp' ? IPPROTO.udp : undefined;
  if (proto === undefined) return `proto "${String(t.proto)}" is not tcp or udp`;
  if (!writeIPv4(t.remoteAddress, b, at + TUPLE.saddr)) return `remoteAddress "${String(t.remoteAddress)}" is not an IPv4 address`;
  const d = at + TUPLE.daddr;
  if (local && local.at >= 0 && t.localAddress === local.text) {
    const from = local.at;
    b[d] = b[from];
    b[d + 1] = b[from + 1];
    b[d + 2] = b[from + 2];
    b[d + 3] = b[from + 3];
  } else if (!writeIPv4(t.localAddress, b, d)) {
    return `localAddress "${String(t.localAddress)}" is not an IPv4 address`;
  } else if (local) {
    local.text = t.localAddress;
    local.at = d;
  }
  if (!isPort(t.remotePort)) return `remotePort ${String(t.remotePort)} is not 1-65535`;
  if (!isPort(t.localPort)) return `localPort ${String(t.localPort)} is not 1-65535`;
  b[at + TUPLE.sport] = t.remotePort >>> 8;
  b[at + TUPLE.sport + 1] = t.remotePort & 0xff;
  b[at + TUPLE.dport] = t.localPort >>> 8;
  b[at + TUPLE.dport + 1] = t.localPort & 0xff;
  b[at + TUPLE.proto] = proto;
  b[at + TUPLE.pad] = 0;
  b[at + TUPLE.pad + 1] = 0;
  b[at + TUPLE.pad + 2] = 0;
  return undefined;
}

/**
 * The key of a connection's packets as they arrive at the host: the remote end is the source,
 * the local end the destination. Addresses and ports in network byte order, the pad zeroed.
 */
export function encodeTupleKey(t: FourTuple): Buffer {
  const b = Buffer.alloc(TUPLE_KEY_LAYOUT.size);
  const problem = writeTupleKey(t, b, 0);
  if (problem) throw new RangeError(`lock tuple: ${problem}`);
  return b;
}

/** Packs tuple keys back to back; a RangeError names the first bad tuple by its index. */
export function encodeTupleKeys(tuples: readonly FourTuple[]): Buffer {
  const size = TUPLE_KEY_LAYOUT.size;
  const b = Buffer.allocUnsafe(tuples.length * size);
  const local: LocalAddressMemo = { text: '', at: -1 };
  for (let i = 0; i < tuples.length; i++) {
    const problem = writeTupleKey(tuples[i], b, i * size, local);
    if (problem) throw new RangeError(`lock tuple ${i}: ${problem}`);
  }
  return b;
}

/** Reads the tuple key at b[at..at+16]. */
export function decodeTupleKey(b: Buffer, at = 0): FourTuple {
  if (b.length < at + TUPLE_KEY_LAYOUT.size) throw new RangeError(`lock tuple key: ${b.length - at} bytes, expected ${TUPLE_KEY_LAYOUT.size}`);
  const protoNumber = b[at + TUPLE.proto];
  const proto = protoNumber === IPPROTO.tcp ? 'tcp' : protoNumber === IPPROTO.udp ? 'udp' : undefined;
  if (!proto) throw new RangeError(`lock tuple key: IP protocol ${protoNumber} is neither TCP nor UDP`);
  const s = at + TUPLE.saddr;
  const d = at + TUPLE.daddr;
  return {
    proto,
    localAddress: `${b[d]}.${b[d + 1]}.${b[d + 2]}.${b[d + 3]}`,
    localPort: (b[at + TUPLE.dport] << 8) | b[at + TUPLE.dport + 1],
    remoteAddress: `${b[s]}.${b[s + 1]}.${b[s + 2]}.${b[s + 3]}`,
    remotePort: (b[at + TUPLE.sport] << 8) | b[at + TUPLE.sport + 1],
  };
}

/**
 * u64 fields in host byte order. The lock runs on x86_64 (little-endian; the BPF object is
 * built for the host's endianness with -target bpf), so little-endian here.
 */
export function encodeLockValue(v: LockValue): Buffer {
  const b = Buffer.alloc(LOCK_VALUE_LAYOUT.size);
  b.writeBigUInt64LE(v.version, VALUE.version);
  b.writeBigUInt64LE(v.deadlineNs, VALUE.deadlineNs);
  b.writeBigUInt64LE(v.drops, VALUE.drops);
  b.writeBigUInt64LE(v.lastDropNs, VALUE.lastDropNs);
  return b;
}

export function decodeLockValue(b: Buffer): LockValue {
  if (b.length !== LOCK_VALUE_LAYOUT.size) throw new RangeError(`lock value: ${b.length} bytes, expected ${LOCK_VALUE_LAYOUT.size}`);
  return decodeLockValueAt(b, 0);
}

/** The value at b[at..at+32] of a packed value buffer. */
export function decodeLockValueAt(b: Buffer, at: number): LockValue {
  return {
    version: b.readBigUInt64LE(at + VALUE.version),
    deadlineNs: b.readBigUInt64LE(at + VALUE.deadlineNs),
    drops: b.readBigUInt64LE(at + VALUE.drops),
    lastDropNs: b.readBigUInt64LE(at + VALUE.lastDropNs),
  };
}

/* ---- Version-guarded writes over packed batches ------------------------------------------ */

/**
 * Entries of one lock map packed back to back, as BPF_MAP_LOOKUP_BATCH returns them and
 * BPF_MAP_UPDATE_BATCH takes them: count keys of the map's key size, count 32-byte values.
 */
/** A requested key that an entry with a newer version keeps: `index` into the request. */
export interface KeptNewer {
  index: number;
  heldVersion: bigint;
}

export interface LockPlan {
  /** What to write (one batch update): keys and their new values. */
  writes: PackedEntries;
  keptNewer: KeptNewer[];
}

export interface UnlockPlan {
  /** What to delete (one batch delete): keys of held entries. */
  deletes: Buffer;
  count: number;
  keptNewer: KeptNewer[];
}

/**
 * The entries a plan is made against, found by key: a dump of the map (heldEntries()) or the
 * agent's mirror of it (lock-mirror.ts). A plan only reads it.
 */
export interface HeldVersions {
  /** How many entries are held. */
  readonly size: number;
  /** find() returns slots below this. */
  readonly slotCount: number;
  /** The slot of the entry whose key is keys[at..] (u32 words, see keyWords()), or -1. */
  find(keys: Uint32Array, at: number): number;
  /** High and low u32 of the version of the entry in a slot. */
  versionHi(slot: number): number;
  versionLo(slot: number): number;
}

/*
 * Keys are compared as u32 words (both key sizes are multiples of 4) through small
 * open-addressing hash tables: building a string per key costs more than the bpf(2) batch that
 * writes it (10,000 keys: about 1.5 ms of strings against 3 ms of kernel work, measured here).
 */

/** The u32 words of packed keys (or values), without a copy when b is 4-byte aligned. */
export function keyWords(b: Buffer): Uint32Array {
  if (b.byteOffset % 4 !== 0) b = Buffer.from(b); // a slice at an odd offset; a copy starts aligned
  return new Uint32Array(b.buffer, b.byteOffset, b.length >>> 2);
}

/** A 32-bit hash of the perKey u32 words at k[at..]; tables take its low bits. */
export function hashKeyWords(k: Uint32Array, at: number, perKey: number): number {
  let h = 0x9e3779b9;
  for (let w = 0; w < perKey; w++) {
    h = Math.imul(h ^ k[at + w], 0x85ebca6b);
    h ^= h >>> 15;
  }
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** A set of the distinct keys in a packed key buffer, each found by its first index. */
class PackedKeyIndex {
  private readonly keys: Uint32Array;
  private readonly perKey: number;
  /** Index + 1 of a key in `keys`, 0 for an empty slot. */
  private readonly slots: Int32Array;
  private readonly mask: number;
  /** Index of the first copy of each key (itself when it is the first). */
  readonly firstOf: Int32Array;
  /** How many distinct keys. */
  readonly distinct: number;

  constructor(keys: Uint32Array, perKey: number) {
    const count = keys.length / perKey;
    let size = 16;
    while (size < count * 2) size *= 2; // load factor <= 1/2
    this.keys = keys;
    this.perKey = perKey;
    this.slots = new Int32Array(size);
    this.mask = size - 1;
    this.firstOf = new Int32Array(count);
    let distinct = 0;
    for (let i = 0; i < count; i++) {
      const found = this.insert(i);
      this.firstOf[i] = found;
      if (found === i) distinct++;
    }
    this.distinct = distinct;
  }

  /** Index of the key equal to other[at..at+perKey] (u32 words), or -1. */
  find(other: Uint32Array, at: number): number {
    for (let slot = hashKeyWords(other, at, this.perKey) & this.mask; ; slot = (slot + 1) & this.mask) {
      const entry = this.slots[slot] - 1;
      if (entry < 0) return -1;
      if (this.equal(entry, other, at)) return entry;
    }
  }

  /** Adds key i unless an equal key is there; returns the index that holds it. */
  private insert(i: number): number {
    for (let slot = hashKeyWords(this.keys, i * this.perKey, this.perKey) & this.mask; ; slot = (slot + 1) & this.mask) {
      const entry = this.slots[slot] - 1;
      if (entry < 0) {
        this.slots[slot] = i + 1;
        return i;
      }
      if (this.equal(entry, this.keys, i * this.perKey)) return entry;
    }
  }

  private equal(entry: number, other: Uint32Array, at: number): boolean {
    const base = entry * this.perKey;
    for (let w = 0; w < this.perKey; w++) if (this.keys[base + w] !== other[at + w]) return false;
    return true;
  }
}

const VALUE_WORDS = LOCK_VALUE_LAYOUT.size / 4;
/** Word offsets of the u64 fields in a value, low word first (little-endian). */
export const VALUE_WORD = { version: VALUE.version / 4, deadlineNs: VALUE.deadlineNs / 4 } as const;

/** Whether the u64 (vHi, vLo) is greater than (hi, lo). */
function above(vHi: number, vLo: number, hi: number, lo: number): boolean {
  return vHi > hi || (vHi === hi && vLo > lo);
}

export function splitU64(v: bigint): [hi: number, lo: number] {
  return [Number(v >> 32n), Number(v & 0xffff_ffffn)];
}

export function joinU64(hi: number, lo: number): bigint {
  return (BigInt(hi) << 32n) | BigInt(lo);
}

function checkPacked(what: string, keys: Buffer, keySize: number): number {
  if (keySize % 4 !== 0 || keys.length % keySize !== 0) throw new RangeError(`${what}: ${keys.length} bytes are not whole ${keySize}-byte keys`);
  return keys.length / keySize;
}

/** Copies `perKey` words from from[at..] to to[dst..]: a Buffer.copy call per key costs ten times more. */
function copyWords(from: Uint32Array, at: number, to: Uint32Array, dst: number, perKey: number): void {
  for (let w = 0; w < perKey; w++) to[dst + w] = from[at + w];
}

/** A dump of the map (packed entries of keySize-byte keys) as the entries a plan is made against. */
export function heldEntries(keySize: number, held: PackedEntries): HeldVersions {
  checkPacked('held keys', held.keys, keySize);
  const perKey = keySize / 4;
  const index = new PackedKeyIndex(keyWords(held.keys.subarray(0, held.count * keySize)), perKey);
  const values = keyWords(held.values);
  return {
    size: index.distinct,
    slotCount: held.count,
    find: (keys, at) => index.find(keys, at),
    versionHi: (slot) => values[slot * VALUE_WORDS + VALUE_WORD.version + 1],
    versionLo: (slot) => values[slot * VALUE_WORDS + VALUE_WORD.version],
  };
}

/**
 * A lock of every distinct key in `wanted` (packed keys of keySize bytes) over what is `held`:
 * a key is written unless its entry has a newer version than `version`. Every value is written
 * whole, so a rewritten entry starts its drop counters over: carrying them would take reading
 * the map, which the agent no longer does on a lock (netlock-ebpf.ts).
 */
export function planLock(keySize: number, wanted: Buffer, held: HeldVersions, version: bigint, deadlineNs: bigint): LockPlan {
  const n = checkPacked('lock keys', wanted, keySize);
  const perKey = keySize / 4;
  const vs = LOCK_VALUE_LAYOUT.size;
  const fresh = encodeLockValue({ version, deadlineNs, drops: 0n, lastDropNs: 0n });
  const wantedWords = keyWords(wanted);
  const index = new PackedKeyIndex(wantedWords, perKey);
  if (held.size === 0 && index.distinct === n) {
    // The common case, a fresh lock: every key as it came, one template value each.
    return { writes: { keys: wanted, values: Buffer.alloc(n * vs, fresh), count: n }, keptNewer: [] };
  }

  const [hi, lo] = splitU64(version);
  const keys = Buffer.allocUnsafe(index.distinct * keySize);
  const keyOut = keyWords(keys);
  const keptNewer: KeptNewer[] = [];
  let count = 0;
  for (let i = 0; i < n; i++) {
    if (index.firstOf[i] !== i) continue;
    const s = held.size === 0 ? -1 : held.find(wantedWords, i * perKey);
    if (s >= 0 && above(held.versionHi(s), held.versionLo(s), hi, lo)) {
      keptNewer.push({ index: i, heldVersion: joinU64(held.versionHi(s), held.versionLo(s)) });
      continue;
    }
    copyWords(wantedWords, i * perKey, keyOut, count * perKey, perKey);
    count++;
  }
  return { writes: { keys: keys.subarray(0, count * keySize), values: Buffer.alloc(count * vs, fresh), count }, keptNewer };
}

/** An unlock of the keys in `wanted`: deletes each held entry whose version <= `version`, once. */
export function planUnlock(keySize: number, wanted: Buffer, held: HeldVersions, version: bigint): UnlockPlan {
  const n = checkPacked('unlock keys', wanted, keySize);
  const perKey = keySize / 4;
  if (held.size === 0 || n === 0) return { deletes: Buffer.alloc(0), count: 0, keptNewer: [] };
  const [hi, lo] = splitU64(version);
  const wantedWords = keyWords(wanted);
  const seen = new Uint8Array(held.slotCount); // a key asked for twice is one entry
  const deletes = Buffer.allocUnsafe(Math.min(n, held.size) * keySize);
  const deleteWords = keyWords(deletes);
  const keptNewer: KeptNewer[] = [];
  let count = 0;
  for (let i = 0; i < n; i++) {
    const s = held.find(wantedWords, i * perKey);
    if (s < 0 || seen[s]) continue;
    seen[s] = 1;
    if (above(held.versionHi(s), held.versionLo(s), hi, lo)) {
      keptNewer.push({ index: i, heldVersion: joinU64(held.versionHi(s), held.versionLo(s)) });
      continue;
    }
    copyWords(wantedWords, i * perKey, deleteWords, count * perKey, perKey);
    count++;
  }
  return { deletes: deletes.subarray(0, count * keySize), count, keptNewer };
}

/** Keys of the held entries whose lease has run out at monotonic time nowNs. */
export function expiredKeys(keySize: number, held: PackedEntries, nowNs: bigint): { keys: Buffer; count: number } {
  const vs = LOCK_VALUE_LAYOUT.size;
  const out = Buffer.allocUnsafe(held.count * keySize);
  let count = 0;
  for (let h = 0; h < held.count; h++) {
    if (nowNs < held.values.readBigUInt64LE(h * vs + VALUE.deadlineNs)) continue;
    held.keys.copy(out, count * keySize, h * keySize, (h + 1) * keySize);
    count++;
  }
  return { keys: out.subarray(0, count * keySize), count };
}
