import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { batchShape } from '../../agent/linux/bpf/map-spec.js';
import { BATCH_MAP_TYPES } from '../../agent/linux/bpf/native-map.js';
import { structLayoutFromBtf } from '../../agent/linux/bpf/struct-layout.js';
import {
  ADDR_LOCAL,
  BACKEND_DRAINING,
  BACKEND_LOCAL,
  BACKEND_PRESENT,
  compileSlot,
  COUNTER_LAYOUT,
  encodeAddrKey,
  encodeAddrValue,
  encodeVipKey,
  FWD_COUNTERS,
  FWD_FORWARDED,
  FWD_STALE,
  MaglevTableCache,
  encodeVipValue,
  readBackendRecord,
  RING_STRIDE,
  STEER_FLOWS,
  STEER_MAPS,
  STEER_MAX_ADDRS,
  STEER_MAX_ID,
  STEER_MAX_SERVICES,
  STEER_RING_SIZE,
  STEER_RNAT,
  STEER_VXLAN_ADDR_MARKER,
  STEER_VXLAN_FLAG_FORWARDED,
  STEER_VXLAN_PORT,
  STEER_VXLAN_VNI,
  SteeringTableError,
  sumPerCpuCounter,
  writeBackendRecord,
} from '../../agent/linux/steer-map-codec.js';
import type { SteeringBackend, SteeringTable } from '../../agent/steering.js';
import { execCommand } from '../../lib/exec.js';

const repo = fileURLToPath(new URL('../../', import.meta.url));

const backend = (id: number, hostAddress: string, extra: Partial<SteeringBackend> = {}): SteeringBackend => ({
  id,
  address: `10.0.0.${id}`,
  port: 8000 + id,
  weight: 1,
  host: hostAddress,
  hostAddress,
  draining: false,
  ...extra,
});
const table: SteeringTable = {
  generation: 7,
  services: [
    { id: 5, proto: 'tcp', vip: '203.0.113.1', vipPort: 80, backends: [backend(1, '198.19.2.2'), backend(2, '198.19.3.2', { draining: true })] },
    { id: 6, proto: 'udp', vip: '203.0.113.1', vipPort: 53, backends: [] },
  ],
};

describe('steering table compilation', () => {
  it('marks local and draining backends, leaves drained ones out of the ring, numbers rings in order', () => {
    const image = compileSlot(table, new Set(['198.19.2.2']));
    expect(image.generation).toBe(7);
    expect(image.backends.map((b) => [b.id, b.flags, b.serviceId])).toEqual([
      [1, BACKEND_PRESENT | BACKEND_LOCAL, 5],
      [2, BACKEND_PRESENT | BACKEND_DRAINING, 5],
    ]);
    expect(image.services.map((s) => s.ring)).toEqual([0, 1]);
    expect(new Set(image.services[0].table)).toEqual(new Set([1]));
    expect(new Set(image.services[1].table)).toEqual(new Set([0])); // no backend takes new flows
  });

  it('reuses a service\'s Maglev table while its backends and weights stay the same', () => {
    const cache = new MaglevTableCache();
    const first = compileSlot(table, new Set(), cache);
    const again = compileSlot({ ...table, generation: 8 }, new Set(), cache);
    expect(again.services[0].table).toBe(first.services[0].table);
    const reweighted = compileSlot({ generation: 9, services: [{ ...table.services[0], backends: [backend(1, 'x', { hostAddress: '198.19.2.2', weight: 3 }), backend(4, '198.19.2.2')] }] }, new Set(), cache);
    expect(reweighted.services[0].table).not.toBe(first.services[0].table);
    expect(new Set(reweighted.services[0].table)).toEqual(new Set([1, 4]));
  });

  it('refuses tables the maps cannot hold, naming what to fix', () => {
    const bad = (t: Partial<SteeringTable['services'][0]>, g = 1) => () => compileSlot({ generation: g, services: [{ ...table.services[0], ...t }] }, new Set());
    expect(bad({ id: STEER_MAX_ID })).toThrow(SteeringTableError);
    expect(bad({ vip: '::1' })).toThrow(/"::1" is not an IPv4 address/);
    expect(bad({ vipPort: 0 })).toThrow(/port must be 1..65535/);
    expect(bad({ backends: [backend(1, '198.19.2.2', { weight: 0 })] })).toThrow(/weight must be 1..1000/);
    expect(bad({ backends: [backend(1, '198.19.2.2'), backend(1, '198.19.2.2')] })).toThrow(/id used twice/);
    expect(bad({}, 0)).toThrow(/generation 0/);
    const many = Array.from({ length: STEER_MAX_SERVICES + 1 }, (_, i) => ({ ...table.services[1], id: i + 1, vipPort: i + 1 }));
    expect(() => compileSlot({ generation: 1, services: many }, new Set())).toThrow(/at most 128/);
  });

  it('encodes VIP keys in network order with the slot, and backend records at their index', () => {
    expect(encodeVipKey({ proto: 'udp', vip: '203.0.113.1', vipPort: 53 }, 1).toString('hex')).toBe('cb00710100351101');
    expect(encodeVipValue({ id: 5, ring: 3 }).toString('hex')).toBe('0500000003000000');
    const mem = Buffer.alloc(2 * STEER_MAX_ID * 16);
    const r = { id: 9, address: '10.1.2.3', port: 8080, flags: 3, hostAddress: '198.19.2.2', serviceId: 5 };
    writeBackendRecord(mem, 1, r);
    expect(mem.subarray((STEER_MAX_ID + 9) * 16, (STEER_MAX_ID + 10) * 16).toString('hex')).toBe('0a0102031f900300c613020205000000');
    expect(readBackendRecord(mem, 1, 9)).toEqual(r);
  });

  it('compiles workload addresses, local by their host address, and refuses duplicates', () => {
    const t: SteeringTable = {
      generation: 3,
      services: [],
      addresses: [
        { address: '198.19.12.1', host: 'a', hostAddress: '198.19.2.2' },
        { address: '198.19.13.1', host: 'b', hostAddress: '198.19.3.2' },
      ],
    };
    expect(compileSlot(t, new Set(['198.19.2.2'])).addresses).toEqual([
      { address: '198.19.12.1', hostAddress: '198.19.2.2', local: true },
      { address: '198.19.13.1', hostAddress: '198.19.3.2', local: false },
    ]);
    expect(compileSlot({ generation: 1, services: [] }, new Set()).addresses).toEqual([]); // tables from before addresses moved
    expect(() => compileSlot({ ...t, addresses: [t.addresses![0], { ...t.addresses![0], host: 'c' }] }, new Set())).toThrow(/listed twice/);
    expect(() => compileSlot({ ...t, addresses: [{ ...t.addresses![0], hostAddress: 'b' }] }, new Set())).toThrow(/"b" is not an IPv4 address/);
    const many = Array.from({ length: STEER_MAX_ADDRS + 1 }, (_, i) => ({ address: `10.${i >> 8}.${i & 255}.1`, host: 'a', hostAddress: '198.19.2.2' }));
    expect(() => compileSlot({ generation: 1, services: [], addresses: many }, new Set())).toThrow(/at most 4096/);
  });

  it('encodes address keys in network order with the slot, values with the LOCAL flag', () => {
    expect(encodeAddrKey('198.19.12.1', 1).toString('hex')).toBe('c6130c0101000000');
    expect(encodeAddrValue({ hostAddress: '198.19.3.2', local: false }).toString('hex')).toBe('c613030200000000');
    expect(encodeAddrValue({ hostAddress: '198.19.3.2', local: true }).readUInt32LE(4)).toBe(ADDR_LOCAL);
  });

  it('sums per-CPU counters', () => {
    const v = Buffer.alloc(3 * 24);
    for (let cpu = 0; cpu < 3; cpu++) {
      v.writeBigUInt64LE(BigInt(cpu + 1), cpu * 24);
      v.writeBigUInt64LE(100n, cpu * 24 + 8);
      v.writeBigUInt64LE(1n, cpu * 24 + 16);
    }
    expect(sumPerCpuCounter(v, 0, 3)).toEqual({ packets: 6n, bytes: 300n, flows: 3n });
  });
});

describe('steering map layouts against the compiled program', () => {
  let btf: { types: { id: number; kind: string; name: string; type_id?: number; nr_elems?: number; members?: { name: string; type_id: number }[] }[] };

  beforeAll(async () => {
    await execCommand(`${repo}scripts/build-bpf.sh`, [], { timeoutMs: 60_000 });
    btf = JSON.parse((await execCommand('bpftool', ['-j', 'btf', 'dump', 'file', `${repo}build/bpf/steer.o`])).stdout);
  });

  // A BTF-defined map is a VAR of an anonymous struct whose members point at int[N] arrays.
  const declared = (name: string) => {
    const byId = new Map(btf.types.map((t) => [t.id, t]));
    const def = byId.get(btf.types.find((t) => t.kind === 'VAR' && t.name === name)!.type_id!)!;
    const member = (m: string) => def.members!.find((x) => x.name === m);
    const pointee = (m: string) => byId.get(byId.get(member(m)!.type_id)!.type_id!)!;
    return { pointee, has: (m: string) => member(m) !== undefined };
  };

  it.each(Object.values(STEER_MAPS))('declares $name with the type, size, flags and structs the codec assumes', (m) => {
    const d = declared(m.name);
    expect(d.pointee('type').nr_elems).toBe(BATCH_MAP_TYPES[batchShape(m).type ?? 'hash']);
    expect(d.pointee('max_entries').nr_elems).toBe(m.maxEntries);
    expect(d.has('map_flags') ? d.pointee('map_flags').nr_elems : 0).toBe(m.flags ?? 0);
    expect(d.pointee('value').name).toBe(m.structs[m.structs.length - 1].name);
    if (m.structs.length === 2) expect(d.pointee('key').name).toBe(m.structs[0].name);
    for (const l of m.structs) expect(structLayoutFromBtf(btf, l.name)).toEqual(l);
    expect(m.name.length).toBeLessThanOrEqual(15); // the kernel's name is the pin's name
  });

  it('lays rings out at the stride the agent writes them', () => {
    expect(RING_STRIDE).toBe(Math.ceil((STEER_RING_SIZE * 4) / 8) * 8);
    expect(COUNTER_LAYOUT.size % 8).toBe(0);
  });

  it('carries the header\'s capacities, tunnel constants and a version per map', async () => {
    const text = await readFile(`${repo}bpf/steer_maps.h`, 'utf8');
    const define = (name: string) => Number(new RegExp(`#define ${name} (0x[0-9a-f]+|\\d+)u?\\b`).exec(text)?.[1]);
    expect(define('GODWIT_STEER_MAX_ID')).toBe(STEER_MAX_ID);
    expect(define('GODWIT_STEER_MAX_SERVICES')).toBe(STEER_MAX_SERVICES);
    expect(define('GODWIT_STEER_RING_SIZE')).toBe(STEER_RING_SIZE);
    expect(define('GODWIT_STEER_FLOWS')).toBe(STEER_FLOWS);
    expect(define('GODWIT_STEER_RNAT')).toBe(STEER_RNAT);
    expect(define('GODWIT_VXLAN_PORT')).toBe(STEER_VXLAN_PORT);
    expect(define('GODWIT_VXLAN_VNI')).toBe(STEER_VXLAN_VNI);
    expect(define('GODWIT_STEER_MAX_ADDRS')).toBe(STEER_MAX_ADDRS);
    expect(define('GODWIT_VXLAN_ADDR_MARKER')).toBe(STEER_VXLAN_ADDR_MARKER);
    expect(define('GODWIT_VXLAN_FLAG_FORWARDED')).toBe(STEER_VXLAN_FLAG_FORWARDED);
    expect(define('GODWIT_ADDR_LOCAL')).toBe(ADDR_LOCAL);
    expect([define('GODWIT_FWD_FORWARDED'), define('GODWIT_FWD_STALE'), define('GODWIT_FWD_COUNTERS')]).toEqual([FWD_FORWARDED, FWD_STALE, FWD_COUNTERS]);
    const versions: Record<string, number> = {
      steer_meta: define('GODWIT_STEER_META_VERSION'),
      steer_vips: define('GODWIT_STEER_VIPS_VERSION'),
      steer_backends: define('GODWIT_STEER_BACKENDS_VERSION'),
      steer_rings: define('GODWIT_STEER_RINGS_VERSION'),
      steer_flows: define('GODWIT_STEER_FLOWS_VERSION'),
      steer_rnat: define('GODWIT_STEER_RNAT_VERSION'),
      steer_svc_stats: define('GODWIT_STEER_STATS_VERSION'),
      steer_be_stats: define('GODWIT_STEER_STATS_VERSION'),
      steer_addrs: define('GODWIT_STEER_ADDRS_VERSION'),
      steer_fwd: define('GODWIT_STEER_FWD_VERSION'),
    };
    for (const m of Object.values(STEER_MAPS)) expect(m.version, m.name).toBe(versions[m.name]);
  });
});
