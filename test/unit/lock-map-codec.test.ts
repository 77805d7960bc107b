import { describe, it, expect, beforeAll } from 'vitest';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { execCommand } from '../../lib/exec.js';
import type { Endpoint } from '../../lib/endpoint.js';
import type { FourTuple } from '../../agent/netlock.js';
import {
  decodeEndpointKey,
  decodeLockValue,
  decodeLockValueAt,
  decodeTupleKey,
  encodeEndpointKey,
  encodeEndpointKeys,
  encodeLockValue,
  encodeTupleKey,
  encodeTupleKeys,
  ENDPOINT_KEY_LAYOUT,
  expiredKeys,
  heldEntries,
  LOCK_LAYOUT_VERSION,
  LOCK_MAP_MAX_ENTRIES,
  CONN_SLOT_LAYOUT,
  LEGACY_TUPLE_MAP_NAME,
  LOCK_CONN_MAP_NAME,
  LOCK_VALUE_LAYOUT,
  planLock,
  planUnlock,
  TUPLE_KEY_LAYOUT,
  type LockValue,
} from '../../agent/linux/lock-map-codec.js';
import { bpftoolHexArgs, fromBpftoolHex, toBpftoolHex } from '../../agent/linux/bpf/bpftool.js';
import { layoutMismatch, structLayoutFromBtf } from '../../agent/linux/bpf/struct-layout.js';
import type { PackedEntries } from '../../agent/linux/bpf/map-access.js';
import { kernelMapName } from '../../agent/linux/bpf/map-spec.js';
import { CONN_SLOT_BYTES, CONN_TABLE_SHAPE } from '../../agent/linux/conn-lock-table.js';

const repo = fileURLToPath(new URL('../../', import.meta.url));
const object = `${repo}build/bpf/lock.o`;
const header = `${repo}bpf/lock_maps.h`;

describe('lock map codec', () => {
  it('encodes the key with address and port in network order and a zero pad', () => {
    const key = encodeEndpointKey({ proto: 'tcp', address: '198.18.250.1', port: 7000 });
    expect(toBpftoolHex(key)).toEqual(['c6', '12', 'fa', '01', '1b', '58', '06', '00']);
    expect(encodeEndpointKey({ proto: 'udp', address: '10.0.0.255', port: 1 }).toString('hex')).toBe('0a0000ff00011100');
  });

  it('encodes an address-wide entry as port 0 (GODWIT_ANY_PORT), in the same layout', () => {
    const key = encodeEndpointKey({ proto: 'udp', address: '198.18.250.1', port: 0 });
    expect(key.toString('hex')).toBe('c612fa0100001100');
    expect(decodeEndpointKey(key)).toEqual({ proto: 'udp', address: '198.18.250.1', port: 0 });
    expect(() => encodeEndpointKey({ proto: 'tcp', address: '1.2.3.4', port: -1 })).toThrow(/port/);
  });

  it('round-trips keys', () => {
    const endpoints: Endpoint[] = [
      { proto: 'tcp', address: '198.18.250.1', port: 7000 },
      { proto: 'udp', address: '255.255.255.255', port: 65535 },
      { proto: 'tcp', address: '0.0.0.1', port: 1 },
    ];
    for (const e of endpoints) expect(decodeEndpointKey(encodeEndpointKey(e))).toEqual(e);
  });

  it('rejects keys it cannot represent', () => {
    expect(() => encodeEndpointKey({ proto: 'tcp', address: '::1', port: 80 })).toThrow(/IPv4/);
    expect(() => encodeEndpointKey({ proto: 'tcp', address: '1.2.3.4', port: 70000 })).toThrow(/port/);
    expect(() => encodeEndpointKey({ proto: 'sctp' as 'tcp', address: '1.2.3.4', port: 80 })).toThrow(/proto/);
    expect(() => decodeEndpointKey(Buffer.from('0102030400500100', 'hex'))).toThrow(/protocol 1/);
    expect(() => decodeEndpointKey(Buffer.alloc(7))).toThrow(/7 bytes/);
  });

  it('encodes the value as little-endian u64s and round-trips it', () => {
    const v: LockValue = { version: 0x0102030405060708n, deadlineNs: 2n ** 64n - 1n, drops: 3n, lastDropNs: 0n };
    const b = encodeLockValue(v);
    expect(b.length).toBe(32);
    expect(b.subarray(0, 8).toString('hex')).toBe('0807060504030201');
    expect(b.subarray(8, 16).toString('hex')).toBe('ffffffffffffffff');
    expect(b.subarray(16, 24).toString('hex')).toBe('0300000000000000');
    expect(decodeLockValue(b)).toEqual(v);
    expect(() => encodeLockValue({ ...v, version: -1n })).toThrow(RangeError);
    expect(() => encodeLockValue({ ...v, version: 2n ** 64n })).toThrow(RangeError);
  });

  it('speaks bpftool hex both ways', () => {
    const key = encodeEndpointKey({ proto: 'udp', address: '198.18.250.1', port: 53 });
    expect(bpftoolHexArgs('key', key)).toEqual(['key', 'hex', 'c6', '12', 'fa', '01', '00', '35', '11', '00']);
    // `bpftool -j map dump` prints "0x.." strings.
    expect(fromBpftoolHex(['0xc6', '0x12', '0xfa', '0x01', '0x00', '0x35', '0x11', '0x00'])).toEqual(key);
    expect(() => fromBpftoolHex(['0x100'])).toThrow(/hex byte/);
    expect(() => fromBpftoolHex(['zz'])).toThrow(/hex byte/);
  });

  it('reports a layout difference', () => {
    const swapped = { ...LOCK_VALUE_LAYOUT, members: [...LOCK_VALUE_LAYOUT.members].reverse() };
    expect(layoutMismatch(LOCK_VALUE_LAYOUT, LOCK_VALUE_LAYOUT)).toBeUndefined();
    expect(layoutMismatch(LOCK_VALUE_LAYOUT, swapped)).toMatch(/godwit_lock_value: expected/);
    expect(layoutMismatch(LOCK_VALUE_LAYOUT, undefined)).toMatch(/not found/);
  });
});

describe('tuple lock keys', () => {
  const conn: FourTuple = { proto: 'tcp', localAddress: '198.18.250.1', localPort: 7000, remoteAddress: '198.18.250.2', remotePort: 41000 };

  it('encodes the packet\'s view: remote end as source, local end as destination, zero pad', () => {
    // saddr c6 12 fa 02 | daddr c6 12 fa 01 | sport a0 28 (41000) | dport 1b 58 (7000) | proto 06 | pad 00 00 00
    expect(encodeTupleKey(conn).toString('hex')).toBe('c612fa02c612fa01a0281b5806000000');
    expect(encodeTupleKey({ proto: 'udp', localAddress: '10.0.0.255', localPort: 1, remoteAddress: '255.255.255.255', remotePort: 65535 }).toString('hex')).toBe(
      'ffffffff0a0000ffffff000111000000',
    );
  });

  it('round-trips keys, one at a time and packed', () => {
    const tuples: FourTuple[] = [
      conn,
      { proto: 'udp', localAddress: '0.0.0.1', localPort: 1, remoteAddress: '255.255.255.255', remotePort: 65535 },
      { proto: 'tcp', localAddress: '192.168.100.200', localPort: 443, remoteAddress: '1.2.3.4', remotePort: 50000 },
    ];
    for (const t of tuples) expect(decodeTupleKey(encodeTupleKey(t))).toEqual(t);
    const packed = encodeTupleKeys(tuples);
    expect(packed.length).toBe(tuples.length * TUPLE_KEY_LAYOUT.size);
    tuples.forEach((t, i) => {
      expect(decodeTupleKey(packed, i * TUPLE_KEY_LAYOUT.size)).toEqual(t);
      expect(packed.subarray(i * 16, i * 16 + 16)).toEqual(encodeTupleKey(t));
    });
    expect(encodeEndpointKeys([{ proto: 'tcp', address: '198.18.250.1', port: 7000 }]).toString('hex')).toBe('c612fa011b580600');
  });

  it('rejects tuples it cannot represent, naming the first bad one', () => {
    expect(() => encodeTupleKey({ ...conn, remoteAddress: '::1' })).toThrow(/remoteAddress "::1"/);
    expect(() => encodeTupleKey({ ...conn, localAddress: '198.18.250.01' })).toThrow(/localAddress/); // leading zero, as isIPv4
    expect(() => encodeTupleKey({ ...conn, localAddress: '198.18.250' })).toThrow(/localAddress/);
    expect(() => encodeTupleKey({ ...conn, localAddress: '198.18.250.256' })).toThrow(/localAddress/);
    expect(() => encodeTupleKey({ ...conn, remotePort: 0 })).toThrow(/remotePort 0/);
    expect(() => encodeTupleKey({ ...conn, localPort: 1.5 })).toThrow(/localPort/);
    expect(() => encodeTupleKey({ ...conn, proto: 'sctp' as 'tcp' })).toThrow(/proto "sctp"/);
    expect(() => encodeTupleKeys([conn, conn, { ...conn, remotePort: 70000 }])).toThrow(/lock tuple 2: remotePort 70000/);
    expect(() => decodeTupleKey(Buffer.from('c612fa02c612fa01a0281b5801000000', 'hex'))).toThrow(/protocol 1/);
    expect(() => decodeTupleKey(Buffer.alloc(15))).toThrow(/15 bytes/);
  });

  it('names the connection maps within the kernel\'s 15 characters only in `map show`', () => {
    expect(kernelMapName(LOCK_CONN_MAP_NAME)).toBe('godwit_lock_con');
    expect(kernelMapName(LEGACY_TUPLE_MAP_NAME)).toBe('godwit_lock_tup');
  });
});

describe('version-guarded plans over a dump of the map', () => {
  // Connection i comes from peer 198.(20 + i / 65536).(i / 256 % 256).(i % 256).
  const tuple = (i: number): FourTuple => ({ proto: 'tcp', localAddress: '198.18.0.1', localPort: 7000, remoteAddress: `198.${20 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`, remotePort: 40000 });
  const keysOf = (ids: number[]) => encodeTupleKeys(ids.map(tuple));
  const packed = (entries: [number, LockValue][]): PackedEntries => ({
    keys: keysOf(entries.map(([i]) => i)),
    values: Buffer.concat(entries.map(([, v]) => encodeLockValue(v))),
    count: entries.length,
  });
  const held = (entries: [number, LockValue][]) => heldEntries(TUPLE_KEY_LAYOUT.size, packed(entries));
  const none = held([]);
  const ks = TUPLE_KEY_LAYOUT.size;
  const idsIn = (keys: Buffer) =>
    Array.from({ length: keys.length / ks }, (_, i) => {
      const [, b, c, d] = decodeTupleKey(keys, i * ks).remoteAddress.split('.').map(Number);
      return ((b - 20) << 16) | (c << 8) | d;
    });
  const v = (version: bigint, drops = 0n, lastDropNs = 0n): LockValue => ({ version, deadlineNs: 1n, drops, lastDropNs });

  it('writes every key of a fresh lock with the new version and lease', () => {
    const plan = planLock(ks, keysOf([1, 2, 3]), none, 7n, 123n);
    expect(plan.writes.count).toBe(3);
    expect(idsIn(plan.writes.keys)).toEqual([1, 2, 3]);
    for (let i = 0; i < 3; i++) expect(decodeLockValueAt(plan.writes.values, i * 32)).toEqual({ version: 7n, deadlineNs: 123n, drops: 0n, lastDropNs: 0n });
    expect(plan.keptNewer).toEqual([]);
  });

  it('writes a repeated key once', () => {
    const plan = planLock(ks, keysOf([1, 2, 1, 1]), none, 7n, 123n);
    expect(idsIn(plan.writes.keys)).toEqual([1, 2]);
    expect(plan.writes.values.length).toBe(64);
  });

  it('leaves newer entries alone and rewrites the rest whole, drop counters started over', () => {
    const plan = planLock(ks, keysOf([1, 2, 3, 4]), held([[2, v(9n)], [3, v(7n, 5n, 99n)], [4, v(6n, 1n, 2n)], [50, v(1n)]]), 7n, 123n);
    expect(idsIn(plan.writes.keys)).toEqual([1, 3, 4]); // 2 is held at 9 > 7; 50 was not asked for
    expect(decodeLockValueAt(plan.writes.values, 32)).toEqual({ version: 7n, deadlineNs: 123n, drops: 0n, lastDropNs: 0n }); // equal version rewrites
    expect(decodeLockValueAt(plan.writes.values, 64)).toEqual({ version: 7n, deadlineNs: 123n, drops: 0n, lastDropNs: 0n });
    expect(plan.keptNewer).toEqual([{ index: 1, heldVersion: 9n }]);
  });

  it('reports a key asked for twice and kept by a newer entry once', () => {
    const plan = planLock(ks, keysOf([2, 1, 2]), held([[2, v(9n)]]), 7n, 123n);
    expect(idsIn(plan.writes.keys)).toEqual([1]);
    expect(plan.keptNewer).toEqual([{ index: 0, heldVersion: 9n }]);
    const unlock = planUnlock(ks, keysOf([2, 2]), held([[2, v(9n)]]), 7n);
    expect(unlock.count).toBe(0);
    expect(unlock.keptNewer).toEqual([{ index: 0, heldVersion: 9n }]);
  });

  it('compares whole u64 versions (high words too)', () => {
    const big = 0x1_0000_0000n;
    expect(planLock(ks, keysOf([1]), held([[1, v(big)]]), big - 1n, 1n).writes.count).toBe(0);
    expect(planLock(ks, keysOf([1]), held([[1, v(big - 1n)]]), big, 1n).writes.count).toBe(1);
    expect(planLock(ks, keysOf([1]), held([[1, v(2n ** 64n - 1n)]]), 2n ** 63n, 1n).keptNewer).toEqual([{ index: 0, heldVersion: 2n ** 64n - 1n }]);
  });

  it('unlocks held entries with version <= the unlock\'s, each once', () => {
    const plan = planUnlock(ks, keysOf([1, 2, 3, 3, 7]), held([[1, v(5n)], [2, v(6n)], [3, v(4n)], [9, v(1n)]]), 5n);
    expect(idsIn(plan.deletes).sort()).toEqual([1, 3]);
    expect(plan.count).toBe(2);
    expect(plan.keptNewer).toEqual([{ index: 1, heldVersion: 6n }]);
    expect(planUnlock(ks, keysOf([1]), none, 5n).count).toBe(0);
  });

  it('finds expired entries by their deadline', () => {
    const h = packed([[1, { ...v(1n), deadlineNs: 100n }], [2, { ...v(1n), deadlineNs: 101n }], [3, { ...v(1n), deadlineNs: 50n }]]);
    const expired = expiredKeys(ks, h, 100n);
    expect(expired.count).toBe(2);
    expect(idsIn(expired.keys)).toEqual([1, 3]);
  });

  it('plans 100,000 keys against 50,000 held ones correctly', () => {
    const ids = Array.from({ length: 100_000 }, (_, i) => i);
    const heldIds = ids.filter((i) => i % 2 === 0);
    const h = held(heldIds.map((i) => [i, v(i % 4 === 0 ? 10n : 3n)]));
    const lock = planLock(ks, keysOf(ids), h, 5n, 1n);
    expect(lock.writes.count).toBe(75_000);
    expect(lock.keptNewer.length).toBe(25_000);
    expect(lock.keptNewer.every((k) => k.index % 4 === 0)).toBe(true);
    const unlock = planUnlock(ks, keysOf(ids), h, 5n);
    expect(unlock.count).toBe(25_000);
    expect(idsIn(unlock.deletes).every((i) => i % 4 === 2)).toBe(true);
  });
});

describe('lock map layout against the compiled program', () => {
  let btf: unknown;

  beforeAll(async () => {
    // Idempotent: builds build/bpf/lock.o when it is missing or older than bpf/*.
    await execCommand(`${repo}scripts/build-bpf.sh`, [], { timeoutMs: 60_000 });
    btf = JSON.parse((await execCommand('bpftool', ['-j', 'btf', 'dump', 'file', object])).stdout);
  });

  it('matches the key struct byte for byte', () => {
    const actual = structLayoutFromBtf(btf, ENDPOINT_KEY_LAYOUT.name);
    expect(actual).toEqual(ENDPOINT_KEY_LAYOUT);
    expect(layoutMismatch(ENDPOINT_KEY_LAYOUT, actual)).toBeUndefined();
  });

  it('matches the value struct byte for byte', () => {
    const actual = structLayoutFromBtf(btf, LOCK_VALUE_LAYOUT.name);
    expect(actual).toEqual(LOCK_VALUE_LAYOUT);
  });

  it('matches the tuple key struct byte for byte (pad[3] included)', () => {
    const actual = structLayoutFromBtf(btf, TUPLE_KEY_LAYOUT.name);
    expect(actual).toEqual(TUPLE_KEY_LAYOUT);
    expect(layoutMismatch(TUPLE_KEY_LAYOUT, actual)).toBeUndefined();
  });

  // A BTF-defined map is a VAR of an anonymous struct whose members point at
  // int[type], int[max_entries], key and value.
  const mapDeclaration = (name: string) => {
    const types = (btf as { types: { id: number; kind: string; name: string; type_id?: number; nr_elems?: number }[] }).types;
    const byId = new Map(types.map((t) => [t.id, t]));
    const mapVar = types.find((t) => t.kind === 'VAR' && t.name === name);
    const def = byId.get(mapVar?.type_id ?? -1) as unknown as { members: { name: string; type_id: number }[] };
    return (member: string) => byId.get(byId.get(def.members.find((m) => m.name === member)!.type_id)!.type_id!)!;
  };

  it('declares the endpoint map with the key, value and size the codec assumes', () => {
    const pointee = mapDeclaration('godwit_lock_ep');
    expect(pointee('key').name).toBe(ENDPOINT_KEY_LAYOUT.name);
    expect(pointee('value').name).toBe(LOCK_VALUE_LAYOUT.name);
    expect(pointee('max_entries').nr_elems).toBe(LOCK_MAP_MAX_ENTRIES);
    expect(pointee('type').nr_elems).toBe(1); // BPF_MAP_TYPE_HASH
  });

  it('matches the connection table slot byte for byte', () => {
    const actual = structLayoutFromBtf(btf, CONN_SLOT_LAYOUT.name);
    expect(actual).toEqual(CONN_SLOT_LAYOUT);
    expect(CONN_SLOT_BYTES).toBe(CONN_SLOT_LAYOUT.size);
    expect(CONN_SLOT_LAYOUT.size % 8).toBe(0); // the kernel's array stride: slots back to back
  });

  it('declares the connection table as the mmappable array the agent maps', () => {
    const pointee = mapDeclaration(LOCK_CONN_MAP_NAME);
    expect(pointee('value').name).toBe(CONN_SLOT_LAYOUT.name);
    expect(pointee('max_entries').nr_elems).toBe(CONN_TABLE_SHAPE.slots);
    expect(pointee('type').nr_elems).toBe(2); // BPF_MAP_TYPE_ARRAY
    expect(pointee('map_flags').nr_elems).toBe(1 << 10); // BPF_F_MMAPABLE
    expect(CONN_TABLE_SHAPE.maxEntries).toBeGreaterThanOrEqual(100_000);
    expect(CONN_TABLE_SHAPE.maxEntries * 2).toBeLessThanOrEqual(CONN_TABLE_SHAPE.slots); // load <= 1/2
  });

  it('carries the header\'s layout version and capacities', async () => {
    const text = await readFile(header, 'utf8');
    expect(text).toMatch(new RegExp(`#define GODWIT_LOCK_LAYOUT_VERSION ${LOCK_LAYOUT_VERSION}\\b`));
    expect(text).toMatch(new RegExp(`#define GODWIT_LOCK_EP_MAX_ENTRIES ${LOCK_MAP_MAX_ENTRIES}\\b`));
    expect(text).toMatch(new RegExp(`#define GODWIT_CONN_SLOTS \\(1u << ${Math.log2(CONN_TABLE_SHAPE.slots)}\\)`));
    expect(text).toMatch(new RegExp(`#define GODWIT_CONN_MAX_ENTRIES ${CONN_TABLE_SHAPE.maxEntries}\\b`));
    expect(text).toMatch(new RegExp(`#define GODWIT_CONN_MAX_PROBE ${CONN_TABLE_SHAPE.maxProbe}\\b`));
  });
});
