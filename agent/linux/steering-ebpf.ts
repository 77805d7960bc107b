import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino, type Logger } from 'pino';
import type { Executor } from '../../lib/exec.js';
import type { SteeringCounter, SteeringCounters, SteeringDataplane, SteeringTable } from '../steering.js';
import { BPF_F_MMAPABLE, deleteFromPinnedMap, dumpPinnedMap, mapPinnedArray, pinnedMapId, updatePinnedMap, type PinnedMapShape } from './bpf-map-native.js';
import {
  BACKEND_LAYOUT,
  BPF_MAP_TYPE,
  compileSlot,
  countFlowsOf,
  MaglevTableCache,
  encodeVipKey,
  encodeVipValue,
  ipv4Bytes,
  META,
  RING_STRIDE,
  STEER_MAPS,
  STEER_MAX_ID,
  STEER_MAX_SERVICES,
  sumPerCpuCounter,
  vipKeySlot,
  writeBackendRecord,
  type SlotImage,
  type SteerMapSpec,
} from './steer-map-codec.js';
import { DirectSteerAttach, type SteerProgramLoader } from './steer-attach.js';

/*
 * The steering data plane on Linux: bpf/steer.c's maps programmed from the controller's table.
 *
 * apply() writes the table into the copy (slot) of the rule maps that packets are not using,
 * whole, and then flips steer_meta.active to it with one 4-byte store: the program reads the
 * active slot once per packet, so every packet sees one generation. The backends, rings and meta
 * are mmapped arrays written in this process's memory; only the VIP index (a hash) costs
 * syscalls, one batch each for deletes and updates. Counters and flows are single copies indexed
 * by the table's stable ids (steer_maps.h).
 *
 * Loading and attaching the programs is the loader's business (steer-attach.ts), so this class
 * moves unchanged onto the interface's program chain.
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
  /** This host's steering folder on bpffs, e.g. /sys/fs/bpf/godwit/<host>/steer. */
  pinDir: string;
  /** build/bpf/steer.o */
  objectPath: string;
  /** This host's data-plane IPv4: the tunnel's source, and what makes a backend local. */
  hostAddress: string;
  /** Other addresses of this host that tables may name as a backend's host. */
  localAddresses?: readonly string[];
  /** Default: the programs attached directly to the interface (DirectSteerAttach). */
  loader?: SteerProgramLoader;
  log?: Logger;
}

interface Mapped {
  mapId: number;
  mem: Buffer;
}

function shapeOf(m: SteerMapSpec): PinnedMapShape {
  return { name: m.name, type: BPF_MAP_TYPE[m.type], keySize: m.keySize, valueSize: m.valueSize };
}

/** Possible CPUs (a per-CPU map has a value for each), from "0-1" or "0,2-5". */
function possibleCpus(): number {
  const text = readFileSync('/sys/devices/system/cpu/possible', 'utf8').trim();
  let max = 0;
  for (const part of text.split(',')) max = Math.max(max, Number(part.split('-').pop()));
  return max + 1;
}

export class EbpfSteering implements SteeringDataplane {
  readonly loader: SteerProgramLoader;
  private readonly log: Logger;
  private readonly local: ReadonlySet<string>;
  private readonly mapped = new Map<string, Mapped>();
  private readonly rings = new MaglevTableCache();
  /** Unknown after a restart: as if a flip had just happened (one grace wait). */
  private lastFlipAt = Date.now();
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly opts: EbpfSteeringOptions) {
    ipv4Bytes(opts.hostAddress);
    this.log = opts.log ?? pino({ level: 'silent' });
    this.local = new Set([opts.hostAddress, ...(opts.localAddresses ?? [])]);
    this.loader = opts.loader ?? new DirectSteerAttach({ exec: opts.exec, iface: opts.iface, pinDir: opts.pinDir, objectPath: opts.objectPath, log: this.log });
  }

  install(): Promise<void> {
    return this.serial(async () => {
      await this.loader.load();
      this.mapped.clear();
      // The tunnel's source address; the rest of the meta (active slot, generations) is kept.
      ipv4Bytes(this.opts.hostAddress).copy(this.array(STEER_MAPS.meta), META.hostAddr);
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

      this.writeBackends(target, image);
      this.writeRings(target, image);
      this.writeVips(target, image);
      meta.writeBigUInt64LE(BigInt(image.generation), META.generation(target));
      // The flip: after every write above (Atomics.store is sequentially consistent).
      Atomics.store(new Uint32Array(meta.buffer, meta.byteOffset + META.active, 1), 0, target);
      this.lastFlipAt = Date.now();
      this.log.info({ generation: image.generation, slot: target, services: image.services.length, backends: image.backends.length }, 'steering table applied');
      return { generation: image.generation, applied: true };
    });
  }

  async appliedGeneration(): Promise<number> {
    const pin = this.loader.pins.map(STEER_MAPS.meta.name);
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
    const read = (m: SteerMapSpec) => {
      const valueBytes = Math.ceil(m.valueSize / 8) * 8 * cpus;
      const d = dumpPinnedMap(this.loader.pins.map(m.name), shapeOf(m), valueBytes);
      const out = new Map<number, SteeringCounter>();
      for (let i = 0; i < d.count; i++) {
        const c = sumPerCpuCounter(d.values, i * valueBytes, cpus);
        if (c.packets || c.flows) out.set(d.keys.readUInt32LE(i * 4), c);
      }
      return out;
    };
    return { services: read(STEER_MAPS.serviceStats), backends: read(STEER_MAPS.backendStats) };
  }

  async liveFlows(backendIds: readonly number[]): Promise<number> {
    const m = STEER_MAPS.flows;
    const d = dumpPinnedMap(this.loader.pins.map(m.name), shapeOf(m));
    return countFlowsOf(d.values, d.count, new Set(backendIds));
  }

  uninstall(): Promise<void> {
    return this.serial(async () => {
      this.mapped.clear();
      await this.loader.unload();
    });
  }

  /** Every id's record of the slot rewritten: the slot's region zeroed, then this table's backends. */
  private writeBackends(slot: number, image: SlotImage): void {
    const mem = this.array(STEER_MAPS.backends);
    const bytes = STEER_MAX_ID * BACKEND_LAYOUT.size;
    mem.fill(0, slot * bytes, (slot + 1) * bytes);
    for (const b of image.backends) writeBackendRecord(mem, slot, b);
  }

  private writeRings(slot: number, image: SlotImage): void {
    const mem = this.array(STEER_MAPS.rings);
    for (const s of image.services) {
      const at = (slot * STEER_MAX_SERVICES + s.ring) * RING_STRIDE;
      Buffer.from(s.table.buffer, s.table.byteOffset, s.table.byteLength).copy(mem, at);
    }
  }

  /** The slot's VIP entries made exactly the image's: stale ones deleted, the rest written. */
  private writeVips(slot: number, image: SlotImage): void {
    const m = STEER_MAPS.vips;
    const pin = this.loader.pins.map(m.name);
    const want = image.services.map((s) => ({ key: encodeVipKey(s, slot), value: encodeVipValue(s) }));
    const wanted = new Set(want.map((w) => w.key.toString('hex')));
    const held = dumpPinnedMap(pin, shapeOf(m));
    const stale: Buffer[] = [];
    for (let i = 0; i < held.count; i++) {
      const key = held.keys.subarray(i * m.keySize, (i + 1) * m.keySize);
      if (vipKeySlot(key) === slot && !wanted.has(key.toString('hex'))) stale.push(key);
    }
    deleteFromPinnedMap(pin, shapeOf(m), Buffer.concat(stale));
    updatePinnedMap(pin, shapeOf(m), Buffer.concat(want.map((w) => w.key)), Buffer.concat(want.map((w) => w.value)));
  }

  /** The mmapped values of an array map, mapped again when its pin names another map (reinstalled). */
  private array(m: SteerMapSpec): Buffer {
    const pin = this.loader.pins.map(m.name);
    const had = this.mapped.get(m.name);
    if (had && pinnedMapId(pin) === had.mapId) return had.mem;
    if ((m.flags & BPF_F_MMAPABLE) === 0) throw new Error(`${m.name} is not mmappable`);
    const { memory, mapId } = mapPinnedArray(pin, { name: m.name, valueSize: m.valueSize, maxEntries: m.maxEntries });
    const mem = Buffer.from(memory);
    this.mapped.set(m.name, { mapId, mem });
    return mem;
  }

  private serial<T>(op: () => Promise<T>): Promise<T> {
    const run = this.queue.then(op, op);
    this.queue = run.catch(() => undefined);
    return run;
  }
}
