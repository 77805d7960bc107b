import type { MapShape } from './bpf/map-access.js';
import type { MapSpec, UpgradeContext } from './bpf/map-spec.js';
import { mapPinnedArray, NativeMap, nativeBpfMapProblem, BPF_F_MMAPABLE } from './bpf/native-map.js';
import type { ObjectSpec } from './bpf/object-loader.js';
import { pinFolder } from './bpf/pin-folder.js';
import { CHAIN_MAP } from './bpf/xdp-chain.js';
import { CONN_SLOT_BYTES, CONN_TABLE_SHAPE, ConnLockTable } from './conn-lock-table.js';
import {
  CONN_SLOT_LAYOUT,
  decodeLockValueAt,
  ENDPOINT_KEY_LAYOUT,
  LEGACY_TUPLE_MAP_MAX_ENTRIES,
  LEGACY_TUPLE_MAP_NAME,
  LOCK_CONN_MAP_NAME,
  LOCK_MAP_MAX_ENTRIES,
  LOCK_MAP_NAME,
  LOCK_VALUE_LAYOUT,
  TUPLE_KEY_LAYOUT,
} from './lock-map-codec.js';
import { HELD_MAPS } from './packet-hold.js';

/*
 * The lock's object (bpf/lock.c) as the BPF lifecycle loads it: its program, its maps declared
 * once with their layout versions, the upgrade that carries connection locks over from the
 * older hash map, and where each of them is pinned.
 */

/** SEC("xdp") function name in bpf/lock.c. */
export const LOCK_PROG_NAME = 'godwit_lock';

/** What a lock map is: its name in bpf/lock.c, key and value sizes, capacity (bpf/lock_maps.h). */
export type LockMapShape = MapShape;

export const ENDPOINT_MAP_SHAPE: MapShape = {
  name: LOCK_MAP_NAME,
  keySize: ENDPOINT_KEY_LAYOUT.size,
  valueSize: LOCK_VALUE_LAYOUT.size,
  maxEntries: LOCK_MAP_MAX_ENTRIES,
};

/** The hash map of connection entries of layouts 2 and 3 (LEGACY_TUPLE_MAP_NAME). */
export const LEGACY_TUPLE_MAP_SHAPE: MapShape = {
  name: LEGACY_TUPLE_MAP_NAME,
  keySize: TUPLE_KEY_LAYOUT.size,
  valueSize: LOCK_VALUE_LAYOUT.size,
  maxEntries: LEGACY_TUPLE_MAP_MAX_ENTRIES,
};

/** godwit_lock_conn as mapPinnedArray() checks it. */
export const CONN_ARRAY_SHAPE = { name: LOCK_CONN_MAP_NAME, valueSize: CONN_SLOT_BYTES, maxEntries: CONN_TABLE_SHAPE.slots };

/** Every path of the lock in a host's pin folder. */
export interface LockPins {
  dir: string;
  /** The lock program (slot ChainSlot.lock of the XDP chain). */
  prog: string;
  /** Where the lock program was pinned when older versions attached it directly; install removes it. */
  formerProg: string;
  /** The folder of every map pin, named after the map. */
  mapsDir: string;
  /** godwit_lock_ep: endpoint entries. */
  lockMap: string;
  /** godwit_lock_conn: the table of exact-connection entries (conn-lock-table.ts). */
  connTable: string;
  /** godwit_lock_tuple: where layouts 2 and 3 kept connection entries; install upgrades it away. */
  legacyTupleMap: string;
  /** godwit_held: the ring of stopped packets (agent/linux/packet-hold.ts). */
  heldRing: string;
  /** godwit_lock_any: the bound on address-wide entries (address-wide-gate.ts). */
  addressWideGate: string;
}

export function lockPins(pinDir: string): LockPins {
  const f = pinFolder(pinDir);
  return {
    dir: f.dir,
    prog: f.progPin(LOCK_PROG_NAME),
    formerProg: `${f.dir}/prog`,
    mapsDir: f.mapsDir,
    lockMap: f.mapPin(LOCK_MAP_NAME),
    connTable: f.mapPin(LOCK_CONN_MAP_NAME),
    legacyTupleMap: f.mapPin(LEGACY_TUPLE_MAP_NAME),
    heldRing: f.mapPin(HELD_MAPS[0].name),
    addressWideGate: f.mapPin(ADDRESS_WIDE_GATE_MAP.name),
  };
}

/**
 * godwit_lock_any: a u32 in a one-slot array, how many address-wide entries godwit_lock_ep may
 * hold (address-wide-gate.ts). A new pin starts at 0, right for older endpoint maps, which
 * never held one.
 */
export const ADDRESS_WIDE_GATE_MAP: MapSpec = { name: 'godwit_lock_any', type: 'array', keySize: 4, valueSize: 4, maxEntries: 1, structs: [], version: 1 };

/** godwit_lock_ep: unchanged since layout 1. */
export const ENDPOINT_MAP: MapSpec = { ...ENDPOINT_MAP_SHAPE, type: 'hash', structs: [ENDPOINT_KEY_LAYOUT, LOCK_VALUE_LAYOUT], version: 1 };

/**
 * The connection locks. Version 1 was the hash map godwit_lock_tuple (lock layouts 2 and 3);
 * version 2 is the table godwit_lock_conn that the agent writes in memory.
 */
export const CONN_TABLE_MAP: MapSpec = {
  ...CONN_ARRAY_SHAPE,
  type: 'array',
  keySize: 4,
  flags: BPF_F_MMAPABLE,
  structs: [CONN_SLOT_LAYOUT],
  version: 2,
  upgrades: [{ fromVersion: 1, reads: [LEGACY_TUPLE_MAP_NAME], copy: copyLegacyTupleLocks }],
};

/** bpf/lock.c: the lock program, its maps, the held-packet maps, and the chain it runs in. */
export function lockObject(objectPath: string): ObjectSpec {
  return { name: 'lock', objectPath, programs: [LOCK_PROG_NAME], maps: [ENDPOINT_MAP, CONN_TABLE_MAP, ADDRESS_WIDE_GATE_MAP, ...HELD_MAPS], sharedMaps: [CHAIN_MAP] };
}

/**
 * Copies the running entries of a layout-3 tuple hash map into the new connection table, each
 * with its own version and deadline. Without the native addon it cannot read the old map (nor
 * write the table): those locks then end with their pin, as a lease would.
 */
async function copyLegacyTupleLocks(ctx: UpgradeContext): Promise<void> {
  const from = ctx.from[LEGACY_TUPLE_MAP_NAME];
  const problem = nativeBpfMapProblem();
  if (problem) {
    ctx.log.warn({ pin: from, problem }, 'cannot copy connection locks of the older layout without the native addon; they end with their pin');
    return;
  }
  const held = await new NativeMap(from, LEGACY_TUPLE_MAP_SHAPE).dump();
  const table = new ConnLockTable(mapPinnedArray(ctx.to, CONN_ARRAY_SHAPE).memory);
  const now = process.hrtime.bigint();
  let copied = 0;
  for (let i = 0; i < held.count; i++) {
    const lease = decodeLockValueAt(held.values, i * LOCK_VALUE_LAYOUT.size);
    if (lease.deadlineNs <= now) continue;
    const key = held.keys.subarray(i * TUPLE_KEY_LAYOUT.size, (i + 1) * TUPLE_KEY_LAYOUT.size);
    copied += table.lock(key, lease.version, lease.deadlineNs).locked;
  }
  ctx.log.info({ from, entries: held.count, copied }, 'connection locks of the older layout copied into the connection table');
}
