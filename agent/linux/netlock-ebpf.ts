import { pino, type Logger } from 'pino';
import { endpointProblem, formatEndpoint, type Endpoint } from '../../lib/endpoint.js';
import { CommandError, type Executor } from '../../lib/exec.js';
import { LockRequestError, type LockEntry, type NetLock } from '../netlock.js';
import {
  bpftoolHexArgs,
  decodeEndpointKey,
  decodeLockValue,
  encodeEndpointKey,
  encodeLockValue,
  ENDPOINT_KEY_LAYOUT,
  fromBpftoolHex,
  layoutMismatch,
  LOCK_MAP_MAX_ENTRIES,
  LOCK_MAP_NAME,
  LOCK_VALUE_LAYOUT,
  structLayoutFromBtf,
  type LockValue,
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
  lockMap: string;
}

export function lockPins(pinDir: string): LockPins {
  const dir = pinDir.replace(/\/+$/, '');
  if (!dir.startsWith(`${BPFFS_ROOT}/`)) throw new RangeError(`pin dir "${pinDir}" must be a folder under ${BPFFS_ROOT}/`);
  // No dots: bpffs reserves them and fails any lookup of a name with a dot with EPERM (even
  // `rm -f` of a missing pin). No spaces: bpftool batch splits its lines on whitespace.
  if (!/^[A-Za-z0-9_/-]+$/.test(dir.slice(BPFFS_ROOT.length))) throw new RangeError(`pin dir "${pinDir}" may only use [A-Za-z0-9_/-] below ${BPFFS_ROOT}`);
  const mapsDir = `${dir}/maps`;
  return { dir, prog: `${dir}/prog`, progStaging: `${dir}/prog_staging`, mapsDir, lockMap: `${mapsDir}/${LOCK_MAP_NAME}` };
}

export interface LockMapRecord {
  endpoint: Endpoint;
  value: LockValue;
}

export type LockMapWrite = { op: 'set'; endpoint: Endpoint; value: LockValue } | { op: 'delete'; endpoint: Endpoint };

/** Reads and writes of the pinned lock map; swappable for a faster native writer. */
export interface LockMapAccess {
  dump(): Promise<LockMapRecord[]>;
  /** Applies writes in order; stops at the first failure (earlier writes stay applied). */
  apply(writes: readonly LockMapWrite[]): Promise<void>;
}

/**
 * Lock map access through bpftool: one process per dump, one per group of writes
 * (`bpftool batch`, which reopens the pinned map per line: about 10 µs each, FIELD-NOTES).
 */
export class BpftoolLockMap implements LockMapAccess {
  constructor(
    private readonly exec: Executor,
    private readonly mapPin: string,
  ) {}

  async dump(): Promise<LockMapRecord[]> {
    const r = await this.exec('bpftool', ['-j', 'map', 'dump', 'pinned', this.mapPin], { timeoutMs: COMMAND_TIMEOUT_MS });
    const rows = JSON.parse(r.stdout) as { key: string[]; value: string[] }[];
    return rows.map((row) => ({ endpoint: decodeEndpointKey(fromBpftoolHex(row.key)), value: decodeLockValue(fromBpftoolHex(row.value)) }));
  }

  async apply(writes: readonly LockMapWrite[]): Promise<void> {
    if (writes.length === 0) return;
    const commands = writes.map((w) => {
      const key = bpftoolHexArgs('key', encodeEndpointKey(w.endpoint));
      return w.op === 'set'
        ? ['map', 'update', 'pinned', this.mapPin, ...key, ...bpftoolHexArgs('value', encodeLockValue(w.value))]
        : ['map', 'delete', 'pinned', this.mapPin, ...key];
    });
    if (commands.length === 1) {
      await this.exec('bpftool', commands[0], { timeoutMs: COMMAND_TIMEOUT_MS });
      return;
    }
    const input = commands.map((c) => c.join(' ')).join('\n') + '\n';
    await this.exec('bpftool', ['batch', 'file', '-'], { input, timeoutMs: COMMAND_TIMEOUT_MS });
  }
}

interface XdpAttachment {
  mode: XdpMode | 'offload' | 'multi';
  progId: number;
  progName: string;
}

/**
 * The network lock on one host, as an XDP program on its interface plus a pinned hash map of
 * leases (bpf/lock.c, bpf/godwit_maps.h), driven with bpftool and ip.
 *
 * The agent is the map's only writer, and this class runs one operation at a time, so the
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
  private readonly map: LockMapAccess;
  private readonly log: Logger;
  private mode: XdpMode | undefined;
  private tail: Promise<unknown> = Promise.resolve();

  constructor(opts: EbpfNetLockOptions) {
    if (!/^[A-Za-z0-9_.@-]{1,15}$/.test(opts.iface)) throw new RangeError(`"${opts.iface}" is not an interface name`);
    this.exec = opts.exec;
    this.iface = opts.iface;
    this.objectPath = opts.objectPath;
    this.pins = lockPins(opts.pinDir);
    this.map = new BpftoolLockMap(opts.exec, this.pins.lockMap);
    this.log = (opts.log ?? pino({ enabled: false })).child({ component: 'netlock-ebpf', iface: opts.iface });
  }

  /** How the program is attached after install(): native (driver) XDP, or generic as a fallback. */
  get attachMode(): XdpMode | undefined {
    return this.mode;
  }

  install(): Promise<void> {
    return this.serial(async () => {
      await this.ensureBpffs();
      await this.run('mkdir', ['-p', this.pins.dir]);
      const reuse = await this.exists(this.pins.lockMap);
      if (reuse) await this.checkPinnedLayout();

      // Load next to the running program, then swap: the interface is never without a
      // program, and both programs share the pinned map, so held locks stay held.
      await this.run('rm', ['-f', this.pins.progStaging]);
      await this.run('bpftool', [
        'prog', 'load', this.objectPath, this.pins.progStaging, 'type', 'xdp',
        // bpftool refuses `pinmaps` once a map is reused ("failed to pin map: File exists").
        // A second map will need its own `map name ... pinned ...` clause here.
        ...(reuse ? ['map', 'name', LOCK_MAP_NAME, 'pinned', this.pins.lockMap] : ['pinmaps', this.pins.mapsDir]),
      ]);
      try {
        this.mode = await this.attach(this.pins.progStaging);
      } catch (err) {
        await this.run('rm', ['-f', this.pins.progStaging]);
        throw err;
      }
      await this.run('mv', ['-f', this.pins.progStaging, this.pins.prog]); // bpffs supports rename
      this.log.info({ mode: this.mode, pinDir: this.pins.dir, reusedMap: reuse }, 'network lock installed');
    });
  }

  async lock(endpoints: Endpoint[], version: bigint, leaseMs: number): Promise<void> {
    const wanted = uniqueEndpoints(endpoints);
    checkVersion(version);
    if (!Number.isFinite(leaseMs) || leaseMs <= 0) throw new LockRequestError('leaseMs', `lease ${leaseMs} ms must be a positive number`);
    return this.serial(async () => {
      if (wanted.length === 0) return;
      const current = await this.current();
      const deadlineNs = monotonicNowNs() + BigInt(Math.ceil(leaseMs * 1e6));
      const writes: LockMapWrite[] = [];
      const newer: string[] = [];
      for (const endpoint of wanted) {
        const held = current.get(keyId(endpoint));
        if (held && held.version > version) {
          newer.push(`${formatEndpoint(endpoint)}@${held.version}`);
          continue;
        }
        writes.push({
          op: 'set',
          endpoint,
          value: { version, deadlineNs, drops: held?.drops ?? 0n, lastDropNs: held?.lastDropNs ?? 0n },
        });
      }
      await this.map.apply(writes);
      this.log.info({ version: version.toString(), leaseMs, locked: writes.length, keptNewer: newer }, 'lock set');
    });
  }

  async unlock(endpoints: Endpoint[], version: bigint): Promise<void> {
    const wanted = uniqueEndpoints(endpoints);
    checkVersion(version);
    return this.serial(async () => {
      if (wanted.length === 0) return;
      const current = await this.current();
      const writes: LockMapWrite[] = [];
      const newer: string[] = [];
      for (const endpoint of wanted) {
        const held = current.get(keyId(endpoint));
        if (!held) continue;
        if (held.version > version) newer.push(`${formatEndpoint(endpoint)}@${held.version}`);
        else writes.push({ op: 'delete', endpoint });
      }
      await this.map.apply(writes);
      this.log.info({ version: version.toString(), unlocked: writes.length, keptNewer: newer }, 'lock removed');
    });
  }

  list(): Promise<LockEntry[]> {
    return this.serial(async () => {
      const now = monotonicNowNs();
      return (await this.map.dump()).map(({ endpoint, value }) => ({
        endpoint,
        version: value.version,
        deadlineNs: value.deadlineNs,
        drops: value.drops,
        expired: now >= value.deadlineNs,
      }));
    });
  }

  sweepExpired(): Promise<number> {
    return this.serial(async () => {
      const now = monotonicNowNs();
      const expired = (await this.map.dump()).filter((r) => now >= r.value.deadlineNs);
      await this.map.apply(expired.map((r) => ({ op: 'delete', endpoint: r.endpoint })));
      if (expired.length > 0) this.log.info({ swept: expired.map((r) => formatEndpoint(r.endpoint)) }, 'expired locks swept');
      return expired.length;
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

  private async current(): Promise<Map<string, LockValue>> {
    return new Map((await this.map.dump()).map((r) => [keyId(r.endpoint), r.value]));
  }

  private async ensureBpffs(): Promise<void> {
    const fsType = (await this.exec('stat', ['-f', '-c', '%T', BPFFS_ROOT], { allowFailure: true })).stdout.trim();
    if (fsType === 'bpf_fs') return;
    this.log.info({ found: fsType || 'nothing' }, `mounting bpffs at ${BPFFS_ROOT}`);
    await this.run('mount', ['-t', 'bpf', 'bpf', BPFFS_ROOT]);
  }

  /** Refuses a pinned map whose shape or BTF struct layouts differ from the codec's. */
  private async checkPinnedLayout(): Promise<void> {
    const pin = this.pins.lockMap;
    const info = JSON.parse((await this.run('bpftool', ['-j', 'map', 'show', 'pinned', pin])).stdout) as {
      type: string;
      bytes_key: number;
      bytes_value: number;
      max_entries: number;
      btf_id?: number;
    };
    const shape = (t: string, k: number, v: number, n: number) => `${t} key ${k} value ${v} max_entries ${n}`;
    const want = shape('hash', ENDPOINT_KEY_LAYOUT.size, LOCK_VALUE_LAYOUT.size, LOCK_MAP_MAX_ENTRIES);
    const have = shape(info.type, info.bytes_key, info.bytes_value, info.max_entries);
    if (want !== have) throw new LockMapLayoutError(pin, `expected ${want}, found ${have}`);
    if (info.btf_id === undefined) {
      this.log.warn({ pin }, 'pinned lock map has no BTF; checked its sizes only');
      return;
    }
    const btf: unknown = JSON.parse((await this.run('bpftool', ['-j', 'btf', 'dump', 'id', String(info.btf_id)])).stdout);
    for (const layout of [ENDPOINT_KEY_LAYOUT, LOCK_VALUE_LAYOUT]) {
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
