import { pino, type Logger } from 'pino';
import { endpointProblem, formatEndpoint, type Endpoint } from '../../lib/endpoint.js';
import { CommandError, type Executor } from '../../lib/exec.js';
import { LockRequestError, type FourTuple, type LockEntry, type NetLock, type TupleLockEntry } from '../netlock.js';
import { NativeAddonUnavailableError, nativeBpfMapProblem, NativeLockMap } from './bpf-map-native.js';
import {
  decodeEndpointKey,
  decodeLockValueAt,
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
  LOCK_TUPLE_MAP_MAX_ENTRIES,
  LOCK_TUPLE_MAP_NAME,
  LOCK_VALUE_LAYOUT,
  planLock,
  planUnlock,
  structLayoutFromBtf,
  TUPLE_KEY_LAYOUT,
  type KeptNewer,
  type PackedEntries,
  type StructLayout,
} from './lock-map-codec.js';

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
  /** godwit_lock_tuple: exact-connection entries. */
  tupleMap: string;
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
    tupleMap: `${mapsDir}/${LOCK_TUPLE_MAP_NAME}`,
  };
}

/** What a lock map is: its name in bpf/lock.c, key and value sizes, capacity (bpf/godwit_maps.h). */
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

export const TUPLE_MAP_SHAPE: LockMapShape = {
  name: LOCK_TUPLE_MAP_NAME,
  keySize: TUPLE_KEY_LAYOUT.size,
  valueSize: LOCK_VALUE_LAYOUT.size,
  maxEntries: LOCK_TUPLE_MAP_MAX_ENTRIES,
};

/**
 * Reads and writes of one pinned lock map, whole batches at a time: keys and values packed
 * back to back in one Buffer each (the layout of the kernel's batch calls).
 */
export interface LockMapAccess {
  readonly pin: string;
  readonly method: LockMapMethod;
  /** Every entry. */
  dump(): Promise<PackedEntries>;
  /** Creates or overwrites every entry; on a failure part way the earlier ones stay written. */
  update(keys: Buffer, values: Buffer): Promise<void>;
  /** Deletes entries the caller just read with dump(); returns how many went. */
  delete(keys: Buffer): Promise<number>;
}

/**
 * Lock map access through bpftool: one process per dump, one per group of writes
 * (`bpftool batch`, which reopens the pinned map per line: 10,000 lines take about 100 ms,
 * FIELD-NOTES). The reference the native path is measured against, and the fallback where the
 * addon is not built.
 */
export class BpftoolLockMap implements LockMapAccess {
  readonly method = 'bpftool';

  constructor(
    private readonly exec: Executor,
    readonly pin: string,
    private readonly shape: LockMapShape = ENDPOINT_MAP_SHAPE,
  ) {}

  async dump(): Promise<PackedEntries> {
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

/** One of the host's lock maps, as the driver uses it. */
interface LockTable {
  shape: LockMapShape;
  /** Key struct in bpf/godwit_maps.h (the value is LOCK_VALUE_LAYOUT for both). */
  key: StructLayout;
  pin: string;
  access: LockMapAccess;
}

interface XdpAttachment {
  mode: XdpMode | 'offload' | 'multi';
  progId: number;
  progName: string;
}

/**
 * The network lock on one host, as an XDP program on its interface plus two pinned hash maps of
 * leases, endpoints and exact connections (bpf/lock.c, bpf/godwit_maps.h); installed with
 * bpftool and ip, the maps read and written through the native addon's batch calls.
 *
 * Every lock or unlock is one batch read of the map (the version guard) and one batch write.
 * The agent is the maps' only writer, and this class runs one operation at a time, so the
 * version checks (read the entry, then write it) cannot interleave. The program only adds to
 * drops/last_drop_ns; a lock that rewrites an entry carries those over (a drop counted between
 * the read and the write is lost, which only matters to statistics).
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
  private readonly tupleMap: LockTable;
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
    this.tupleMap = table(TUPLE_MAP_SHAPE, TUPLE_KEY_LAYOUT, this.pins.tupleMap);
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
      const tables = [this.endpointMap, this.tupleMap];
      const reused: LockTable[] = [];
      for (const t of tables) {
        if (!(await this.exists(t.pin))) continue;
        await this.checkPinnedLayout(t);
        reused.push(t);
      }
      const created = tables.filter((t) => !reused.includes(t));

      // Load next to the running program, then swap: the interface is never without a
      // program, and both programs share the pinned maps, so held locks stay held.
      await this.run('rm', ['-f', this.pins.progStaging]);
      await this.run('bpftool', [
        'prog', 'load', this.objectPath, this.pins.progStaging, 'type', 'xdp',
        // bpftool refuses `pinmaps` once any map is reused ("failed to pin map: File exists"),
        // so each reused map gets its own clause and the maps it created are pinned by id below
        // (a host whose pins predate the tuple map: layout version 1).
        ...(reused.length === 0 ? ['pinmaps', this.pins.mapsDir] : reused.flatMap((t) => ['map', 'name', t.shape.name, 'pinned', t.pin])),
      ]);
      try {
        if (reused.length > 0 && created.length > 0) await this.pinCreatedMaps(this.pins.progStaging, created);
        this.mode = await this.attach(this.pins.progStaging);
      } catch (err) {
        await this.run('rm', ['-f', this.pins.progStaging]);
        throw err;
      }
      await this.run('mv', ['-f', this.pins.progStaging, this.pins.prog]); // bpffs supports rename
      this.log.info(
        { mode: this.mode, pinDir: this.pins.dir, reusedMaps: reused.map((t) => t.shape.name), createdMaps: created.map((t) => t.shape.name), mapMethod: this.mapMethod },
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
      const { locked, keptNewer } = await this.guardedLock(this.tupleMap, keys, version, leaseMs);
      this.log.info({ version: version.toString(), leaseMs, requested: tuples.length, locked, ...keptNewerLog(tuples, keptNewer) }, 'connection locks set');
    });
  }

  async unlockTuples(tuples: readonly FourTuple[], version: bigint): Promise<void> {
    const keys = tupleKeys(tuples);
    checkVersion(version);
    return this.serial(async () => {
      if (tuples.length === 0) return;
      const { unlocked, keptNewer } = await this.guardedUnlock(this.tupleMap, keys, version);
      this.log.info({ version: version.toString(), requested: tuples.length, unlocked, ...keptNewerLog(tuples, keptNewer) }, 'connection locks removed');
    });
  }

  listTuples(): Promise<TupleLockEntry[]> {
    return this.serial(async () => {
      const now = monotonicNowNs();
      const held = await this.tupleMap.access.dump();
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
      let swept = 0;
      for (const t of [this.endpointMap, this.tupleMap]) {
        const expired = expiredKeys(t.shape.keySize, await t.access.dump(), monotonicNowNs());
        if (expired.count === 0) continue;
        await t.access.delete(expired.keys);
        swept += expired.count;
        const sample =
          t === this.endpointMap
            ? { swept: Array.from({ length: expired.count }, (_, i) => formatEndpoint(decodeEndpointKey(expired.keys.subarray(i * ENDPOINT_KEY_LAYOUT.size, (i + 1) * ENDPOINT_KEY_LAYOUT.size)))) }
            : { sweptConnections: expired.count };
        this.log.info({ map: t.shape.name, ...sample }, 'expired locks swept');
      }
      return swept;
    });
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

  /** One batch read (the version guard), one batch write. */
  private async guardedLock(t: LockTable, keys: Buffer, version: bigint, leaseMs: number): Promise<{ locked: number; keptNewer: KeptNewer[] }> {
    const held = await t.access.dump();
    const deadlineNs = monotonicNowNs() + BigInt(Math.ceil(leaseMs * 1e6));
    const plan = planLock(t.shape.keySize, keys, held, version, deadlineNs);
    if (plan.writes.count > 0) await t.access.update(plan.writes.keys, plan.writes.values);
    return { locked: plan.writes.count, keptNewer: plan.keptNewer };
  }

  private async guardedUnlock(t: LockTable, keys: Buffer, version: bigint): Promise<{ unlocked: number; keptNewer: KeptNewer[] }> {
    const plan = planUnlock(t.shape.keySize, keys, await t.access.dump(), version);
    const unlocked = plan.count > 0 ? await t.access.delete(plan.deletes) : 0;
    return { unlocked, keptNewer: plan.keptNewer };
  }

  /**
   * Pins the maps that bpftool created for a program loaded with some maps reused, found by
   * name among the program's maps (the kernel's name: at most 15 characters).
   */
  private async pinCreatedMaps(progPin: string, tables: readonly LockTable[]): Promise<void> {
    const prog = JSON.parse((await this.run('bpftool', ['-j', 'prog', 'show', 'pinned', progPin])).stdout) as { map_ids?: number[] };
    for (const id of prog.map_ids ?? []) {
      const info = JSON.parse((await this.run('bpftool', ['-j', 'map', 'show', 'id', String(id)])).stdout) as { name?: string };
      const t = tables.find((x) => kernelMapName(x.shape.name) === info.name);
      if (!t) continue;
      await this.run('bpftool', ['map', 'pin', 'id', String(id), t.pin]);
      this.log.info({ map: t.shape.name, id, pin: t.pin }, 'created lock map pinned');
    }
    for (const t of tables) if (!(await this.exists(t.pin))) throw new Error(`map ${t.shape.name} of ${this.objectPath} was not found among the loaded program's maps to pin`);
  }

  private async ensureBpffs(): Promise<void> {
    const fsType = (await this.exec('stat', ['-f', '-c', '%T', BPFFS_ROOT], { allowFailure: true })).stdout.trim();
    if (fsType === 'bpf_fs') return;
    this.log.info({ found: fsType || 'nothing' }, `mounting bpffs at ${BPFFS_ROOT}`);
    await this.run('mount', ['-t', 'bpf', 'bpf', BPFFS_ROOT]);
  }

  /** Refuses a pinned map whose shape or BTF struct layouts differ from the codec's. */
  private async checkPinnedLayout(t: LockTable): Promise<void> {
    const pin = t.pin;
    const info = JSON.parse((await this.run('bpftool', ['-j', 'map', 'show', 'pinned', pin])).stdout) as {
      type: string;
      bytes_key: number;
      bytes_value: number;
      max_entries: number;
      btf_id?: number;
    };
    const shape = (t: string, k: number, v: number, n: number) => `${t} key ${k} value ${v} max_entries ${n}`;
    const want = shape('hash', t.shape.keySize, t.shape.valueSize, t.shape.maxEntries);
    const have = shape(info.type, info.bytes_key, info.bytes_value, info.max_entries);
    if (want !== have) throw new LockMapLayoutError(pin, `expected ${want}, found ${have}`);
    if (info.btf_id === undefined) {
      this.log.warn({ pin }, 'pinned lock map has no BTF; checked its sizes only');
      return;
    }
    const btf: unknown = JSON.parse((await this.run('bpftool', ['-j', 'btf', 'dump', 'id', String(info.btf_id)])).stdout);
    for (const layout of [t.key, LOCK_VALUE_LAYOUT]) {
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
