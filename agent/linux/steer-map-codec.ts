import { isIPv4 } from 'node:net';
import { maglevTable } from '../maglev.js';
import type { SteeringCounter, SteeringTable } from '../steering.js';
import type { MapSpec, MapType } from './bpf/map-spec.js';
import { BPF_F_MMAPABLE } from './bpf/native-map.js';
import type { StructLayout } from './bpf/struct-layout.js';

/*
 * Byte layout of the steering maps (bpf/steer_maps.h) for user space, and the compilation of a
 * controller rule table into one copy (slot) of the kernel's rule maps. Pure: no I/O.
 *
 * The header is the source of truth; test/unit/steer-map-codec.test.ts checks these layouts and
 * capacities against the compiled object's BTF, and the driver checks a pinned map's BTF before
 * reusing it.
 */

/** GODWIT_STEER_* capacities. */
export const STEER_MAX_ID = 16384;
export const STEER_MAX_SERVICES = 128;
export const STEER_RING_SIZE = 4099;
export const STEER_FLOWS = 262144;
export const STEER_RNAT = 262144;
export const STEER_SLOTS = 2;
export const STEER_VXLAN_PORT = 4789;
export const STEER_VXLAN_VNI = 0x60d71;
export const STEER_MAX_ADDRS = 4096;
/** GODWIT_VXLAN_FLAG_FORWARDED: a reserved VXLAN flag bit, set on a frame re-encapsulated once. */
export const STEER_VXLAN_FLAG_FORWARDED = 0x40;
/** GODWIT_VXLAN_ADDR_MARKER: in the backend-id field, "steered by address, deliver as it is". */
export const STEER_VXLAN_ADDR_MARKER = 0xffffff;

/** GODWIT_BACKEND_* flags. */
export const BACKEND_PRESENT = 1;
export const BACKEND_LOCAL = 2;
export const BACKEND_DRAINING = 4;

/** GODWIT_ADDR_* flags. */
export const ADDR_LOCAL = 1;

/** steer_fwd's indexes (GODWIT_FWD_*). */
export const FWD_FORWARDED = 0;
export const FWD_STALE = 1;
export const FWD_COUNTERS = 2;

const IPPROTO = { tcp: 6, udp: 17 } as const;

function layout(name: string, size: number, members: [string, number, number][]): StructLayout {
  return { name, size, members: members.map(([n, offset, s]) => ({ name: n, offset, size: s })) };
}

export const META_LAYOUT = layout('godwit_steer_meta', 24, [
  ['active', 0, 4],
  ['host_addr', 4, 4],
  ['generation', 8, 16],
]);
export const VIP_KEY_LAYOUT = layout('godwit_vip_key', 8, [
  ['addr', 0, 4],
  ['port', 4, 2],
  ['proto', 6, 1],
  ['slot', 7, 1],
]);
export const VIP_VALUE_LAYOUT = layout('godwit_vip_value', 8, [
  ['service_id', 0, 4],
  ['ring', 4, 4],
]);
export const BACKEND_LAYOUT = layout('godwit_steer_backend', 16, [
  ['addr', 0, 4],
  ['port', 4, 2],
  ['flags', 6, 1],
  ['pad', 7, 1],
  ['host_addr', 8, 4],
  ['service_id', 12, 4],
]);
export const RING_LAYOUT = layout('godwit_steer_ring', STEER_RING_SIZE * 4, [['backend', 0, STEER_RING_SIZE * 4]]);
export const FLOW_KEY_LAYOUT = layout('godwit_flow_key', 16, [
  ['saddr', 0, 4],
  ['daddr', 4, 4],
  ['sport', 8, 2],
  ['dport', 10, 2],
  ['proto', 12, 1],
  ['pad', 13, 3],
]);
export const FLOW_VALUE_LAYOUT = layout('godwit_flow_value', 12, [
  ['backend_id', 0, 4],
  ['service_id', 4, 4],
  ['flags', 8, 4],
]);
/** steer_flows' value of layout version 1 (no flags): what upgradeFlows() reads. */
export const FLOW_VALUE_V1_SIZE = 8;
/** GODWIT_FLOW_* flags. */
export const FLOW_RNAT = 1;
export const RNAT_KEY_LAYOUT = layout('godwit_rnat_key', 16, [
  ['backend_addr', 0, 4],
  ['client_addr', 4, 4],
  ['backend_port', 8, 2],
  ['client_port', 10, 2],
  ['proto', 12, 1],
  ['pad', 13, 3],
]);
export const RNAT_VALUE_LAYOUT = layout('godwit_rnat_value', 8, [
  ['vip_addr', 0, 4],
  ['vip_port', 4, 2],
  ['pad', 6, 2],
]);
export const COUNTER_LAYOUT = layout('godwit_steer_counter', 24, [
  ['packets', 0, 8],
  ['bytes', 8, 8],
  ['flows', 16, 8],
]);
export const ADDR_KEY_LAYOUT = layout('godwit_addr_key', 8, [
  ['addr', 0, 4],
  ['slot', 4, 1],
  ['pad', 5, 3],
]);
export const ADDR_VALUE_LAYOUT = layout('godwit_addr_value', 8, [
  ['host_addr', 0, 4],
  ['flags', 4, 4],
]);
export const FWD_COUNTER_LAYOUT = layout('godwit_fwd_counter', 8, [['packets', 0, 8]]);

/**
 * One map of bpf/steer.c as the BPF lifecycle pins, checks and reuses it (bpf/map-spec.ts):
 * `version` is its GODWIT_STEER_*_VERSION. Upgrades (they do I/O) are added by steer-object.ts.
 */
const spec = (name: string, type: MapType, key: StructLayout | number, value: StructLayout, maxEntries: number, flags = 0, version = 1): MapSpec => ({
  name,
  type,
  keySize: typeof key === 'number' ? key : key.size,
  valueSize: value.size,
  maxEntries,
  ...(flags ? { flags } : {}),
  version,
  structs: typeof key === 'number' ? [value] : [key, value],
});

export const STEER_MAPS = {
  meta: spec('steer_meta', 'array', 4, META_LAYOUT, 1, BPF_F_MMAPABLE),
  vips: spec('steer_vips', 'hash', VIP_KEY_LAYOUT, VIP_VALUE_LAYOUT, STEER_SLOTS * STEER_MAX_SERVICES),
  backends: spec('steer_backends', 'array', 4, BACKEND_LAYOUT, STEER_SLOTS * STEER_MAX_ID, BPF_F_MMAPABLE),
  rings: spec('steer_rings', 'array', 4, RING_LAYOUT, STEER_SLOTS * STEER_MAX_SERVICES, BPF_F_MMAPABLE),
  flows: spec('steer_flows', 'lru_hash', FLOW_KEY_LAYOUT, FLOW_VALUE_LAYOUT, STEER_FLOWS, 0, 2),
  rnat: spec('steer_rnat', 'lru_hash', RNAT_KEY_LAYOUT, RNAT_VALUE_LAYOUT, STEER_RNAT),
  serviceStats: spec('steer_svc_stats', 'percpu_array', 4, COUNTER_LAYOUT, STEER_MAX_ID),
  backendStats: spec('steer_be_stats', 'percpu_array', 4, COUNTER_LAYOUT, STEER_MAX_ID),
  addrs: spec('steer_addrs', 'hash', ADDR_KEY_LAYOUT, ADDR_VALUE_LAYOUT, STEER_SLOTS * STEER_MAX_ADDRS),
  fwd: spec('steer_fwd', 'percpu_array', 4, FWD_COUNTER_LAYOUT, FWD_COUNTERS),
} as const satisfies Record<string, MapSpec>;

/** A table the data plane cannot hold or does not understand; nothing of it was applied. */
export class SteeringTableError extends Error {
  constructor(readonly problem: string) {
    super(`steering table: ${problem}`);
    this.name = 'SteeringTableError';
  }
}

/** Dotted quad -> the u32 whose little-endian bytes are the address in network order (as loaded by the program). */
export function ipv4Bytes(text: string): Buffer {
  if (!isIPv4(text)) throw new SteeringTableError(`"${text}" is not an IPv4 address`);
  return Buffer.from(text.split('.').map(Number));
}

export function formatIPv4(b: Buffer, at = 0): string {
  return `${b[at]}.${b[at + 1]}.${b[at + 2]}.${b[at + 3]}`;
}

/** One backend record of a slot, as the program reads it. */
export interface BackendRecord {
  id: number;
  address: string;
  port: number;
  flags: number;
  hostAddress: string;
  serviceId: number;
}

/** One service of a slot: its VIP key, and its ring. */
export interface ServiceRecord {
  id: number;
  proto: 'tcp' | 'udp';
  vip: string;
  vipPort: number;
  /** Ring index within the slot. */
  ring: number;
  table: Uint32Array;
}

/** One workload address of a slot (steer_addrs). */
export interface AddressRecord {
  address: string;
  hostAddress: string;
  /** It runs on this host (its host address is one of this host's): its packets go to the stack. */
  local: boolean;
}

/** What one slot of the rule maps holds for a table. */
export interface SlotImage {
  generation: number;
  services: ServiceRecord[];
  backends: BackendRecord[];
  addresses: AddressRecord[];
}

const isPort = (p: number) => Number.isInteger(p) && p >= 1 && p <= 0xffff;
const isId = (id: number) => Number.isInteger(id) && id >= 1 && id < STEER_MAX_ID;

/**
 * Maglev tables by their input (backend ids and weights): a generation usually changes one
 * service, and the others' tables need not be computed again (each is ~0.2 ms of work).
 */
export class MaglevTableCache {
  private readonly tables = new Map<string, Uint32Array>();

  constructor(private readonly limit = 2 * STEER_MAX_SERVICES) {}

  get(backends: readonly { id: number; weight: number }[]): Uint32Array {
    const key = backends.map((b) => `${b.id}:${b.weight}`).sort().join(',');
    let t = this.tables.get(key);
    if (!t) {
      t = maglevTable(backends, STEER_RING_SIZE);
      if (this.tables.size >= this.limit) this.tables.delete(this.tables.keys().next().value!);
      this.tables.set(key, t);
    }
    return t;
  }
}

/**
 * Compiles the controller's table into the rule maps' contents. `localHostAddresses`: this host's
 * data-plane addresses (a backend whose host address is one of them is DNATed here). Rings go
 * in the table's service order; draining backends stay (for their flows) but get no ring entries.
 */
export function compileSlot(table: SteeringTable, localHostAddresses: ReadonlySet<string>, rings = new MaglevTableCache()): SlotImage {
  if (!Number.isSafeInteger(table.generation) || table.generation < 1) throw new SteeringTableError(`generation ${table.generation} is not a positive integer`);
  if (table.services.length > STEER_MAX_SERVICES) throw new SteeringTableError(`${table.services.length} services; this data plane holds at most ${STEER_MAX_SERVICES}`);
  const serviceIds = new Set<number>();
  const backendIds = new Set<number>();
  const vips = new Set<string>();
  const services: ServiceRecord[] = [];
  const backends: BackendRecord[] = [];
  table.services.forEach((s, ring) => {
    const name = `service ${s.id} (${s.proto} ${s.vip}:${s.vipPort})`;
    if (!isId(s.id)) throw new SteeringTableError(`${name}: id must be 1..${STEER_MAX_ID - 1}`);
    if (serviceIds.has(s.id)) throw new SteeringTableError(`${name}: id used twice`);
    serviceIds.add(s.id);
    if (s.proto !== 'tcp' && s.proto !== 'udp') throw new SteeringTableError(`${name}: proto must be tcp or udp`);
    ipv4Bytes(s.vip);
    if (!isPort(s.vipPort)) throw new SteeringTableError(`${name}: port must be 1..65535`);
    const vipKey = `${s.proto} ${s.vip}:${s.vipPort}`;
    if (vips.has(vipKey)) throw new SteeringTableError(`${name}: VIP endpoint used twice`);
    vips.add(vipKey);
    for (const b of s.backends) {
      const bname = `${name} backend ${b.id}`;
      if (!isId(b.id)) throw new SteeringTableError(`${bname}: id must be 1..${STEER_MAX_ID - 1}`);
      if (backendIds.has(b.id)) throw new SteeringTableError(`${bname}: id used twice`);
      backendIds.add(b.id);
      ipv4Bytes(b.address);
      ipv4Bytes(b.hostAddress);
      if (!isPort(b.port)) throw new SteeringTableError(`${bname}: port must be 1..65535`);
      if (!Number.isInteger(b.weight) || b.weight < 1 || b.weight > 1000) throw new SteeringTableError(`${bname}: weight must be 1..1000`);
      const local = localHostAddresses.has(b.hostAddress);
      backends.push({
        id: b.id,
        address: b.address,
        port: b.port,
        flags: BACKEND_PRESENT | (local ? BACKEND_LOCAL : 0) | (b.draining ? BACKEND_DRAINING : 0),
        hostAddress: b.hostAddress,
        serviceId: s.id,
      });
    }
    const t = rings.get(s.backends.filter((b) => !b.draining).map((b) => ({ id: b.id, weight: b.weight })));
    services.push({ id: s.id, proto: s.proto, vip: s.vip, vipPort: s.vipPort, ring, table: t });
  });
  return { generation: table.generation, services, backends, addresses: compileAddresses(table, localHostAddresses) };
}

/** The table's workload addresses, local by the same test as backends (the host address is this host's). */
function compileAddresses(table: SteeringTable, localHostAddresses: ReadonlySet<string>): AddressRecord[] {
  const addresses = table.addresses ?? [];
  if (addresses.length > STEER_MAX_ADDRS) throw new SteeringTableError(`${addresses.length} workload addresses; this data plane holds at most ${STEER_MAX_ADDRS}`);
  const seen = new Set<string>();
  return addresses.map((a) => {
    const name = `workload address ${a.address} (host ${a.host})`;
    ipv4Bytes(a.address);
    ipv4Bytes(a.hostAddress);
    if (seen.has(a.address)) throw new SteeringTableError(`${name}: address listed twice`);
    seen.add(a.address);
    return { address: a.address, hostAddress: a.hostAddress, local: localHostAddresses.has(a.hostAddress) };
  });
}

/** steer_addrs key of an address in a slot. */
export function encodeAddrKey(address: string, slot: number): Buffer {
  const b = Buffer.alloc(ADDR_KEY_LAYOUT.size);
  ipv4Bytes(address).copy(b, 0);
  b.writeUInt8(slot, 4);
  return b;
}

export function encodeAddrValue(a: Pick<AddressRecord, 'hostAddress' | 'local'>): Buffer {
  const b = Buffer.alloc(ADDR_VALUE_LAYOUT.size);
  ipv4Bytes(a.hostAddress).copy(b, 0);
  b.writeUInt32LE(a.local ? ADDR_LOCAL : 0, 4);
  return b;
}

/** The slot byte of a packed steer_addrs key. */
export function addrKeySlot(key: Buffer, at = 0): number {
  return key[at + 4];
}

/** steer_vips key of a service in a slot. */
export function encodeVipKey(s: Pick<ServiceRecord, 'proto' | 'vip' | 'vipPort'>, slot: number): Buffer {
  const b = Buffer.alloc(VIP_KEY_LAYOUT.size);
  ipv4Bytes(s.vip).copy(b, 0);
  b.writeUInt16BE(s.vipPort, 4);
  b.writeUInt8(IPPROTO[s.proto], 6);
  b.writeUInt8(slot, 7);
  return b;
}

export function encodeVipValue(s: Pick<ServiceRecord, 'id' | 'ring'>): Buffer {
  const b = Buffer.alloc(VIP_VALUE_LAYOUT.size);
  b.writeUInt32LE(s.id, 0);
  b.writeUInt32LE(s.ring, 4);
  return b;
}

/** The slot byte of a packed steer_vips key. */
export function vipKeySlot(key: Buffer, at = 0): number {
  return key[at + 7];
}

/** Writes a backend record at its place (slot * MAX_ID + id) in steer_backends' mapped values. */
export function writeBackendRecord(mem: Buffer, slot: number, r: BackendRecord): void {
  const at = (slot * STEER_MAX_ID + r.id) * BACKEND_LAYOUT.size;
  ipv4Bytes(r.address).copy(mem, at);
  mem.writeUInt16BE(r.port, at + 4);
  mem.writeUInt8(r.flags, at + 6);
  mem.writeUInt8(0, at + 7);
  ipv4Bytes(r.hostAddress).copy(mem, at + 8);
  mem.writeUInt32LE(r.serviceId, at + 12);
}

export function readBackendRecord(mem: Buffer, slot: number, id: number): BackendRecord {
  const at = (slot * STEER_MAX_ID + id) * BACKEND_LAYOUT.size;
  return {
    id,
    address: formatIPv4(mem, at),
    port: mem.readUInt16BE(at + 4),
    flags: mem.readUInt8(at + 6),
    hostAddress: formatIPv4(mem, at + 8),
    serviceId: mem.readUInt32LE(at + 12),
  };
}

/** Byte stride of one ring in steer_rings' mapped values (the kernel rounds values up to 8). */
export const RING_STRIDE = Math.ceil(RING_LAYOUT.size / 8) * 8;

/** The meta entry's fields in its mapped memory. */
export const META = { active: 0, hostAddr: 4, generation: (slot: number) => 8 + slot * 8 } as const;

/** Sums a per-CPU counter value (possible CPUs, each rounded up to 8 bytes) at `at`. */
export function sumPerCpuCounter(values: Buffer, at: number, cpus: number): SteeringCounter {
  const stride = Math.ceil(COUNTER_LAYOUT.size / 8) * 8;
  const c: SteeringCounter = { packets: 0n, bytes: 0n, flows: 0n };
  for (let cpu = 0; cpu < cpus; cpu++) {
    const o = at + cpu * stride;
    c.packets += values.readBigUInt64LE(o);
    c.bytes += values.readBigUInt64LE(o + 8);
    c.flows += values.readBigUInt64LE(o + 16);
  }
  return c;
}

/** Sums one steer_fwd entry (possible CPUs, 8 bytes each) at `at`. */
export function sumPerCpuPackets(values: Buffer, at: number, cpus: number): bigint {
  let n = 0n;
  for (let cpu = 0; cpu < cpus; cpu++) n += values.readBigUInt64LE(at + cpu * FWD_COUNTER_LAYOUT.size);
  return n;
}

/** Counts packed steer_flows values that name one of the ids. */
export function countFlowsOf(values: Buffer, count: number, ids: ReadonlySet<number>): number {
  let n = 0;
  for (let i = 0; i < count; i++) if (ids.has(values.readUInt32LE(i * FLOW_VALUE_LAYOUT.size))) n++;
  return n;
}
