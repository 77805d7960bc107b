import { pino, type Logger } from 'pino';
import { endpointProblem, formatEndpoint, type Endpoint } from '../../lib/endpoint.js';
import { CommandError, type Executor } from '../../lib/exec.js';
import { LockRequestError, type FourTuple, type LockEntry, type NetLock, type TupleLockEntry } from '../netlock.js';
import { BPF_F_MMAPABLE, BpfMapReplacedError, mapPinnedArray, NativeAddonUnavailableError, nativeBpfMapProblem, NativeLockMap, pinnedMapId } from './bpf-map-native.js';
import { CONN_SLOT_BYTES, CONN_TABLE_SHAPE, ConnLockTable } from './conn-lock-table.js';
import { HELD_RING_BYTES } from './packet-hold.js';
import {
  decodeEndpointKey,
  decodeLockValueAt,
  CONN_SLOT_LAYOUT,
  decodeTupleKey,
  encodeEndpointKey,
  encodeEndpointKeys,
  encodeTupleKeys,
  ENDPOINT_KEY_LAYOUT,
  expiredKeys,
  fromBpftoolHex,
  kernelMapName,
  layoutMismatch,
  LOCK_MAP_MAX_ENTRIES,
  LOCK_MAP_NAME,
  LEGACY_TUPLE_MAP_MAX_ENTRIES,
  LEGACY_TUPLE_MAP_NAME,
  LOCK_CONN_MAP_NAME,
  LOCK_VALUE_LAYOUT,
  planLock,
  planUnlock,
  structLayoutFromBtf,
  TUPLE_KEY_LAYOUT,
  type KeptNewer,
  type PackedEntries,
  type StructLayout,
} from './lock-map-codec.js';
import { LockMirror } from './lock-mirror.js';

/** SEC("xdp") function name in bpf/lock.c; how an attached program is recognised as ours. */
export const LOCK_PROG_NAME = 'godwit_lock';

/** Where bpffs must be mounted; shared by every network namespace on the machine. */
const BPFFS_ROOT = '/sys/fs/bpf';

/** bpftool and ip answer in milliseconds; a hung one must not hold a migration forever. */
const COMMAND_TIMEOUT_MS = 30_000;

/** IFLA_XDP_ATTACHED values as `ip -j link` reports them (uapi linux/if_link.h). */
const XDP_MODE_NAMES: Record<number, XdpMode | 'offload' | 'multi'> = { 1: 'native', 2: 'generic', 3: 'offload', 4: 'multi' };

export type XdpMode = 'native' | 'generic';

/**
 * How the agent reads and writes the lock maps: `native`, the addon's batch syscalls in this
 * process (native/bpfmap); `bpftool`, a bpftool process per operation, the reference to compare with.
 */
export type LockMapMethod = 'native' | 'bpftool';

/** Rows past this many in a log line are only counted: a lock of 100,000 connections is one line. */
const LOG_SAMPLE = 5;

export interface EbpfNetLockOptions {
  exec: Executor;
  /** The host's interface whose ingress is locked, e.g. eth0. */
  iface: string;
  /**
   * This host's own folder on bpffs, e.g. /sys/fs/bpf/godwit/<host>. bpffs is shared by all
   * network namespaces, so every lab host needs its own.
   */
  pinDir: string;
  /** The compiled bpf/lock.c (build/bpf/lock.o). */
  objectPath: string;
  /**
   * Default: `native` when the addon is built (scripts/build-native.sh), else `bpftool` with a
   * warning. Map access never goes through `exec`: native calls are syscalls of this process, and
   * bpffs (where the pins live) is the same in every network namespace.
   */
  mapMethod?: LockMapMethod;
  log?: Logger;
}

/** A pinned lock map's layout is not the one this agent encodes; reusing it would corrupt entries. */
export class LockMapLayoutError extends Error {
  constructor(
    readonly pinPath: string,
    readonly problem: string,
  ) {
    super(`pinned map ${pinPath} has another layout (${problem}); migrate it or uninstall the lock on this host first`);
    this.name = 'LockMapLayoutError';
  }
}

/** Another XDP program owns the interface; the lock will not replace it. */
export class XdpSlotTakenError extends Error {
  constructor(
    readonly iface: string,
    readonly progName: string,
    readonly progId: number,
  ) {
    super(`interface ${iface} already runs XDP program "${progName}" (id ${progId}); detach it before installing the godwit lock`);
    this.name = 'XdpSlotTakenError';
  }
}

/** Every path the driver pins: the one place that knows the layout of a host's pin folder. */
export interface LockPins {
  dir: string;
  /** The program the interface runs. */
  prog: string;
  /** A freshly loaded program before it replaces `prog`. */
  progStaging: string;
  /** bpftool `pinmaps` folder: one pin per map, named after the map. */
  mapsDir: string;
  /** godwit_lock_ep: endpoint entries. */
  lockMap: string;
  /** godwit_lock_conn: the table of exact-connection entries (conn-lock-table.ts). */
  connTable: string;
  /** godwit_lock_tuple: where layouts 2 and 3 kept connection entries; install() migrates it away. */
  legacyTupleMap: string;
  /** godwit_held: the ring of stopped packets (agent/linux/packet-hold.ts). */
  heldRing: string;
}

export function lockPins(pinDir: string): LockPins {
  const dir = pinDir.replace(/\/+$/, '');
  if (!dir.startsWith(`${BPFFS_ROOT}/`)) throw new RangeError(`pin dir "${pinDir}" must be a folder under ${BPFFS_ROOT}/`);
  // No dots: bpffs reserves them and fails any lookup of a name with a dot with EPERM (even
  // `rm -f` of a missing pin). No spaces: bpftool batch splits its lines on whitespace.
  if (!/^[A-Za-z0-9_/-]+$/.test(dir.slice(BPFFS_ROOT.length))) throw new RangeError(`pin dir "${pinDir}" may only use [A-Za-z0-9_/-] below ${BPFFS_ROOT}`);
  const mapsDir = `${dir}/maps`;
  return {
    dir,
    prog: `${dir}/prog`,
    progStaging: `${dir}/prog_staging`,
    mapsDir,
    lockMap: `${mapsDir}/${LOCK_MAP_NAME}`,
    connTable: `${mapsDir}/${LOCK_CONN_MAP_NAME}`,
    legacyTupleMap: `${mapsDir}/${LEGACY_TUPLE_MAP_NAME}`,
    heldRing: `${mapsDir}/${HELD_MAPS[0].name}`,
  };
}

/** What a lock map is: its name in bpf/lock.c, key and value sizes, capacity (bpf/lock_maps.h). */
export interface LockMapShape {
  name: string;
  keySize: number;
  valueSize: number;
  maxEntries: number;
}

export const ENDPOINT_MAP_SHAPE: LockMapShape = {
  name: LOCK_MAP_NAME,
  keySize: ENDPOINT_KEY_LAYOUT.size,
  valueSize: LOCK_VALUE_LAYOUT.size,
  maxEntries: LOCK_MAP_MAX_ENTRIES,
};

/** The hash map of connection entries of layouts 2 and 3 (LEGACY_TUPLE_MAP_NAME). */
export const LEGACY_TUPLE_MAP_SHAPE: LockMapShape = {
  name: LEGACY_TUPLE_MAP_NAME,
  keySize: TUPLE_KEY_LAYOUT.size,
  valueSize: LOCK_VALUE_LAYOUT.size,
  maxEntries: LEGACY_TUPLE_MAP_MAX_ENTRIES,
};

/** godwit_lock_conn as mapPinnedArray() checks it. */
const CONN_ARRAY_SHAPE = { name: LOCK_CONN_MAP_NAME, valueSize: CONN_SLOT_BYTES, maxEntries: CONN_TABLE_SHAPE.slots };

/**
 * Reads and writes of one pinned lock map, whole batches at a time: keys and values packed
 * back to back in one Buffer each (the layout of the kernel's batch calls).
 */
export interface LockMapAccess {
  readonly pin: string;
  readonly method: LockMapMethod;
  /** Every entry. */
  dump(): Promise<LockMapDump>;
  /**
   * Creates or overwrites every entry; on a failure part way the earlier ones stay written.
   * Given a mapId (a dump's), a pin that now names another map is refused before anything is
   * written (BpfMapReplacedError); an access that cannot tell (bpftool) ignores it.
   */
  update(keys: Buffer, values: Buffer, mapId?: number): Promise<void>;
  /** Deletes the entries of these keys, skipping keys the map does not hold; returns how many went. mapId as for update(). */
  delete(keys: Buffer, mapId?: number): Promise<number>;
}

/** Every entry of a lock map, with the kernel's id of the map when the access knows it (native). */
export interface LockMapDump extends PackedEntries {
  mapId?: number;
}

/**
 * Lock map access through bpftool: one process per dump, one per group of writes
 * (`bpftool batch`, which reopens the pinned map per line: 10,000 lines take about 100 ms,
 * FIELD-NOTES). The reference the native path is measured against, and the fallback where the
 * addon is not built. It cannot tell which map a pin names without one more process, so it
 * reports no map id and checks none.
 */
export class BpftoolLockMap implements LockMapAccess {
  readonly method = 'bpftool';

  constructor(
    private readonly exec: Executor,
    readonly pin: string,
    private readonly shape: LockMapShape = ENDPOINT_MAP_SHAPE,
  ) {}

  async dump(): Promise<LockMapDump> {
    const r = await this.exec('bpftool', ['-j', 'map', 'dump', 'pinned', this.pin], { timeoutMs: COMMAND_TIMEOUT_MS });
    const rows = JSON.parse(r.stdout) as { key: string[]; value: string[] }[];
    const { keySize, valueSize } = this.shape;
    const keys = Buffer.alloc(rows.length * keySize);
    const values = Buffer.alloc(rows.length * valueSize);
    rows.forEach((row, i) => {
      const key = fromBpftoolHex(row.key);
      const value = fromBpftoolHex(row.value);
      if (key.length !== keySize || value.length !== valueSize)
        throw new Error(`${this.pin}: bpftool printed a ${key.length}-byte key and ${value.length}-byte value, expected ${keySize} and ${valueSize}`);
      key.copy(keys, i * keySize);
      value.copy(values, i * valueSize);
    });
    return { keys, values, count: rows.length };
  }

  async update(keys: Buffer, values: Buffer): Promise<void> {
    const { keySize, valueSize } = this.shape;
    const lines: string[] = [];
    for (let i = 0; i < keys.length / keySize; i++) {
      const key = spacedHex(keys, i * keySize, keySize);
      lines.push(`map update pinned ${this.pin} key hex ${key} value hex ${spacedHex(values, i * valueSize, valueSize)}`);
    }
    await this.batch(lines);
  }

  async delete(keys: Buffer): Promise<number> {
    const { keySize } = this.shape;
    const lines: string[] = [];
    for (let i = 0; i < keys.length / keySize; i++) lines.push(`map delete pinned ${this.pin} key hex ${spacedHex(keys, i * keySize, keySize)}`);
    await this.batch(lines);
    return lines.length;
  }

  private async batch(lines: string[]): Promise<void> {
    if (lines.length === 0) return;
    if (lines.length === 1) {
      await this.exec('bpftool', lines[0].split(' '), { timeoutMs: COMMAND_TIMEOUT_MS });
      return;
    }
    await this.exec('bpftool', ['batch', 'file', '-'], { input: lines.join('\n') + '\n', timeoutMs: COMMAND_TIMEOUT_MS });
  }
}

/** `c6 12 fa 01`: bytes as bpftool's `hex` arguments, for one batch-file line. */
function spacedHex(b: Buffer, at: number, size: number): string {
  return b.toString('hex', at, at + size).replace(/(..)(?!$)/g, '$1 ');
}

/**
 * A map of bpf/lock.c as install() pins it and, on a later install, reuses it: pinned state is
 * what survives an agent restart. Shapes as `bpftool -j map show` prints them.
 */
interface PinnedMapSpec {
  name: string;
  pin: string;
  type: 'hash' | 'array' | 'ringbuf' | 'percpu_array';
  keySize: number;
  valueSize: number;
  maxEntries: number;
  /** Map flags that must be set (BPF_F_MMAPABLE for the connection table). */
  flags?: number;
  /** Structs whose BTF layout must match the codec's (key first, then value); none for the held maps. */
  structs: readonly StructLayout[];
}

/** The held-packet maps (bpf/lock.c, bpf/lock_maps.h): the ring, its counters, the per-CPU scratch record. */
const HELD_MAPS = [
  { name: 'godwit_held', type: 'ringbuf', keySize: 0, valueSize: 0, maxEntries: HELD_RING_BYTES },
  { name: 'godwit_hold_stats', type: 'percpu_array', keySize: 4, valueSize: 24, maxEntries: 1 },
  { name: 'godwit_held_scratch', type: 'percpu_array', keySize: 4, valueSize: 16 + 1536, maxEntries: 1 },
] as const;

/** The endpoint map, as the driver uses it. */
interface LockTable {
  shape: LockMapShape;
  /** Key struct in bpf/lock_maps.h (the value is LOCK_VALUE_LAYOUT). */
  key: StructLayout;
  pin: string;
  access: LockMapAccess;
  /** What the map holds, as this class last wrote or read it; undefined until loaded, or while in doubt. */
  mirror?: LockMirror;
}

/** The connection table mapped into this process, and the id of the map it is. */
interface MappedConnTable {
  table: ConnLockTable;
  mapId: number;
}

interface XdpAttachment {
  mode: XdpMode | 'offload' | 'multi';
  progId: number;
  progName: string;
}

/**
 * The network lock on one host, as an XDP program on its interface plus two pinned maps of
 * leases (bpf/lock.c, bpf/lock_maps.h), installed with bpftool and ip:
 *  - endpoints in a hash map, read and written through the native addon's batch calls. Every
 *    lock or unlock is one batch write, version-guarded against a mirror of the map kept in this
 *    process (lock-mirror.ts says why that is safe: the agent is the map's only writer, and this
 *    class runs one operation at a time). The mirror is loaded from one dump on first use and
 *    checked against the map by the dump sweepExpired() makes anyway; list() reads the map. A
 *    lock writes each value whole, so rewriting an endpoint entry starts its drops over.
 *  - exact connections in the table godwit_lock_conn, mapped into this process and written in
 *    memory by the native addon (conn-lock-table.ts): no system call per lock, and the memory is
 *    the state, so it needs no mirror. Needs the addon whatever the map method.
 *
 * Deadlines are process.hrtime.bigint(), which is CLOCK_MONOTONIC like bpf_ktime_get_ns().
 * (Run the agent outside any time namespace: bpf_ktime_get_ns ignores its offsets.)
 */
export class EbpfNetLock implements NetLock {
  private readonly exec: Executor;
  private readonly iface: string;
  private readonly objectPath: string;
  private readonly pins: LockPins;
  private readonly endpointMap: LockTable;
  private conn: MappedConnTable | undefined;
  private readonly log: Logger;
  private mode: XdpMode | undefined;
  private tail: Promise<unknown> = Promise.resolve();

  constructor(opts: EbpfNetLockOptions) {
    if (!/^[A-Za-z0-9_.@-]{1,15}$/.test(opts.iface)) throw new RangeError(`"${opts.iface}" is not an interface name`);
    this.exec = opts.exec;
    this.iface = opts.iface;
    this.objectPath = opts.objectPath;
    this.pins = lockPins(opts.pinDir);
    this.log = (opts.log ?? pino({ enabled: false })).child({ component: 'netlock-ebpf', iface: opts.iface });
    const nativeProblem = nativeBpfMapProblem();
    if (opts.mapMethod === 'native' && nativeProblem) throw new NativeAddonUnavailableError(nativeProblem);
    const method: LockMapMethod = opts.mapMethod ?? (nativeProblem ? 'bpftool' : 'native');
    if (!opts.mapMethod && nativeProblem) this.log.warn({ problem: nativeProblem }, 'native BPF map addon unavailable; using bpftool per operation');
    const table = (shape: LockMapShape, key: StructLayout, pin: string): LockTable => ({
      shape,
      key,
      pin,
      access: method === 'native' ? new NativeLockMap(pin, shape) : new BpftoolLockMap(opts.exec, pin, shape),
    });
    this.endpointMap = table(ENDPOINT_MAP_SHAPE, ENDPOINT_KEY_LAYOUT, this.pins.lockMap);
  }

  /** How the program is attached after install(): native (driver) XDP, or generic as a fallback. */
  get attachMode(): XdpMode | undefined {
    return this.mode;
  }

  /** How the lock maps are read and written. */
  get mapMethod(): LockMapMethod {
    return this.endpointMap.access.method;
  }

  install(): Promise<void> {
    return this.serial(async () => {
      await this.ensureBpffs();
      await this.run('mkdir', ['-p', this.pins.dir]);
      const maps = this.pinnedMaps();
      const reused: PinnedMapSpec[] = [];
      for (const m of maps) {
        if (!(await this.exists(m.pin))) continue;
        await this.checkPinnedLayout(m);
        reused.push(m);
      }
      const created = maps.filter((m) => !reused.includes(m));

      // Load next to the running program, then swap: the interface is never without a
      // program, and both programs share the pinned maps, so held locks stay held.
      await this.run('rm', ['-f', this.pins.progStaging]);
      await this.run('bpftool', [
        'prog', 'load', this.objectPath, this.pins.progStaging, 'type', 'xdp',
        // bpftool refuses `pinmaps` once any map is reused ("failed to pin map: File exists"),
        // so each reused map gets its own clause and the maps it created are pinned by id below
        // (a host whose pins predate some maps: every layout since 1 added maps).
        ...(reused.length === 0 ? ['pinmaps', this.pins.mapsDir] : reused.flatMap((m) => ['map', 'name', m.name, 'pinned', m.pin])),
      ]);
      try {
        if (reused.length > 0 && created.length > 0) await this.pinCreatedMaps(this.pins.progStaging, created);
        // Before the new program runs: a connection the old program held stays held.
        await this.copyLegacyTupleLocks();
        this.mode = await this.attach(this.pins.progStaging);
      } catch (err) {
        await this.run('rm', ['-f', this.pins.progStaging]);
        throw err;
      }
      await this.run('mv', ['-f', this.pins.progStaging, this.pins.prog]); // bpffs supports rename
      await this.run('rm', ['-f', this.pins.legacyTupleMap]);
      this.log.info(
        { mode: this.mode, pinDir: this.pins.dir, reusedMaps: reused.map((m) => m.name), createdMaps: created.map((m) => m.name), mapMethod: this.mapMethod },
        'network lock installed',
      );
    });
  }

  async lock(endpoints: Endpoint[], version: bigint, leaseMs: number): Promise<void> {
    const wanted = uniqueEndpoints(endpoints);
    checkVersion(version);
    checkLease(leaseMs);
    return this.serial(async () => {
      if (wanted.length === 0) return;
      const { locked, keptNewer } = await this.guardedLock(this.endpointMap, encodeEndpointKeys(wanted), version, leaseMs);
      this.log.info({ version: version.toString(), leaseMs, locked, keptNewer: keptNewer.map((k) => `${formatEndpoint(wanted[k.index])}@${k.heldVersion}`) }, 'lock set');
    });
  }

  async unlock(endpoints: Endpoint[], version: bigint): Promise<void> {
    const wanted = uniqueEndpoints(endpoints);
    checkVersion(version);
    return this.serial(async () => {
      if (wanted.length === 0) return;
      const { unlocked, keptNewer } = await this.guardedUnlock(this.endpointMap, encodeEndpointKeys(wanted), version);
      this.log.info({ version: version.toString(), unlocked, keptNewer: keptNewer.map((k) => `${formatEndpoint(wanted[k.index])}@${k.heldVersion}`) }, 'lock removed');
    });
  }

  list(): Promise<LockEntry[]> {
    return this.serial(async () => {
      const now = monotonicNowNs();
      const held = await this.endpointMap.access.dump();
      const entries: LockEntry[] = [];
      for (let i = 0; i < held.count; i++) {
        const key = held.keys.subarray(i * ENDPOINT_KEY_LAYOUT.size, (i + 1) * ENDPOINT_KEY_LAYOUT.size);
        const value = decodeLockValueAt(held.values, i * LOCK_VALUE_LAYOUT.size);
        entries.push({ endpoint: decodeEndpointKey(key), version: value.version, deadlineNs: value.deadlineNs, drops: value.drops, expired: now >= value.deadlineNs });
      }
      return entries;
    });
  }

  async lockTuples(tuples: readonly FourTuple[], version: bigint, leaseMs: number): Promise<void> {
    const keys = tupleKeys(tuples);
    checkVersion(version);
    checkLease(leaseMs);
    return this.serial(async () => {
      if (tuples.length === 0) return;
      const { locked, keptNewer } = this.connTable().lock(keys, version, leaseDeadline(leaseMs));
      this.log.info({ version: version.toString(), leaseMs, requested: tuples.length, locked, ...keptNewerLog(tuples, keptNewer) }, 'connection locks set');
    });
  }

  async unlockTuples(tuples: readonly FourTuple[], version: bigint): Promise<void> {
    const keys = tupleKeys(tuples);
    checkVersion(version);
    return this.serial(async () => {
      if (tuples.length === 0) return;
      const { unlocked, keptNewer } = this.connTable().unlock(keys, version);
      this.log.info({ version: version.toString(), requested: tuples.length, unlocked, ...keptNewerLog(tuples, keptNewer) }, 'connection locks removed');
    });
  }

  listTuples(): Promise<TupleLockEntry[]> {
    return this.serial(async () => {
      const now = monotonicNowNs();
      const held = this.connTable().entries();
      const entries: TupleLockEntry[] = [];
      for (let i = 0; i < held.count; i++) {
        const value = decodeLockValueAt(held.values, i * LOCK_VALUE_LAYOUT.size);
        entries.push({ tuple: decodeTupleKey(held.keys, i * TUPLE_KEY_LAYOUT.size), version: value.version, deadlineNs: value.deadlineNs, drops: value.drops, expired: now >= value.deadlineNs });
      }
      return entries;
    });
  }

  sweepExpired(): Promise<number> {
    return this.serial(async () => {
      const t = this.endpointMap;
      // The dump that finds ended leases also checks the mirror against the map.
      const held = await t.access.dump();
      const mirror = this.resync(t, 'sweep', held);
      const expired = expiredKeys(t.shape.keySize, held, monotonicNowNs());
      if (expired.count > 0) {
        try {
          await t.access.delete(expired.keys, held.mapId);
        } catch (err) {
          await this.reload(t, `sweep delete failed: ${err instanceof Error ? err.message : String(err)}`);
          throw err;
        }
        mirror.forget(expired.keys);
        const swept = Array.from({ length: expired.count }, (_, i) => formatEndpoint(decodeEndpointKey(expired.keys.subarray(i * ENDPOINT_KEY_LAYOUT.size, (i + 1) * ENDPOINT_KEY_LAYOUT.size))));
        this.log.info({ map: t.shape.name, swept }, 'expired locks swept');
      }
      // Without the addon there is no mapping, and nothing this agent could have written there.
      const conns = nativeBpfMapProblem() ? 0 : this.connTable().sweepExpired(monotonicNowNs());
      if (conns > 0) this.log.info({ map: LOCK_CONN_MAP_NAME, sweptConnections: conns }, 'expired locks swept');
      return expired.count + conns;
    });
  }

  entryCount(): number | undefined {
    const endpoints = this.endpointMap.mirror?.size;
    if (endpoints === undefined) return undefined;
    if (this.conn) return endpoints + this.conn.table.size;
    return nativeBpfMapProblem() ? endpoints : undefined;
  }

  uninstall(): Promise<void> {
    return this.serial(async () => {
      const attached = await this.xdpAttachment().catch((err: unknown) => {
        // The interface (or its namespace) is gone already: nothing left to detach.
        this.log.warn({ err }, 'interface not readable; skipping XDP detach');
        return undefined;
      });
      if (attached?.progName === LOCK_PROG_NAME && (attached.mode === 'native' || attached.mode === 'generic')) {
        await this.run('ip', ['link', 'set', 'dev', this.iface, attached.mode === 'native' ? 'xdpdrv' : 'xdpgeneric', 'off']);
      } else if (attached) {
        this.log.warn({ progName: attached.progName, progId: attached.progId }, 'interface runs another XDP program; leaving it');
      }
      await this.run('rm', ['-rf', this.pins.dir]);
      // A later install creates new maps.
      this.endpointMap.mirror = undefined;
      this.conn = undefined;
      this.mode = undefined;
      this.log.info({ pinDir: this.pins.dir }, 'network lock uninstalled');
    });
  }

  private serial<T>(op: () => Promise<T>): Promise<T> {
    const run = this.tail.then(op, op);
    this.tail = run.catch(() => undefined);
    return run;
  }

  private run(file: string, args: readonly string[]) {
    return this.exec(file, args, { timeoutMs: COMMAND_TIMEOUT_MS });
  }

  private async exists(path: string): Promise<boolean> {
    return (await this.exec('test', ['-e', path], { allowFailure: true, timeoutMs: COMMAND_TIMEOUT_MS })).exitCode === 0;
  }

  /**
   * The connection table, mapped on first use and mapped again when the pin names another map
   * than the one mapped (the lock was reinstalled): one BPF_OBJ_GET per operation, no more.
   */
  private connTable(): ConnLockTable {
    const mapId = pinnedMapId(this.pins.connTable);
    if (this.conn?.mapId === mapId) return this.conn.table;
    const mapped = mapPinnedArray(this.pins.connTable, CONN_ARRAY_SHAPE);
    this.conn = { table: new ConnLockTable(mapped.memory), mapId: mapped.mapId };
    this.log.debug({ map: LOCK_CONN_MAP_NAME, mapId: mapped.mapId, entries: this.conn.table.size }, 'connection table mapped');
    return this.conn.table;
  }

  /**
   * Copies the running entries of a layout-3 tuple hash map, if one is pinned, into the
   * connection table, each with its own version and deadline. install() removes that pin once
   * the new program runs.
   */
  private async copyLegacyTupleLocks(): Promise<void> {
    if (!(await this.exists(this.pins.legacyTupleMap))) return;
    const problem = nativeBpfMapProblem();
    if (problem) {
      this.log.warn({ pin: this.pins.legacyTupleMap, problem }, 'cannot copy connection locks of the older layout without the native addon; they end with their pin');
      return;
    }
    const held = await new NativeLockMap(this.pins.legacyTupleMap, LEGACY_TUPLE_MAP_SHAPE).dump();
    const table = this.connTable();
    const now = monotonicNowNs();
    let copied = 0;
    for (let i = 0; i < held.count; i++) {
      const lease = decodeLockValueAt(held.values, i * LOCK_VALUE_LAYOUT.size);
      if (lease.deadlineNs <= now) continue;
      const key = held.keys.subarray(i * TUPLE_KEY_LAYOUT.size, (i + 1) * TUPLE_KEY_LAYOUT.size);
      copied += table.lock(key, lease.version, lease.deadlineNs).locked;
    }
    this.log.info({ from: this.pins.legacyTupleMap, entries: held.count, copied }, 'connection locks of the older layout copied into the connection table');
  }

  /** The version guard against the mirror, then one batch update. */
  private async guardedLock(t: LockTable, keys: Buffer, version: bigint, leaseMs: number): Promise<{ locked: number; keptNewer: KeptNewer[] }> {
    const deadlineNs = leaseDeadline(leaseMs);
    const plan = await this.writePlanned(
      t,
      (held) => planLock(t.shape.keySize, keys, held, version, deadlineNs),
      // Also when it writes nothing: the access then still checks that the pin names the mirrored map.
      (p, mapId) => t.access.update(p.writes.keys, p.writes.values, mapId),
      (mirror, p) => mirror.record(p.writes.keys, version, deadlineNs),
    );
    return { locked: plan.writes.count, keptNewer: plan.keptNewer };
  }

  /** The version guard against the mirror, then one batch delete. */
  private async guardedUnlock(t: LockTable, keys: Buffer, version: bigint): Promise<{ unlocked: number; keptNewer: KeptNewer[] }> {
    let unlocked = 0;
    const plan = await this.writePlanned(
      t,
      (held) => planUnlock(t.shape.keySize, keys, held, version),
      async (p, mapId) => {
        unlocked = await t.access.delete(p.deletes, mapId);
      },
      // The plan's keys are distinct entries of this mirror: as many as it holds means all of them.
      (mirror, p) => (p.count === mirror.size ? mirror.clear() : mirror.forget(p.deletes)),
    );
    if (unlocked !== plan.count) {
      // Something else deleted entries (the mirror has forgotten those now): look for more now, not at the next sweep.
      this.log.warn({ map: t.shape.name, planned: plan.count, deleted: unlocked }, 'unlock found entries already gone from the map');
      await this.reload(t, `unlock deleted ${unlocked} of ${plan.count} entries`);
    }
    return { unlocked, keptNewer: plan.keptNewer };
  }

  /**
   * One version-guarded write: plan against t's mirror (loaded from a dump on first use), write,
   * and record in the mirror what the kernel took. A failed write may have gone in part way, so
   * the mirror is reloaded from the map before the error goes on; a write refused because the pin
   * names another map than the mirror's (the lock was reinstalled meanwhile) is planned again
   * against the new map and tried once more.
   */
  private async writePlanned<P>(
    t: LockTable,
    plan: (held: LockMirror) => P,
    write: (p: P, mapId: number | undefined) => Promise<void>,
    record: (mirror: LockMirror, p: P) => void,
  ): Promise<P> {
    for (let attempt = 1; ; attempt++) {
      const mirror = t.mirror ?? this.resync(t, 'first use', await t.access.dump());
      const p = plan(mirror);
      try {
        await write(p, mirror.mapId);
      } catch (err) {
        await this.reload(t, `write failed: ${err instanceof Error ? err.message : String(err)}`);
        if (err instanceof BpfMapReplacedError && attempt === 1) continue;
        throw err;
      }
      record(mirror, p);
      return p;
    }
  }

  /** Makes t's mirror what the dump `held` says, logging any difference from what it held. */
  private resync(t: LockTable, why: string, held: LockMapDump): LockMirror {
    const mirror = t.mirror;
    if (!mirror) {
      t.mirror = new LockMirror(t.shape.keySize, held, held.mapId);
      this.log.debug({ map: t.shape.name, entries: held.count, mapId: held.mapId, why }, 'lock map mirror loaded');
      return t.mirror;
    }
    const diff = mirror.differences(held);
    if (diff.unknown === 0 && diff.missing === 0 && diff.changed === 0 && mirror.mapId === held.mapId) return mirror;
    this.log.warn({ map: t.shape.name, why, ...diff, mapId: held.mapId, mirroredMapId: mirror.mapId }, 'lock map differed from what this agent wrote; mirror reloaded');
    mirror.reset(held, held.mapId);
    return mirror;
  }

  /** Reloads t's mirror from a fresh dump, or drops it (the next operation loads it) when the map cannot be read. Never throws. */
  private async reload(t: LockTable, why: string): Promise<void> {
    try {
      this.resync(t, why, await t.access.dump());
    } catch (err) {
      t.mirror = undefined;
      this.log.warn({ map: t.shape.name, err, why }, 'lock map unreadable; mirror dropped until the next operation');
    }
  }

  /**
   * Pins the maps that bpftool created for a program loaded with some maps reused, found by
   * name among the program's maps (the kernel's name: at most 15 characters).
   */
  private async pinCreatedMaps(progPin: string, maps: readonly PinnedMapSpec[]): Promise<void> {
    const prog = JSON.parse((await this.run('bpftool', ['-j', 'prog', 'show', 'pinned', progPin])).stdout) as { map_ids?: number[] };
    for (const id of prog.map_ids ?? []) {
      const info = JSON.parse((await this.run('bpftool', ['-j', 'map', 'show', 'id', String(id)])).stdout) as { name?: string };
      const m = maps.find((x) => kernelMapName(x.name) === info.name);
      if (!m) continue;
      await this.run('bpftool', ['map', 'pin', 'id', String(id), m.pin]);
      this.log.info({ map: m.name, id, pin: m.pin }, 'created lock map pinned');
    }
    for (const m of maps) if (!(await this.exists(m.pin))) throw new Error(`map ${m.name} of ${this.objectPath} was not found among the loaded program's maps to pin`);
  }

  /** Every map of bpf/lock.c, as install() pins and reuses it. */
  private pinnedMaps(): PinnedMapSpec[] {
    const e = this.endpointMap;
    return [
      { ...e.shape, pin: e.pin, type: 'hash', structs: [e.key, LOCK_VALUE_LAYOUT] },
      { ...CONN_ARRAY_SHAPE, pin: this.pins.connTable, type: 'array', keySize: 4, flags: BPF_F_MMAPABLE, structs: [CONN_SLOT_LAYOUT] },
      ...HELD_MAPS.map((m) => ({ ...m, pin: `${this.pins.mapsDir}/${m.name}`, structs: [] })),
    ];
  }

  private async ensureBpffs(): Promise<void> {
    const fsType = (await this.exec('stat', ['-f', '-c', '%T', BPFFS_ROOT], { allowFailure: true })).stdout.trim();
    if (fsType === 'bpf_fs') return;
    this.log.info({ found: fsType || 'nothing' }, `mounting bpffs at ${BPFFS_ROOT}`);
    await this.run('mount', ['-t', 'bpf', 'bpf', BPFFS_ROOT]);
  }

  /** Refuses a pinned map whose shape or BTF struct layouts differ from the codec's. */
  private async checkPinnedLayout(m: PinnedMapSpec): Promise<void> {
    const pin = m.pin;
    const info = JSON.parse((await this.run('bpftool', ['-j', 'map', 'show', 'pinned', pin])).stdout) as {
      type: string;
      bytes_key: number;
      bytes_value: number;
      max_entries: number;
      flags?: number;
      btf_id?: number;
    };
    const shape = (t: string, k: number, v: number, n: number, f: number) => `${t} key ${k} value ${v} max_entries ${n}${f ? ` flags ${f}` : ''}`;
    const want = shape(m.type, m.keySize, m.valueSize, m.maxEntries, m.flags ?? 0);
    const have = shape(info.type, info.bytes_key, info.bytes_value, info.max_entries, (info.flags ?? 0) & (m.flags ?? 0));
    if (want !== have) throw new LockMapLayoutError(pin, `expected ${want}, found ${have}`);
    if (m.structs.length === 0) return;
    if (info.btf_id === undefined) {
      this.log.warn({ pin }, 'pinned lock map has no BTF; checked its sizes only');
      return;
    }
    const btf: unknown = JSON.parse((await this.run('bpftool', ['-j', 'btf', 'dump', 'id', String(info.btf_id)])).stdout);
    for (const layout of m.structs) {
      const problem = layoutMismatch(layout, structLayoutFromBtf(btf, layout.name));
      if (problem) throw new LockMapLayoutError(pin, problem);
    }
  }

  /** Attaches (atomically replacing our own earlier program) in native mode, else generic. */
  private async attach(progPin: string): Promise<XdpMode> {
    const before = await this.xdpAttachment();
    if (before && before.progName !== LOCK_PROG_NAME) throw new XdpSlotTakenError(this.iface, before.progName, before.progId);
    const progId = (JSON.parse((await this.run('bpftool', ['-j', 'prog', 'show', 'pinned', progPin])).stdout) as { id: number }).id;

    // `-force` replaces an attached program (without it ip refuses: "XDP program already attached").
    let mode: XdpMode = 'native';
    try {
      await this.run('ip', ['-force', 'link', 'set', 'dev', this.iface, 'xdpdrv', 'pinned', progPin]);
    } catch (err) {
      if (!(err instanceof CommandError)) throw err;
      // Also the way out when an earlier install fell back to generic: the kernel refuses native
      // while generic is attached ("Native and generic XDP can't be active at the same time").
      this.log.warn({ err: err.message }, 'native XDP attach failed; falling back to generic XDP');
      await this.run('ip', ['-force', 'link', 'set', 'dev', this.iface, 'xdpgeneric', 'pinned', progPin]);
      mode = 'generic';
    }

    const after = await this.xdpAttachment();
    if (!after || after.progId !== progId || after.mode !== mode)
      throw new Error(`XDP attach on ${this.iface} did not take: expected ${mode} program ${progId}, found ${after ? `${after.mode} program ${after.progId}` : 'none'}`);
    this.log.info({ mode, progId, replacedProgId: before?.progId }, 'XDP program attached');
    return mode;
  }

  private async xdpAttachment(): Promise<XdpAttachment | undefined> {
    const links = JSON.parse((await this.run('ip', ['-j', 'link', 'show', 'dev', this.iface])).stdout) as {
      xdp?: { mode: number; prog?: { id: number; name?: string }; attached?: { mode: number; prog: { id: number; name?: string } }[] };
    }[];
    const xdp = links[0]?.xdp;
    // With several programs (mode "multi") ip lists them under `attached`; take one that is not ours first.
    const prog = xdp?.prog ?? xdp?.attached?.find((a) => a.prog.name !== LOCK_PROG_NAME)?.prog ?? xdp?.attached?.[0]?.prog;
    if (!xdp || !prog) return undefined;
    return { mode: XDP_MODE_NAMES[xdp.mode] ?? 'multi', progId: prog.id, progName: prog.name ?? '' };
  }
}

function monotonicNowNs(): bigint {
  return process.hrtime.bigint();
}

/** The deadline of a lease of leaseMs starting now, as the program compares it. */
function leaseDeadline(leaseMs: number): bigint {
  return monotonicNowNs() + BigInt(Math.ceil(leaseMs * 1e6));
}

function keyId(e: Endpoint): string {
  return encodeEndpointKey(e).toString('hex');
}

function checkLease(leaseMs: number): void {
  if (!Number.isFinite(leaseMs) || leaseMs <= 0) throw new LockRequestError('leaseMs', `lease ${leaseMs} ms must be a positive number`);
}

/** Packed keys of the tuples, checked: a bad one is the request's fault. */
function tupleKeys(tuples: readonly FourTuple[]): Buffer {
  if (!Array.isArray(tuples)) throw new LockRequestError('tuples', 'tuples must be an array');
  try {
    return encodeTupleKeys(tuples);
  } catch (err) {
    throw new LockRequestError('tuples', err instanceof Error ? err.message : String(err));
  }
}

function formatTuple(t: FourTuple): string {
  return `${t.proto}://${t.remoteAddress}:${t.remotePort}->${t.localAddress}:${t.localPort}`;
}

function keptNewerLog(tuples: readonly FourTuple[], keptNewer: readonly KeptNewer[]) {
  return { keptNewer: keptNewer.length, keptNewerSample: keptNewer.slice(0, LOG_SAMPLE).map((k) => `${formatTuple(tuples[k.index])}@${k.heldVersion}`) };
}

function checkVersion(version: bigint): void {
  if (typeof version !== 'bigint' || version < 0n || version > 0xffff_ffff_ffff_ffffn)
    throw new LockRequestError('version', `version ${String(version)} must be a u64 bigint`);
}

/** Validates and de-duplicates (same key = same entry). */
function uniqueEndpoints(endpoints: readonly Endpoint[]): Endpoint[] {
  const seen = new Map<string, Endpoint>();
  for (const e of endpoints) {
    const problem = endpointProblem(e);
    if (problem) throw new LockRequestError('endpoints', problem);
    seen.set(keyId(e), { proto: e.proto, address: e.address, port: e.port });
  }
  return [...seen.values()];
}
