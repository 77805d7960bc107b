import { setTimeout as sleep } from 'node:timers/promises';
import { pino, type Logger } from 'pino';
import type { Executor } from '../../lib/exec.js';
import type { SteeringCounter, SteeringCounters, SteeringDataplane, SteeringForwarding, SteeringHandoff, SteeringTable, WorkloadSelector } from '../steering.js';
import { batchShape, type MapSpec } from './bpf/map-spec.js';
import { batchValueBytes, BPF_F_MMAPABLE, mapPinnedArray, NativeMap, pinnedMapId, possibleCpus } from './bpf/native-map.js';
import type { XdpMode } from './bpf/xdp-chain.js';
import {
  addrKeySlot,
  BACKEND_LAYOUT,
  compileSlot,
  countFlowsOf,
  MaglevTableCache,
  encodeAddrKey,
  encodeAddrValue,
  encodeVipKey,
  encodeVipValue,
  FWD_FORWARDED,
  FWD_STALE,
  ipv4Bytes,
  META,
  RING_STRIDE,
  STEER_MAPS,
  STEER_MAX_ID,
  STEER_MAX_SERVICES,
  sumPerCpuCounter,
  sumPerCpuPackets,
  vipKeySlot,
  writeBackendRecord,
  type SlotImage,
} from './steer-map-codec.js';
import { SteerHandoff } from './steer-handoff.js';
import { SteerPrograms } from './steer-object.js';

/*
 * The steering data plane on Linux: bpf/steer.c's maps programmed from the controller's table.
 *
 * apply() writes the table into the copy (slot) of the rule maps that packets are not using,
 * whole, and then flips steer_meta.active to it with one 4-byte store: the program reads the
 * active slot once per packet, so every packet sees one generation. The backends, rings and meta
 * are mmapped arrays written in this process's memory; only the VIP index and the workload
 * addresses (hashes) cost syscalls, one batch each for deletes and updates. Counters and flows are single copies indexed
 * by the table's stable ids (steer_maps.h).
 *
 * Loading and attaching the programs is steer-object.ts's business (the BPF lifecycle: XDP chain
 * slot ChainSlot.steer behind the root, TC egress); this class reads and writes the pinned maps.
 */

/**
 * How long a copy that packets used must rest before it is rewritten. A packet that read the
 * active slot just before a flip goes on reading that copy until its program run ends: XDP runs
 * to completion in softirq, a few microseconds at most, so a millisecond is three orders of
 * magnitude of margin. No kernel call waits for it from user space (an RCU grace period is not
 * exposed for plain maps), hence a sleep, and only when a flip was that recent.
 */
const IN_FLIGHT_GRACE_MS = 2;

export interface EbpfSteeringOptions {
  exec: Executor;
  /** The host's interface (XDP ingress and TC egress). */
  iface: string;
  /** This host's pin folder on bpffs, the lock's too (one XDP chain per interface), e.g. /sys/fs/bpf/godwit/<host>. */
  pinDir: string;
  /** build/bpf/steer.o (root.o beside it). */
  objectPath: string;
  /** This host's data-plane IPv4: the tunnel's source, and what makes a backend local. */
  hostAddress: string;
  /** Other addresses of this host that tables may name as a backend's host. */
  localAddresses?: readonly string[];
  /** false: load and pin the programs without attaching them, for BPF_PROG_TEST_RUN. Default true. */
  attach?: boolean;
  log?: Logger;
}

interface Mapped {
  mapId: number;
  mem: Buffer;
}

/**
 * What this process last wrote into one slot, so that the next write to it touches only what
 * differs (a generation usually changes one service: the rest of the slot is already right).
 * Known only for a slot this process wrote since install(), and only while the slot still holds
 * the generation written; otherwise the slot is rewritten whole (after a restart, once per slot).
 */
interface SlotState {
  generation: number;
  backendIds: Set<number>;
  /** By ring index: the Maglev table written there (MaglevTableCache gives the same object for the same input). */
  rings: Uint32Array[];
  /** steer_vips entries of the slot: key hex -> value hex. */
  vips: Map<string, string>;
  /** steer_addrs entries of the slot: key hex -> value hex. */
  addrs: Map<string, string>;
}

/** A hash map of the rule table: its entries carry their slot in the key. */
interface SlottedHash {
  spec: MapSpec;
  slotOf(key: Buffer): number;
}

export class EbpfSteering implements SteeringDataplane {
  readonly programs: SteerPrograms;
  private readonly log: Logger;
  private readonly local: ReadonlySet<string>;
  private readonly mapped = new Map<string, Mapped>();
  private readonly rings = new MaglevTableCache();
  private readonly handoff: SteerHandoff;
  private readonly slots: (SlotState | undefined)[] = [undefined, undefined];
  /** Unknown after a restart: as if a flip had just happened (one grace wait). */
  private lastFlipAt = Date.now();
  private mode: XdpMode | undefined;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly opts: EbpfSteeringOptions) {
    this.log = opts.log ?? pino({ level: 'silent' });
    this.local = new Set([opts.hostAddress, ...(opts.localAddresses ?? [])]);
    this.programs = new SteerPrograms({ exec: opts.exec, iface: opts.iface, pinDir: opts.pinDir, objectPath: opts.objectPath, attach: opts.attach, log: this.log });
    this.handoff = new SteerHandoff({ exec: opts.exec, pin: (name) => this.pin(name) });
  }

  /** How the interface's XDP root is attached after install() (undefined when not attaching). */
  get attachMode(): XdpMode | undefined {
    return this.mode;
  }

  install(): Promise<void> {
    return this.serial(async () => {
      const hostAddr = ipv4Bytes(this.opts.hostAddress); // refused before anything is loaded
      this.mode = await this.programs.load();
      this.forgetMaps();
      // The tunnel's source address; the rest of the meta (active slot, generations) is kept.
      hostAddr.copy(this.array(STEER_MAPS.meta), META.hostAddr);
    });
  }

  apply(table: SteeringTable): Promise<{ generation: number; applied: boolean }> {
    return this.serial(async () => {
      const meta = this.array(STEER_MAPS.meta);
      const active = meta.readUInt32LE(META.active) & 1;
      const held = Number(meta.readBigUInt64LE(META.generation(active)));
      if (table.generation <= held) return { generation: held, applied: false };
      const image = compileSlot(table, this.local, this.rings); // throws before anything is written
      const target = 1 - active;
      const wait = this.lastFlipAt + IN_FLIGHT_GRACE_MS - Date.now();
      if (wait > 0) await sleep(wait);

      // The slot is only known to hold what this process wrote if it still has that generation.
      const known = this.slots[target];
      const before = known && Number(meta.readBigUInt64LE(META.generation(target))) === known.generation ? known : undefined;
      this.slots[target] = undefined; // unknown while half written (a failed write leaves it so)
      const backendIds = this.writeBackends(target, image, before);
      const rings = this.writeRings(target, image, before);
      const vips = await this.writeVips(target, image, before);
      const addrs = await this.writeAddrs(target, image, before);
      meta.writeBigUInt64LE(BigInt(image.generation), META.generation(target));
      this.slots[target] = { generation: image.generation, backendIds, rings, vips, addrs };
      // The flip: after every write above (Atomics.store is sequentially consistent).
      Atomics.store(new Uint32Array(meta.buffer, meta.byteOffset + META.active, 1), 0, target);
      this.lastFlipAt = Date.now();
      // debug: one line per generation on every host is a cost the fleet pays for each change.
      this.log.debug({ generation: image.generation, slot: target, services: image.services.length, backends: image.backends.length, addresses: image.addresses.length }, 'steering table applied');
      return { generation: image.generation, applied: true };
    });
  }

  async appliedGeneration(): Promise<number> {
    const pin = this.pin(STEER_MAPS.meta.name);
    let meta: Buffer;
    try {
      meta = this.array(STEER_MAPS.meta);
    } catch (err) {
      if ((err as { code?: string }).code === 'ENOENT') return 0;
      throw Object.assign(err as Error, { pin });
    }
    return Number(meta.readBigUInt64LE(META.generation(meta.readUInt32LE(META.active) & 1)));
  }

  async counters(): Promise<SteeringCounters> {
    const cpus = possibleCpus();
    const read = async (m: MapSpec) => {
      const valueBytes = batchValueBytes(batchShape(m));
      const d = await this.map(m).dump();
      const out = new Map<number, SteeringCounter>();
      for (let i = 0; i < d.count; i++) {
        const c = sumPerCpuCounter(d.values, i * valueBytes, cpus);
        if (c.packets || c.flows) out.set(d.keys.readUInt32LE(i * 4), c);
      }
      return out;
    };
    return { services: await read(STEER_MAPS.serviceStats), backends: await read(STEER_MAPS.backendStats) };
  }

  async liveFlows(backendIds: readonly number[]): Promise<number> {
    const m = STEER_MAPS.flows;
    const d = await this.map(m).dump();
    return countFlowsOf(d.values, d.count, new Set(backendIds));
  }

  async forwarding(): Promise<SteeringForwarding> {
    const m = STEER_MAPS.fwd;
    const d = await this.map(m).dump();
    const cpus = possibleCpus();
    const valueBytes = batchValueBytes(batchShape(m));
    const out: SteeringForwarding = { forwarded: 0n, staleDropped: 0n };
    for (let i = 0; i < d.count; i++) {
      const n = sumPerCpuPackets(d.values, i * valueBytes, cpus);
      const index = d.keys.readUInt32LE(i * 4);
      if (index === FWD_FORWARDED) out.forwarded = n;
      else if (index === FWD_STALE) out.staleDropped = n;
    }
    return out;
  }

  // The map handoff of a migration: agent/linux/steer-handoff.ts.
  exportWorkload(selector: WorkloadSelector): Promise<SteeringHandoff> {
    return this.serial(() => this.handoff.exportWorkload(selector));
  }

  importWorkload(handoff: SteeringHandoff): Promise<number> {
    return this.serial(() => this.handoff.importWorkload(handoff));
  }

  forgetWorkload(selector: WorkloadSelector): Promise<number> {
    return this.serial(() => this.handoff.forgetWorkload(selector));
  }

  uninstall(): Promise<void> {
    return this.serial(async () => {
      this.forgetMaps();
      await this.programs.unload();
      this.mode = undefined;
    });
  }

  /**
   * The slot's backend records made the image's: the records of ids it no longer has zeroed
   * (the whole region when the slot's content is unknown), then this table's backends written.
   */
  private writeBackends(slot: number, image: SlotImage, before: SlotState | undefined): Set<number> {
    const mem = this.array(STEER_MAPS.backends);
    const size = BACKEND_LAYOUT.size;
    const ids = new Set(image.backends.map((b) => b.id));
    if (!before) {
      const bytes = STEER_MAX_ID * size;
      mem.fill(0, slot * bytes, (slot + 1) * bytes);
    } else {
      for (const id of before.backendIds) {
        if (ids.has(id)) continue;
        const at = (slot * STEER_MAX_ID + id) * size;
        mem.fill(0, at, at + size);
      }
    }
    for (const b of image.backends) writeBackendRecord(mem, slot, b);
    return ids;
  }

  /** Each service's ring copied in, unless the slot already holds that very table at that index. */
  private writeRings(slot: number, image: SlotImage, before: SlotState | undefined): Uint32Array[] {
    const mem = this.array(STEER_MAPS.rings);
    const written: Uint32Array[] = [];
    for (const s of image.services) {
      written[s.ring] = s.table;
      if (before?.rings[s.ring] === s.table) continue;
      const at = (slot * STEER_MAX_SERVICES + s.ring) * RING_STRIDE;
      Buffer.from(s.table.buffer, s.table.byteOffset, s.table.byteLength).copy(mem, at);
    }
    return written;
  }

  /** The slot's VIP entries made exactly the image's (syncSlot). */
  private writeVips(slot: number, image: SlotImage, before: SlotState | undefined): Promise<Map<string, string>> {
    const want = new Map<string, { key: Buffer; value: Buffer }>();
    for (const s of image.services) {
      const key = encodeVipKey(s, slot);
      want.set(key.toString('hex'), { key, value: encodeVipValue(s) });
    }
    return this.syncSlot({ spec: STEER_MAPS.vips, slotOf: vipKeySlot }, slot, want, before?.vips);
  }

  /** The slot's workload-address entries made exactly the image's (syncSlot). */
  private writeAddrs(slot: number, image: SlotImage, before: SlotState | undefined): Promise<Map<string, string>> {
    const want = new Map<string, { key: Buffer; value: Buffer }>();
    for (const a of image.addresses) {
      const key = encodeAddrKey(a.address, slot);
      want.set(key.toString('hex'), { key, value: encodeAddrValue(a) });
    }
    return this.syncSlot({ spec: STEER_MAPS.addrs, slotOf: addrKeySlot }, slot, want, before?.addrs);
  }

  /**
   * One slot's entries of a rule-table hash made exactly `want`: stale ones deleted, new or
   * changed ones written. The slot's entries come from what this process wrote there when it
   * knows (`held`), else from a dump; a generation that changes none costs no syscall.
   */
  private async syncSlot(h: SlottedHash, slot: number, want: Map<string, { key: Buffer; value: Buffer }>, known: Map<string, string> | undefined): Promise<Map<string, string>> {
    const m = h.spec;
    const map = this.map(m);
    let held = known;
    if (!held) {
      held = new Map();
      const d = await map.dump();
      for (let i = 0; i < d.count; i++) {
        const key = d.keys.subarray(i * m.keySize, (i + 1) * m.keySize);
        if (h.slotOf(key) === slot) held.set(key.toString('hex'), d.values.subarray(i * m.valueSize, (i + 1) * m.valueSize).toString('hex'));
      }
    }
    const stale: Buffer[] = [];
    for (const k of held.keys()) if (!want.has(k)) stale.push(Buffer.from(k, 'hex'));
    const changed = [...want].filter(([k, w]) => held.get(k) !== w.value.toString('hex')).map(([, w]) => w);
    if (stale.length > 0) await map.delete(Buffer.concat(stale));
    if (changed.length > 0) await map.update(Buffer.concat(changed.map((w) => w.key)), Buffer.concat(changed.map((w) => w.value)));
    return new Map([...want].map(([k, w]) => [k, w.value.toString('hex')]));
  }

  /** Mappings and what was written through them, forgotten (the maps were replaced or are going). */
  private forgetMaps(): void {
    this.mapped.clear();
    this.slots.fill(undefined);
  }

  /** The mmapped values of an array map, mapped again when its pin names another map (reinstalled). */
  private array(m: MapSpec): Buffer {
    const pin = this.pin(m.name);
    const had = this.mapped.get(m.name);
    if (had && pinnedMapId(pin) === had.mapId) return had.mem;
    if (((m.flags ?? 0) & BPF_F_MMAPABLE) === 0) throw new Error(`${m.name} is not mmappable`);
    const { memory, mapId } = mapPinnedArray(pin, { name: m.name, valueSize: m.valueSize, maxEntries: m.maxEntries });
    const mem = Buffer.from(memory);
    // Another map under the pin (reinstalled from elsewhere): what this process wrote is not in it.
    if (had) this.slots.fill(undefined);
    this.mapped.set(m.name, { mapId, mem });
    return mem;
  }

  private pin(name: string): string {
    return this.programs.folder.mapPin(name);
  }

  private map(m: MapSpec): NativeMap {
    return new NativeMap(this.pin(m.name), batchShape(m));
  }

  private serial<T>(op: () => Promise<T>): Promise<T> {
    const run = this.queue.then(op, op);
    this.queue = run.catch(() => undefined);
    return run;
  }
}
