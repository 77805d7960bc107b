import { closeSync, existsSync, fstatSync, openSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BatchMapType, MapAccess, MapDump, MapShape, PackedEntries } from './map-access.js';

/*
 * The native BPF map addon (native/bpfmap, built by scripts/build-native.sh) and the map access
 * on top of it: every read or write of a whole batch of entries is one bpf(2) call on
 * Buffers of packed keys and values, in this process. No bpftool process, no per-entry syscall.
 */

/** Where node-gyp leaves the addon, relative to the repository root. */
const ADDON_PATH = 'native/bpfmap/build/Release/bpfmap.node';

/** bpf_map_type values (uapi linux/bpf.h) of the maps read and written in batches. */
export const BATCH_MAP_TYPES: Record<BatchMapType, number> = { hash: 1, array: 2, percpu_array: 6, lru_hash: 9 };

/** Possible CPUs (a per-CPU map holds a value for each), from "0-1" or "0,2-5". */
export function possibleCpus(): number {
  const text = readFileSync('/sys/devices/system/cpu/possible', 'utf8').trim();
  let max = 0;
  for (const part of text.split(',')) max = Math.max(max, Number(part.split('-').pop()));
  return max + 1;
}

/**
 * Bytes of one entry's value as the kernel's batch calls lay it out: a per-CPU map's value is
 * one copy per possible CPU, each rounded up to 8 bytes.
 */
export function batchValueBytes(shape: MapShape): number {
  return shape.type === 'percpu_array' ? Math.ceil(shape.valueSize / 8) * 8 * possibleCpus() : shape.valueSize;
}

/** How the addon reaches the kernel for each kind of operation ('element': the kernel refused batches). */
export interface BpfMapMethods {
  lookup: 'batch' | 'element';
  update: 'batch' | 'element';
  delete: 'batch' | 'element';
}

/** A pinned map, opened: its fd and what BPF_OBJ_GET_INFO_BY_FD says about it. */
export interface OpenedBpfMap {
  fd: number;
  id: number;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
  /** The kernel's copy of the name: at most 15 characters. */
  name: string;
}

/** The addon's exports (native/bpfmap/bpfmap.c); each throws an Error with code, errno, syscall. */
export interface BpfMapAddon {
  open(path: string): OpenedBpfMap;
  close(fd: number): void;
  update(fd: number, keys: Buffer, values: Buffer, keySize: number, valueSize: number): number;
  delete(fd: number, keys: Buffer, keySize: number): number;
  dump(fd: number, keySize: number, valueSize: number): PackedEntries;
  /** The values of these keys, one lookup each; found[i] is 0 (and the value zeros) for a key the map does not hold. */
  lookup(fd: number, keys: Buffer, keySize: number, valueSize: number): { values: Buffer; found: Buffer };
  methods(): BpfMapMethods;
  /** Records taken from a BPF ring buffer map: [u32 length LE][record] each (held.c). */
  ringDrain(fd: number, size: number): Buffer;
  /** Of ringDrain's records: the IPv4 packets to these endpoint keys (packed), and the other records. */
  select(records: Buffer, endpointKeys: Buffer): { taken: Buffer; kept: Buffer };
  /** The same packets with each connection's contiguous TCP data joined (held.c says how). */
  coalesce(packets: Buffer): Buffer;
  /** Sends [u32 length LE][IPv4 packet] items through a raw socket; returns how many went. */
  rawSend(packets: Buffer): number;
  /** The values of an mmappable array map, shared with the kernel; unmapped when collected. */
  mmap(fd: number, bytes: number): ArrayBuffer;
  /**
   * The connection lock table's writer (conn_table.c); a full table throws with code ENTRIES or
   * PROBE. keptNewer: requested keys an entry with a newer version kept (the codec's KeptNewer).
   */
  connLock(memory: ArrayBuffer, slots: number, maxProbe: number, room: number, keys: Uint8Array, version: bigint, deadlineNs: bigint): { locked: number; inserted: number; keptNewer: { index: number; heldVersion: bigint }[] };
  connUnlock(memory: ArrayBuffer, slots: number, maxProbe: number, keys: Uint8Array, version: bigint): { unlocked: number; keptNewer: { index: number; heldVersion: bigint }[] };
  connSweep(memory: ArrayBuffer, slots: number, nowNs: bigint): number;
  /** godwit_conn_hash (bpf/lock_maps.h) of one 16-byte tuple key. */
  connHash(key: Uint8Array): number;
  /** BPF_PROG_TEST_RUN of a pinned program (test_run.c): `repeat` runs on data, the kernel's mean ns per run. */
  testRun(pin: string, data: Buffer, repeat: number, outSize: number): ProgTestRun;
  /** One BPF_PROG_TEST_RUN per packet of a packed Buffer; durationNs sums the kernel's per-run times. */
  testRunEach(pin: string, packets: Buffer, packetSize: number): ProgTestRunEach;
}

export interface ProgTestRun {
  retval: number;
  durationNs: number;
  /** The packet as the program left it. */
  data: Buffer;
}

export interface ProgTestRunEach {
  runs: number;
  durationNs: number;
  /** How many runs returned each value (keyed by the value; 'other' for 8 and above). */
  retvals: Record<string, number>;
}

/** The addon is not built or does not load here; build it with scripts/build-native.sh. */
export class NativeAddonUnavailableError extends Error {
  constructor(readonly problem: string) {
    super(`native BPF map addon unavailable: ${problem}`);
    this.name = 'NativeAddonUnavailableError';
  }
}

/** A bpf(2) call on a pinned map failed; `applied` entries of a write went in before it did. */
export class BpfMapError extends Error {
  constructor(
    readonly pin: string,
    /** errno name, e.g. E2BIG (the map is full), ENOENT (no such pin). */
    readonly code: string,
    readonly syscall: string,
    readonly applied: number | undefined,
    message: string,
  ) {
    super(`${pin}: ${message}`);
    this.name = 'BpfMapError';
  }
}

/** A pinned map is not the map a caller expects (wrong type, key or value size). */
export class BpfMapShapeError extends Error {
  constructor(
    readonly pin: string,
    readonly problem: string,
  ) {
    super(`${pin}: ${problem}`);
    this.name = 'BpfMapShapeError';
  }
}

/**
 * The pin names another map than the one a write was planned against (its entries were read
 * from map `expectedId`; the lock was reinstalled meanwhile). Nothing was written.
 */
export class BpfMapReplacedError extends Error {
  constructor(
    readonly pin: string,
    readonly expectedId: number,
    readonly foundId: number,
  ) {
    super(`${pin}: now names map ${foundId}, not map ${expectedId} that the write was planned against`);
    this.name = 'BpfMapReplacedError';
  }
}

let loaded: { addon: BpfMapAddon } | { problem: string } | undefined;

/** The repository root: the nearest folder above this module with native/bpfmap (source or dist/ layout). */
function repoRoot(): string | undefined {
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; ) {
    if (existsSync(join(dir, 'native', 'bpfmap', 'binding.gyp'))) return dir;
    const up = dirname(dir);
    if (up === dir) return undefined;
    dir = up;
  }
}

function load(): { addon: BpfMapAddon } | { problem: string } {
  if (loaded) return loaded;
  const root = repoRoot();
  const path = process.env.GODWIT_BPFMAP_ADDON ?? (root ? join(root, ADDON_PATH) : undefined);
  if (!path) loaded = { problem: `native/bpfmap not found above ${fileURLToPath(import.meta.url)}` };
  else if (!existsSync(path)) loaded = { problem: `${path} is not built; run bash scripts/build-native.sh` };
  else {
    try {
      loaded = { addon: createRequire(import.meta.url)(path) as BpfMapAddon };
    } catch (err) {
      loaded = { problem: `${path} does not load: ${err instanceof Error ? err.message : String(err)}` };
    }
  }
  return loaded;
}

function addon(): BpfMapAddon {
  const l = load();
  if ('problem' in l) throw new NativeAddonUnavailableError(l.problem);
  return l.addon;
}

/** Why the addon cannot be used here, or undefined when it can. */
export function nativeBpfMapProblem(): string | undefined {
  const l = load();
  return 'problem' in l ? l.problem : undefined;
}

/** The addon itself, for modules that wrap one of its parts (conn-lock-table.ts). */
export function bpfMapAddon(): BpfMapAddon {
  return addon();
}

/** Whether the kernel has taken batches so far (per operation, process-wide). */
export function bpfMapMethods(): BpfMapMethods {
  return addon().methods();
}

function asBpfMapError(pin: string, err: unknown): unknown {
  if (!(err instanceof Error) || typeof (err as { syscall?: unknown }).syscall !== 'string') return err;
  const e = err as Error & { code: string; syscall: string; applied?: number };
  return new BpfMapError(pin, e.code, e.syscall, e.applied, e.message);
}

/**
 * Runs op on the map pinned at `pin`, opened just for it (BPF_OBJ_GET, then close). Opening per
 * operation costs two syscalls and means a pin replaced meanwhile (uninstall, reinstall) is
 * never written through a stale fd.
 */
function withPinnedMap<T>(pin: string, shape: MapShape, op: (m: BpfMapAddon, fd: number, mapId: number) => T, expectMapId?: number): T {
  let mapId = 0;
  const type = shape.type ?? 'hash';
  return withOpenedMap(
    pin,
    (opened) => {
      const want = `${type} key ${shape.keySize} value ${shape.valueSize}`;
      const have = `${opened.type === BATCH_MAP_TYPES[type] ? type : `type ${opened.type}`} key ${opened.keySize} value ${opened.valueSize}`;
      if (want !== have) return `expected a ${want} map (${shape.name}), found ${have}`;
      if (expectMapId !== undefined && opened.id !== expectMapId) throw new BpfMapReplacedError(pin, expectMapId, opened.id);
      mapId = opened.id;
      return undefined;
    },
    (m, fd) => op(m, fd, mapId),
  );
}

/** Opens the pin, refuses it when `problem` finds one, runs op, closes. */
function withOpenedMap<T>(pin: string, problem: (opened: OpenedBpfMap) => string | undefined, op: (m: BpfMapAddon, fd: number) => T): T {
  const m = addon();
  let opened: OpenedBpfMap;
  try {
    opened = m.open(pin);
  } catch (err) {
    throw asBpfMapError(pin, err);
  }
  try {
    const p = problem(opened);
    if (p) throw new BpfMapShapeError(pin, p);
    return op(m, opened.fd);
  } catch (err) {
    throw asBpfMapError(pin, err);
  } finally {
    m.close(opened.fd);
  }
}

/**
 * A pinned map through the addon: one BPF_MAP_LOOKUP_BATCH walk per dump, one
 * BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH per write, about 0.3 µs per entry in the kernel
 * (10,000 entries: 3 ms, measured on this machine kind). Synchronous underneath: the event loop
 * waits for the syscall, which is shorter than a round trip to a worker thread.
 */
export class NativeMap implements MapAccess {
  readonly method = 'native';

  constructor(
    readonly pin: string,
    private readonly shape: MapShape,
  ) {
    addon(); // fail here, at construction, when the addon is missing
  }

  /** Every entry, and the kernel's id of the map they came from; a per-CPU map's values as batchValueBytes() says. */
  async dump(): Promise<MapDump> {
    return withPinnedMap(this.pin, this.shape, (m, fd, mapId) => ({ ...m.dump(fd, this.shape.keySize, batchValueBytes(this.shape)), mapId }));
  }

  /**
   * The values of a few keys (one syscall each; a per-CPU map's values as batchValueBytes()
   * says): for a handful of ids of a large array, where dump() would read all of it.
   */
  async lookup(keys: Buffer): Promise<{ values: Buffer; found: Buffer }> {
    return withPinnedMap(this.pin, this.shape, (m, fd) => m.lookup(fd, keys, this.shape.keySize, batchValueBytes(this.shape)));
  }

  /**
   * Given mapId, refuses (BpfMapReplacedError) a pin that names another map, before writing; also
   * with no keys, so that a plan that writes nothing (every key kept by a newer entry) is still
   * checked against the map it was made for.
   */
  async update(keys: Buffer, values: Buffer, mapId?: number): Promise<void> {
    if (keys.length === 0 && mapId === undefined) return;
    withPinnedMap(this.pin, this.shape, (m, fd) => (keys.length === 0 ? 0 : m.update(fd, keys, values, this.shape.keySize, batchValueBytes(this.shape))), mapId);
  }

  /** Given mapId, refuses (BpfMapReplacedError) a pin that names another map, before deleting (also with no keys, as update()). */
  async delete(keys: Buffer, mapId?: number): Promise<number> {
    if (keys.length === 0 && mapId === undefined) return 0;
    return withPinnedMap(this.pin, this.shape, (m, fd) => (keys.length === 0 ? 0 : m.delete(fd, keys, this.shape.keySize)), mapId);
  }
}

/** bpf_map_type BPF_MAP_TYPE_ARRAY and map flag BPF_F_MMAPABLE (uapi linux/bpf.h). */
const BPF_MAP_TYPE_ARRAY = 2;
export const BPF_F_MMAPABLE = 1 << 10;

/** What an mmappable array map must be: its value size and number of values. */
export interface ArrayMapShape {
  name: string;
  valueSize: number;
  maxEntries: number;
}

/** An mmappable array map's values in this process's memory, and the kernel's id of the map. */
export interface MappedArrayMap {
  memory: ArrayBuffer;
  mapId: number;
}

function arrayMapProblem(o: OpenedBpfMap, shape: ArrayMapShape): string | undefined {
  const describe = (type: string, mmappable: boolean, valueSize: number, entries: number) => `${type}${mmappable ? ' (mmappable)' : ''} of ${entries} ${valueSize}-byte values`;
  const want = describe('array', true, shape.valueSize, shape.maxEntries);
  const have = describe(o.type === BPF_MAP_TYPE_ARRAY ? 'array' : `map type ${o.type}`, (o.flags & BPF_F_MMAPABLE) !== 0, o.valueSize, o.maxEntries);
  return want === have ? undefined : `expected an ${want} (${shape.name}), found ${have}`;
}

/**
 * Maps the values of the mmappable array pinned at `pin` into this process (the fd is closed
 * right away; the mapping keeps the map alive until the ArrayBuffer is collected). The kernel
 * lays the values out back to back, each rounded up to 8 bytes, from the start of the mapping.
 */
export function mapPinnedArray(pin: string, shape: ArrayMapShape): MappedArrayMap {
  let mapId = 0;
  const stride = Math.ceil(shape.valueSize / 8) * 8;
  const bytes = Math.ceil((stride * shape.maxEntries) / 4096) * 4096;
  const memory = withOpenedMap(
    pin,
    (o) => {
      mapId = o.id;
      return arrayMapProblem(o, shape);
    },
    (m, fd) => m.mmap(fd, bytes),
  );
  return { memory, mapId };
}

/**
 * A regular file's bytes mapped into this process (MAP_SHARED over the page cache; unmapped when
 * the Buffer is collected) instead of copied into fresh memory: a file just written is in the
 * page cache, and on this machine kind a first touch of fresh memory costs ~10 ms per MB
 * (readFile of 2.7 MB: 25-38 ms; mapped: 1-7 ms, measured). Only for files nobody truncates
 * while mapped (a read past a truncated end is SIGBUS): files replaced by rename, never
 * rewritten in place. The file is opened read-write because the addon maps it writable; nothing
 * here writes to it.
 */
export function mapFile(path: string): Buffer {
  const fd = openSync(path, 'r+');
  try {
    const size = fstatSync(fd).size;
    if (size === 0) return Buffer.alloc(0);
    return Buffer.from(addon().mmap(fd, size));
  } catch (err) {
    throw asBpfMapError(path, err);
  } finally {
    closeSync(fd);
  }
}

/** The kernel's id of the map pinned at `pin`: whether the pin still names a map mapped earlier. */
export function pinnedMapId(pin: string): number {
  let id = 0;
  withOpenedMap(
    pin,
    (o) => {
      id = o.id;
      return undefined;
    },
    () => undefined,
  );
  return id;
}

/** bpf_map_type BPF_MAP_TYPE_RINGBUF (uapi linux/bpf.h). */
const BPF_MAP_TYPE_RINGBUF = 27;

/** Takes every complete record from the ring pinned at `pin` (of `size` bytes). */
export function drainRing(pin: string, size: number): Buffer {
  return withOpenedMap(
    pin,
    (o) => (o.type === BPF_MAP_TYPE_RINGBUF && o.maxEntries === size ? undefined : `expected a ring buffer of ${size} bytes, found map type ${o.type} of ${o.maxEntries}`),
    (m, fd) => m.ringDrain(fd, size),
  );
}

/**
 * Splits held-ring records ([u32 length LE][record] each) into the IPv4 packets addressed to one
 * of the endpoints (packed [u32 length LE][packet]) and the records of everything else.
 */
export function selectHeld(records: Buffer, endpointKeys: Buffer): { taken: Buffer; kept: Buffer } {
  try {
    return addon().select(records, endpointKeys);
  } catch (err) {
    throw asBpfMapError('select', err);
  }
}

/** Packed IPv4 packets ([u32 length LE][packet]) with each connection's contiguous TCP data joined into one segment. */
export function coalescePackets(packets: Buffer): Buffer {
  try {
    return addon().coalesce(packets);
  } catch (err) {
    throw asBpfMapError('coalesce', err);
  }
}

/** Sends packed IPv4 packets ([u32 length LE][packet]) through a raw socket of this network namespace. */
export function sendRawPackets(packets: Buffer): number {
  try {
    return addon().rawSend(packets);
  } catch (err) {
    throw asBpfMapError('raw socket', err);
  }
}

/** BPF_PROG_TEST_RUN of the program pinned at `pin` on one packet (bench and checksum tests). */
export function progTestRun(pin: string, data: Buffer, repeat = 1, outSize = data.length + 256): ProgTestRun {
  try {
    return addon().testRun(pin, data, repeat, outSize);
  } catch (err) {
    throw asBpfMapError(pin, err);
  }
}

/** BPF_PROG_TEST_RUN once per packet of a packed Buffer of equal-size packets. */
export function progTestRunEach(pin: string, packets: Buffer, packetSize: number): ProgTestRunEach {
  try {
    return addon().testRunEach(pin, packets, packetSize);
  } catch (err) {
    throw asBpfMapError(pin, err);
  }
}
