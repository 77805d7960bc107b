import { isIPv4 } from 'node:net';
import type { Endpoint } from '../../lib/endpoint.js';

/*
 * Byte layout of the lock map (bpf/godwit_maps.h), for user space. Pure: no I/O.
 *
 * The header is the source of truth; test/unit/lock-map-codec.test.ts checks these layouts
 * against the compiled object's BTF, and the driver checks them against a pinned map's BTF
 * before reusing it.
 */

/** GODWIT_LOCK_LAYOUT_VERSION in bpf/godwit_maps.h. */
export const LOCK_LAYOUT_VERSION = 1;
/** Map name in bpf/lock.c; also the file name bpftool pins it under. */
export const LOCK_MAP_NAME = 'godwit_lock_ep';
/** GODWIT_LOCK_EP_MAX_ENTRIES in bpf/godwit_maps.h. */
export const LOCK_MAP_MAX_ENTRIES = 65536;

export interface MemberLayout {
  name: string;
  /** Byte offset in the struct. */
  offset: number;
  /** Byte size. */
  size: number;
}

export interface StructLayout {
  name: string;
  size: number;
  members: readonly MemberLayout[];
}

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

const VALUE = {
  version: offsetOf(LOCK_VALUE_LAYOUT, 'version'),
  deadlineNs: offsetOf(LOCK_VALUE_LAYOUT, 'deadline_ns'),
  drops: offsetOf(LOCK_VALUE_LAYOUT, 'drops'),
  lastDropNs: offsetOf(LOCK_VALUE_LAYOUT, 'last_drop_ns'),
};

/** Address and port in network byte order, every byte (the pad too) written: the kernel hashes all 8. */
export function encodeEndpointKey(e: Endpoint): Buffer {
  if (!isIPv4(e.address)) throw new RangeError(`lock key: "${e.address}" is not an IPv4 address`);
  if (!Number.isInteger(e.port) || e.port < 1 || e.port > 0xffff) throw new RangeError(`lock key: port ${e.port} is not 1-65535`);
  const proto = IPPROTO[e.proto];
  if (proto === undefined) throw new RangeError(`lock key: proto "${e.proto}" is not tcp or udp`);
  const b = Buffer.alloc(ENDPOINT_KEY_LAYOUT.size);
  e.address.split('.').forEach((octet, i) => b.writeUInt8(Number(octet), KEY.addr + i));
  b.writeUInt16BE(e.port, KEY.port);
  b.writeUInt8(proto, KEY.proto);
  b.writeUInt8(0, KEY.pad);
  return b;
}

export function decodeEndpointKey(b: Buffer): Endpoint {
  if (b.length !== ENDPOINT_KEY_LAYOUT.size) throw new RangeError(`lock key: ${b.length} bytes, expected ${ENDPOINT_KEY_LAYOUT.size}`);
  const protoNumber = b.readUInt8(KEY.proto);
  const proto = (Object.keys(IPPROTO) as Endpoint['proto'][]).find((p) => IPPROTO[p] === protoNumber);
  if (!proto) throw new RangeError(`lock key: IP protocol ${protoNumber} is neither TCP nor UDP`);
  const address = [0, 1, 2, 3].map((i) => b.readUInt8(KEY.addr + i)).join('.');
  return { proto, address, port: b.readUInt16BE(KEY.port) };
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
  return {
    version: b.readBigUInt64LE(VALUE.version),
    deadlineNs: b.readBigUInt64LE(VALUE.deadlineNs),
    drops: b.readBigUInt64LE(VALUE.drops),
    lastDropNs: b.readBigUInt64LE(VALUE.lastDropNs),
  };
}

/** Bytes as bpftool's `hex` arguments: ['c6', '12', ...]. */
export function toBpftoolHex(b: Buffer): string[] {
  return [...b].map((x) => x.toString(16).padStart(2, '0'));
}

/** `key hex c6 12 ...` / `value hex ...` argument lists for bpftool map commands. */
export function bpftoolHexArgs(keyword: 'key' | 'value', b: Buffer): string[] {
  return [keyword, 'hex', ...toBpftoolHex(b)];
}

/** Bytes as `bpftool -j map dump` prints them: ['0xc6', '0x12', ...] (plain 'c6' accepted too). */
export function fromBpftoolHex(bytes: readonly string[]): Buffer {
  return Buffer.from(
    bytes.map((x) => {
      if (!/^(0x)?[0-9a-f]{1,2}$/i.test(x)) throw new RangeError(`"${x}" is not a hex byte`);
      return Number.parseInt(x.replace(/^0x/i, ''), 16);
    }),
  );
}

interface BtfType {
  id: number;
  kind: string;
  name?: string;
  size?: number;
  type_id?: number;
  members?: { name: string; type_id: number; bits_offset: number }[];
}

/**
 * The layout of struct `name` in `bpftool -j btf dump` output, or undefined if the BTF has no
 * such struct. Member sizes resolve through typedefs and qualifiers to the sized type.
 */
export function structLayoutFromBtf(btfDump: unknown, name: string): StructLayout | undefined {
  const types = (btfDump as { types?: BtfType[] } | null)?.types;
  if (!Array.isArray(types)) throw new Error('not a `bpftool -j btf dump` document (no "types" array)');
  const byId = new Map(types.map((t) => [t.id, t]));
  const sizeOf = (id: number): number => {
    for (let t = byId.get(id), hops = 0; t && hops < 32; t = byId.get(t.type_id ?? -1), hops++) {
      if (typeof t.size === 'number') return t.size;
      if (!['TYPEDEF', 'CONST', 'VOLATILE', 'RESTRICT', 'TYPE_TAG'].includes(t.kind)) break;
    }
    throw new Error(`BTF type ${id} (a member of struct ${name}) has no size this codec understands`);
  };
  const s = types.find((t) => t.kind === 'STRUCT' && t.name === name);
  if (!s || typeof s.size !== 'number') return undefined;
  return {
    name,
    size: s.size,
    members: (s.members ?? []).map((m) => {
      if (m.bits_offset % 8 !== 0) throw new Error(`struct ${name} member ${m.name} is a bitfield; the codec needs whole bytes`);
      return { name: m.name, offset: m.bits_offset / 8, size: sizeOf(m.type_id) };
    }),
  };
}

/** Why `actual` differs from `expected`, or undefined if they are the same layout. */
export function layoutMismatch(expected: StructLayout, actual: StructLayout | undefined): string | undefined {
  if (!actual) return `struct ${expected.name} not found`;
  const show = (l: StructLayout) => `${l.size} bytes {${l.members.map((m) => `${m.name}@${m.offset}:${m.size}`).join(', ')}}`;
  return show(expected) === show(actual) ? undefined : `struct ${expected.name}: expected ${show(expected)}, found ${show(actual)}`;
}
