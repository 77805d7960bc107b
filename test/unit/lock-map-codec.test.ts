import { describe, it, expect, beforeAll } from 'vitest';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { execCommand } from '../../lib/exec.js';
import type { Endpoint } from '../../lib/endpoint.js';
import {
  bpftoolHexArgs,
  decodeEndpointKey,
  decodeLockValue,
  encodeEndpointKey,
  encodeLockValue,
  ENDPOINT_KEY_LAYOUT,
  fromBpftoolHex,
  layoutMismatch,
  LOCK_LAYOUT_VERSION,
  LOCK_MAP_MAX_ENTRIES,
  LOCK_VALUE_LAYOUT,
  structLayoutFromBtf,
  toBpftoolHex,
  type LockValue,
} from '../../agent/linux/lock-map-codec.js';

const repo = fileURLToPath(new URL('../../', import.meta.url));
const object = `${repo}build/bpf/lock.o`;
const header = `${repo}bpf/godwit_maps.h`;

describe('lock map codec', () => {
  it('encodes the key with address and port in network order and a zero pad', () => {
    const key = encodeEndpointKey({ proto: 'tcp', address: '198.18.250.1', port: 7000 });
    expect(toBpftoolHex(key)).toEqual(['c6', '12', 'fa', '01', '1b', '58', '06', '00']);
    expect(encodeEndpointKey({ proto: 'udp', address: '10.0.0.255', port: 1 }).toString('hex')).toBe('0a0000ff00011100');
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

  it('declares the map with the key, value and size the codec assumes', () => {
    // A BTF-defined map is a VAR of an anonymous struct whose members point at
    // int[type], int[max_entries], key and value.
    const types = (btf as { types: { id: number; kind: string; name: string; type_id?: number; nr_elems?: number }[] }).types;
    const byId = new Map(types.map((t) => [t.id, t]));
    const mapVar = types.find((t) => t.kind === 'VAR' && t.name === 'godwit_lock_ep');
    const def = byId.get(mapVar?.type_id ?? -1) as unknown as { members: { name: string; type_id: number }[] };
    const pointee = (member: string) => byId.get(byId.get(def.members.find((m) => m.name === member)!.type_id)!.type_id!)!;
    expect(pointee('key').name).toBe(ENDPOINT_KEY_LAYOUT.name);
    expect(pointee('value').name).toBe(LOCK_VALUE_LAYOUT.name);
    expect(pointee('max_entries').nr_elems).toBe(LOCK_MAP_MAX_ENTRIES);
    expect(pointee('type').nr_elems).toBe(1); // BPF_MAP_TYPE_HASH
  });

  it('carries the header\'s layout version and capacity', async () => {
    const text = await readFile(header, 'utf8');
    expect(text).toMatch(new RegExp(`#define GODWIT_LOCK_LAYOUT_VERSION ${LOCK_LAYOUT_VERSION}\\b`));
    expect(text).toMatch(new RegExp(`#define GODWIT_LOCK_EP_MAX_ENTRIES ${LOCK_MAP_MAX_ENTRIES}\\b`));
  });
});
