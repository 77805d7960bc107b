import { pino, type Logger } from 'pino';
import { formatEndpoint, isAddressWide, lockEndpointProblem, type Endpoint } from '../../lib/endpoint.js';
import type { Executor } from '../../lib/exec.js';
import { LockRequestError, type FourTuple, type LockEntry, type NetLock, type TupleLockEntry } from '../netlock.js';
import type { MapAccessMethod } from './bpf/map-access.js';
import { mapAccess } from './bpf/map-transfer.js';
import { mapPinnedArray, NativeAddonUnavailableError, nativeBpfMapProblem, pinnedMapId } from './bpf/native-map.js';
import { loadObject, removeObject, type ObjectSpec, type PinHost } from './bpf/object-loader.js';
import { ensureBpffs, pinFolder, removeIfEmpty } from './bpf/pin-folder.js';
import { ChainSlot, rootObjectBeside, XdpChain, type XdpMode } from './bpf/xdp-chain.js';
import { ADDRESS_WIDE_GATE_SHAPE, AddressWideGate } from './address-wide-gate.js';
import { ConnLockTable } from './conn-lock-table.js';
import { EndpointLockMap } from './endpoint-lock-map.js';
import {
  decodeEndpointKey,
  decodeLockValueAt,
  decodeTupleKey,
  encodeEndpointKey,
  encodeEndpointKeys,
  encodeTupleKeys,
  ENDPOINT_KEY_LAYOUT,
  isAddressWideKey,
  keyWords,
  LOCK_CONN_MAP_NAME,
  LOCK_VALUE_LAYOUT,
  TUPLE_KEY_LAYOUT,
  type KeptNewer,
} from './lock-map-codec.js';
import { CONN_ARRAY_SHAPE, ENDPOINT_MAP_SHAPE, lockObject, lockPins, type LockPins } from './lock-maps.js';

/**
 * How the agent reads and writes the endpoint lock map: `native`, the addon's batch syscalls in
 * this process (native/bpfmap); `bpftool`, a bpftool process per operation, the reference to compare with.
 */
export type LockMapMethod = MapAccessMethod;

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
  /** The compiled bpf/root.c; default: root.o beside objectPath. */
  rootObjectPath?: string;
  /**
   * Default: `native` when the addon is built (scripts/build-native.sh), else `bpftool` with a
   * warning. Map access never goes through `exec`: native calls are syscalls of this process, and
   * bpffs (where the pins live) is the same in every network namespace.
   */
  mapMethod?: LockMapMethod;
  log?: Logger;
}

/** The connection table mapped into this process, and the id of the map it is. */
interface MappedConnTable {
  table: ConnLockTable;
  mapId: number;
}

/**
 * The network lock on one host: bpf/lock.c in slot ChainSlot.lock of the interface's XDP chain
 * (bpf/xdp-chain.ts), its maps loaded and pinned by the BPF lifecycle (bpf/object-loader.ts,
 * lock-maps.ts):
 *  - endpoints in a hash map, written in version-guarded batches (endpoint-lock-map.ts). list()
 *    reads the map.
 *  - exact connections in the table godwit_lock_conn, mapped into this process and written in
 *    memory by the native addon (conn-lock-table.ts): no system call per lock, and the memory is
 *    the state, so it needs no mirror. Needs the addon whatever the map method.
 *
 * Deadlines are process.hrtime.bigint(), which is CLOCK_MONOTONIC like bpf_ktime_get_ns().
 * (Run the agent outside any time namespace: bpf_ktime_get_ns ignores its offsets.)
 */
export class EbpfNetLock implements NetLock {
  private readonly host: PinHost;
  private readonly object: ObjectSpec;
  private readonly chain: XdpChain;
  private readonly pins: LockPins;
  private readonly endpointMap: EndpointLockMap;
  private readonly gate: AddressWideGate;
  private conn: MappedConnTable | undefined;
  private readonly log: Logger;
  private mode: XdpMode | undefined;
  private tail: Promise<unknown> = Promise.resolve();

  constructor(opts: EbpfNetLockOptions) {
    if (!/^[A-Za-z0-9_.@-]{1,15}$/.test(opts.iface)) throw new RangeError(`"${opts.iface}" is not an interface name`);
    this.pins = lockPins(opts.pinDir);
    this.log = (opts.log ?? pino({ enabled: false })).child({ component: 'netlock-ebpf', iface: opts.iface });
    this.host = { exec: opts.exec, folder: pinFolder(opts.pinDir), log: this.log };
    this.object = lockObject(opts.objectPath);
    this.chain = new XdpChain({ ...this.host, iface: opts.iface, rootObjectPath: opts.rootObjectPath ?? rootObjectBeside(opts.objectPath) });
    const nativeProblem = nativeBpfMapProblem();
    if (opts.mapMethod === 'native' && nativeProblem) throw new NativeAddonUnavailableError(nativeProblem);
    if (!opts.mapMethod && nativeProblem) this.log.warn({ problem: nativeProblem }, 'native BPF map addon unavailable; using bpftool per operation');
    this.endpointMap = new EndpointLockMap(ENDPOINT_MAP_SHAPE, mapAccess(opts.exec, this.pins.lockMap, ENDPOINT_MAP_SHAPE, opts.mapMethod), this.log);
    this.gate = new AddressWideGate(mapAccess(opts.exec, this.pins.addressWideGate, ADDRESS_WIDE_GATE_SHAPE, opts.mapMethod));
  }

  /** How the chain's root is attached after install(): native (driver) XDP, or generic as a fallback. */
  get attachMode(): XdpMode | undefined {
    return this.mode;
  }

  /** How the lock maps are read and written. */
  get mapMethod(): LockMapMethod {
    return this.endpointMap.access.method;
  }

  /**
   * Loads the lock with its pinned maps reused (upgraded from an older layout where needed) and
   * puts it in its chain slot; the chain's root is attached if it is not yet. The new program
   * takes over in one step (a slot update, or the root's swap for a lock that an older version
   * attached directly), and the maps are shared, so held locks stay held throughout.
   */
  install(): Promise<void> {
    return this.serial(async () => {
      await ensureBpffs(this.host.exec, this.log);
      await this.chain.prepare();
      const staged = await loadObject(this.host, this.object);
      try {
        // The slot first: when the root replaces a directly attached older lock, the new lock runs at once.
        await this.chain.setSlot(ChainSlot.lock, staged.stagedPin(this.object.programs[0]));
        this.mode = await this.chain.attach();
      } catch (err) {
        await staged.abort();
        throw err;
      }
      await staged.commit();
      await this.host.exec('rm', ['-f', this.pins.formerProg]);
      // The gate from what the endpoint map holds now (the maps may be new ones, or changed while no agent ran).
      this.endpointMap.forget();
      this.gate.forget();
      await this.lowerGate();
      this.log.info({ mode: this.mode, pinDir: this.pins.dir, ...staged.plan, mapMethod: this.mapMethod }, 'network lock installed');
    });
  }

  async lock(endpoints: Endpoint[], version: bigint, leaseMs: number): Promise<void> {
    const wanted = uniqueEndpoints(endpoints);
    checkVersion(version);
    checkLease(leaseMs);
    return this.serial(async () => {
      if (wanted.length === 0) return;
      const wide = wanted.filter(isAddressWide).length;
      // Raised before the entries exist, so the program never skips a lookup that would match.
      if (wide > 0) await this.gate.set((await this.endpointMap.countHeld(isAddressWideKey)) + wide);
      const { locked, keptNewer } = await this.endpointMap.lock(encodeEndpointKeys(wanted), version, leaseDeadline(leaseMs));
      if (wide > 0) await this.lowerGate();
      this.log.info({ version: version.toString(), leaseMs, locked, keptNewer: keptNewer.map((k) => `${formatEndpoint(wanted[k.index])}@${k.heldVersion}`) }, 'lock set');
    });
  }

  async unlock(endpoints: Endpoint[], version: bigint): Promise<void> {
    const wanted = uniqueEndpoints(endpoints);
    checkVersion(version);
    return this.serial(async () => {
      if (wanted.length === 0) return;
      const { unlocked, keptNewer } = await this.endpointMap.unlock(encodeEndpointKeys(wanted), version);
      if (wanted.some(isAddressWide)) await this.lowerGate();
      this.log.info({ version: version.toString(), unlocked, keptNewer: keptNewer.map((k) => `${formatEndpoint(wanted[k.index])}@${k.heldVersion}`) }, 'lock removed');
    });
  }

  list(): Promise<LockEntry[]> {
    return this.serial(async () => {
      const now = monotonicNowNs();
      const held = await this.endpointMap.dump();
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
      const expired = await this.endpointMap.sweepExpired(monotonicNowNs());
      if (expired.count > 0) {
        const keySize = ENDPOINT_KEY_LAYOUT.size;
        const swept = Array.from({ length: expired.count }, (_, i) => formatEndpoint(decodeEndpointKey(expired.keys.subarray(i * keySize, (i + 1) * keySize))));
        this.log.info({ map: ENDPOINT_MAP_SHAPE.name, swept }, 'expired locks swept');
        if (expired.keys.length > 0 && countAddressWide(expired.keys) > 0) await this.lowerGate();
      }
      // Without the addon there is no mapping, and nothing this agent could have written there.
      const conns = nativeBpfMapProblem() ? 0 : this.connTable().sweepExpired(monotonicNowNs());
      if (conns > 0) this.log.info({ map: LOCK_CONN_MAP_NAME, sweptConnections: conns }, 'expired locks swept');
      return expired.count + conns;
    });
  }

  entryCount(): number | undefined {
    const endpoints = this.endpointMap.mirroredSize;
    if (endpoints === undefined) return undefined;
    if (this.conn) return endpoints + this.conn.table.size;
    return nativeBpfMapProblem() ? endpoints : undefined;
  }

  /**
   * Takes the lock out of the chain (the root is detached once nothing else runs in it) and
   * removes the lock's pins; the host's pin folder goes once it is empty.
   */
  uninstall(): Promise<void> {
    return this.serial(async () => {
      await this.chain.release(ChainSlot.lock);
      await removeObject(this.host, this.object);
      await this.host.exec('rm', ['-f', this.pins.formerProg, this.pins.legacyTupleMap]);
      await removeIfEmpty(this.host.exec, this.host.folder);
      // A later install creates new maps.
      this.endpointMap.forget();
      this.gate.forget();
      this.conn = undefined;
      this.mode = undefined;
      this.log.info({ pinDir: this.pins.dir }, 'network lock uninstalled');
    });
  }

  /** The gate (address-wide-gate.ts) to exactly the address-wide entries the endpoint map holds. */
  private async lowerGate(): Promise<void> {
    await this.gate.set(await this.endpointMap.countHeld(isAddressWideKey));
  }

  private serial<T>(op: () => Promise<T>): Promise<T> {
    const run = this.tail.then(op, op);
    this.tail = run.catch(() => undefined);
    return run;
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
}

/** Address-wide keys among packed endpoint keys. */
function countAddressWide(keys: Buffer): number {
  const words = keyWords(keys);
  const perKey = ENDPOINT_KEY_LAYOUT.size / 4;
  let n = 0;
  for (let at = 0; at < words.length; at += perKey) if (isAddressWideKey(words, at)) n++;
  return n;
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

/** Validates (address-wide entries allowed) and de-duplicates (same key = same entry). */
function uniqueEndpoints(endpoints: readonly Endpoint[]): Endpoint[] {
  const seen = new Map<string, Endpoint>();
  for (const e of endpoints) {
    const problem = lockEndpointProblem(e);
    if (problem) throw new LockRequestError('endpoints', problem);
    seen.set(keyId(e), { proto: e.proto, address: e.address, port: e.port });
  }
  return [...seen.values()];
}
