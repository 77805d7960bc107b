import type { Executor } from '../../lib/exec.js';
import { readHandoffFile } from '../handoff-file.js';
import type { PackedMapEntries, SteeringCounter, SteeringHandoff, WorkloadSelector } from '../steering.js';
import { batchShape, type MapSpec } from './bpf/map-spec.js';
import { exportEntries, importEntries, mapAccess, type EntryCursor } from './bpf/map-transfer.js';
import { batchValueBytes, mapFile, NativeMap, possibleCpus } from './bpf/native-map.js';
import { COUNTER_LAYOUT, FLOW_RNAT, FLOW_VALUE_LAYOUT, ipv4Bytes, STEER_MAPS, STEER_MAX_ID } from './steer-map-codec.js';

/*
 * One workload's share of this host's steering state (bpf/steer_maps.h), out of the pinned maps
 * and into another host's: the map handoff of a migration. A workload is known by its backends'
 * ids and its addresses (WorkloadSelector):
 *  - steer_flows: the flows whose value names one of its backends (selected by value);
 *  - steer_rnat: the reverse-NAT entries whose key's backend address is one of its addresses;
 *  - steer_be_stats: its backends' counters, summed over CPUs on export, added into CPU 0's
 *    copy on import (a per-CPU counter is only ever read as a sum), zeroed on forget.
 * Built on the generic export/import of pinned maps (bpf/map-transfer.ts): an export is one
 * batch walk per map, an import one batch update per map.
 *
 * Counters are read, changed and written back: an increment the program makes on the same id
 * between the read and the write is lost (a few packets' worth; the handoff runs while the
 * workload is frozen, when its backends see next to no traffic here).
 */

/** A selector that names no valid backend id or address; nothing was read or written. */
export class WorkloadSelectorError extends Error {
  constructor(readonly problem: string) {
    super(`workload selector: ${problem}`);
    this.name = 'WorkloadSelectorError';
  }
}

/**
 * The image's steering file (agent/handoff-file.ts), mapped rather than copied (mapFile: on this
 * machine kind about 30 ms less for 100,000 flows); undefined when the image has none. What the
 * target imports before unlock: readHandoffFileMapped(imageDir) then importWorkload().
 */
export function readHandoffFileMapped(imageDir: string): Promise<SteeringHandoff | undefined> {
  return readHandoffFile(imageDir, mapFile);
}

export interface SteerHandoffOptions {
  exec: Executor;
  /** The pin of a steering map, by its name (the host's pin folder). */
  pin(mapName: string): string;
}

/** Ids as a byte per possible id: the selection loop's test is one array read (a Set's is several times slower at 100,000 entries). */
function idMask(ids: readonly number[]): Uint8Array {
  const mask = new Uint8Array(STEER_MAX_ID);
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 1 || id >= STEER_MAX_ID) throw new WorkloadSelectorError(`backend id ${id} is not 1..${STEER_MAX_ID - 1}`);
    mask[id] = 1;
  }
  return mask;
}

/** Addresses as the u32 a little-endian read of their network-order bytes gives (as keys hold them). */
function addressSet(addresses: readonly string[]): Set<number> {
  const out = new Set<number>();
  for (const a of addresses) {
    try {
      out.add(ipv4Bytes(a).readUInt32LE(0));
    } catch {
      throw new WorkloadSelectorError(`"${a}" is not an IPv4 address`);
    }
  }
  return out;
}

const FLOW_BACKEND = FLOW_VALUE_LAYOUT.members.find((m) => m.name === 'backend_id')!.offset;
const FLOW_FLAGS = FLOW_VALUE_LAYOUT.members.find((m) => m.name === 'flags')!.offset;
/** godwit_rnat_key.backend_addr is the key's first member. */
const RNAT_BACKEND_ADDR = 0;

export class SteerHandoff {
  constructor(private readonly opts: SteerHandoffOptions) {}

  /** The workload's flows, reverse NAT and counters as they are now; changes nothing. */
  async exportWorkload(selector: WorkloadSelector): Promise<SteeringHandoff> {
    const mask = idMask(selector.backendIds);
    const addrs = addressSet(selector.addresses);
    const flows = await this.exportFlows(mask);
    const rnat = await this.exportRnat(addrs);
    const backendCounters = new Map<number, SteeringCounter>();
    const ids = [...new Set(selector.backendIds)];
    const stats = await this.readCounters(ids);
    for (const id of ids) backendCounters.set(id, stats.sum(id));
    return { flows, rnat, backendCounters };
  }

  /** Flows and reverse NAT written (created or overwritten), counters added; returns the entries written. */
  async importWorkload(h: SteeringHandoff): Promise<number> {
    // Checked whole before anything is written: ids the counters cannot hold.
    const ids = [...h.backendCounters.keys()];
    idMask(ids);
    let written = await importEntries(this.access(STEER_MAPS.flows), batchShape(STEER_MAPS.flows), h.flows);
    written += await importEntries(this.access(STEER_MAPS.rnat), batchShape(STEER_MAPS.rnat), h.rnat);
    if (h.backendCounters.size === 0) return written;
    const stats = await this.readCounters(ids);
    for (const id of ids) stats.addToCpu0(id, h.backendCounters.get(id)!);
    await stats.write();
    return written + ids.length;
  }

  /**
   * The workload's reverse-NAT entries deleted and its counters zeroed. Its flows stay (the fabric
   * keeps delivering them here, and the program steers them on to the backend's new host), but
   * lose GODWIT_FLOW_RNAT: their reverse-NAT entry is gone, so should the backend ever be local
   * here again without a handoff, the program writes the entry again instead of trusting the
   * flag. Returns the entries removed: reverse-NAT entries, and counters that were not zero.
   */
  async forgetWorkload(selector: WorkloadSelector): Promise<number> {
    const ids = idMask(selector.backendIds);
    const addrs = addressSet(selector.addresses);
    const rnat = await this.exportRnat(addrs);
    const removed = rnat.count > 0 ? await this.access(STEER_MAPS.rnat).delete(rnat.keys) : 0;

    const flagged = await exportEntries(this.access(STEER_MAPS.flows), batchShape(STEER_MAPS.flows), (e) => ids[e.values.readUInt32LE(e.valueOffset + FLOW_BACKEND)] === 1 && (e.values.readUInt32LE(e.valueOffset + FLOW_FLAGS) & FLOW_RNAT) !== 0);
    if (flagged.count > 0) {
      for (let i = 0; i < flagged.count; i++) {
        const at = i * flagged.valueSize + FLOW_FLAGS;
        flagged.values.writeUInt32LE(flagged.values.readUInt32LE(at) & ~FLOW_RNAT, at);
      }
      await importEntries(this.access(STEER_MAPS.flows), batchShape(STEER_MAPS.flows), flagged);
    }

    const unique = [...new Set(selector.backendIds)];
    if (unique.length === 0) return removed;
    const stats = await this.readCounters(unique);
    const nonZero = unique.filter((id) => stats.held(id)).length;
    for (const id of unique) stats.zero(id);
    await stats.write();
    return removed + nonZero;
  }

  private async exportFlows(ids: Uint8Array): Promise<PackedMapEntries> {
    return exportEntries(this.access(STEER_MAPS.flows), batchShape(STEER_MAPS.flows), (e: EntryCursor) => ids[e.values.readUInt32LE(e.valueOffset + FLOW_BACKEND)] === 1);
  }

  private async exportRnat(addrs: ReadonlySet<number>): Promise<PackedMapEntries> {
    if (addrs.size === 0) return { keySize: STEER_MAPS.rnat.keySize, valueSize: STEER_MAPS.rnat.valueSize, count: 0, keys: Buffer.alloc(0), values: Buffer.alloc(0) };
    return exportEntries(this.access(STEER_MAPS.rnat), batchShape(STEER_MAPS.rnat), (e) => addrs.has(e.keys.readUInt32LE(e.keyOffset + RNAT_BACKEND_ADDR)));
  }

  /** These ids' counters of steer_be_stats (every CPU's copy), to sum or to change and write back. */
  private async readCounters(ids: readonly number[]): Promise<BackendStats> {
    const m = STEER_MAPS.backendStats;
    const access = new NativeMap(this.opts.pin(m.name), batchShape(m)); // per-CPU values: the addon's layout only
    const keys = Buffer.alloc(ids.length * 4);
    ids.forEach((id, i) => keys.writeUInt32LE(id, i * 4));
    const { values } = await access.lookup(keys);
    return new BackendStats(access, keys, values, batchValueBytes(batchShape(m)), possibleCpus());
  }

  private access(m: MapSpec) {
    return mapAccess(this.opts.exec, this.opts.pin(m.name), batchShape(m));
  }
}

const STRIDE = Math.ceil(COUNTER_LAYOUT.size / 8) * 8;

/** Some ids' per-CPU counters of steer_be_stats as read: id -> its CPUs' copies, changed in place, written back whole. */
class BackendStats {
  private readonly at = new Map<number, number>();

  constructor(
    private readonly access: NativeMap,
    private readonly keys: Buffer,
    private readonly values: Buffer,
    private readonly valueBytes: number,
    private readonly cpus: number,
  ) {
    for (let i = 0; i < keys.length / 4; i++) this.at.set(keys.readUInt32LE(i * 4), i * valueBytes);
  }

  private offset(id: number): number {
    const o = this.at.get(id);
    if (o === undefined) throw new RangeError(`backend id ${id} was not read`);
    return o;
  }

  sum(id: number): SteeringCounter {
    const base = this.offset(id);
    const c: SteeringCounter = { packets: 0n, bytes: 0n, flows: 0n };
    for (let cpu = 0; cpu < this.cpus; cpu++) {
      const o = base + cpu * STRIDE;
      c.packets += this.values.readBigUInt64LE(o);
      c.bytes += this.values.readBigUInt64LE(o + 8);
      c.flows += this.values.readBigUInt64LE(o + 16);
    }
    return c;
  }

  held(id: number): boolean {
    const c = this.sum(id);
    return c.packets !== 0n || c.bytes !== 0n || c.flows !== 0n;
  }

  addToCpu0(id: number, c: SteeringCounter): void {
    const o = this.offset(id);
    this.values.writeBigUInt64LE(BigInt.asUintN(64, this.values.readBigUInt64LE(o) + c.packets), o);
    this.values.writeBigUInt64LE(BigInt.asUintN(64, this.values.readBigUInt64LE(o + 8) + c.bytes), o + 8);
    this.values.writeBigUInt64LE(BigInt.asUintN(64, this.values.readBigUInt64LE(o + 16) + c.flows), o + 16);
  }

  zero(id: number): void {
    const o = this.offset(id);
    this.values.fill(0, o, o + this.valueBytes);
  }

  /** Every id read, with its values as they are now, written back in one batch. */
  async write(): Promise<void> {
    if (this.keys.length > 0) await this.access.update(this.keys, this.values);
  }
}
