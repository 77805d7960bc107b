import type { Executor } from '../../../lib/exec.js';
import { BPFTOOL_TIMEOUT_MS, fromBpftoolHex } from './bpftool.js';

/*
 * Reads and writes of one pinned map, whole batches at a time: keys and values packed back to
 * back in one Buffer each (the layout of the kernel's batch calls). Two ways in: the native
 * addon's batch syscalls (native-map.ts, NativeMap) and a bpftool process per operation
 * (BpftoolMap below, the reference and the fallback where the addon is not built).
 */

/** Entries of a map packed back to back: count keys in `keys`, count values in `values`. */
export interface PackedEntries {
  keys: Buffer;
  values: Buffer;
  count: number;
}

/** The map types whose entries are read and written as key/value batches. */
export type BatchMapType = 'hash' | 'lru_hash' | 'array' | 'percpu_array';

/** What a map is, as far as reading and writing its entries goes (the rest is in MapSpec). */
export interface MapShape {
  name: string;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  /** Default 'hash'. */
  type?: BatchMapType;
}

/** How a map is read and written: the addon's syscalls in this process, or a bpftool process. */
export type MapAccessMethod = 'native' | 'bpftool';

/** Every entry of a map, with the kernel's id of the map when the access knows it (native). */
export interface MapDump extends PackedEntries {
  mapId?: number;
}

export interface MapAccess {
  readonly pin: string;
  readonly method: MapAccessMethod;
  /** Every entry. */
  dump(): Promise<MapDump>;
  /**
   * Creates or overwrites every entry; on a failure part way the earlier ones stay written.
   * Given a mapId (a dump's), a pin that now names another map is refused before anything is
   * written (BpfMapReplacedError); an access that cannot tell (bpftool) ignores it.
   */
  update(keys: Buffer, values: Buffer, mapId?: number): Promise<void>;
  /** Deletes the entries of these keys, skipping keys the map does not hold; returns how many went. mapId as for update(). */
  delete(keys: Buffer, mapId?: number): Promise<number>;
}

/**
 * Map access through bpftool: one process per dump, one per group of writes (`bpftool batch`,
 * which reopens the pinned map per line: 10,000 lines take about 100 ms, FIELD-NOTES). It cannot
 * tell which map a pin names without one more process, so it reports no map id and checks none.
 */
export class BpftoolMap implements MapAccess {
  readonly method = 'bpftool';

  constructor(
    private readonly exec: Executor,
    readonly pin: string,
    private readonly shape: MapShape,
  ) {}

  async dump(): Promise<MapDump> {
    const r = await this.exec('bpftool', ['-j', 'map', 'dump', 'pinned', this.pin], { timeoutMs: BPFTOOL_TIMEOUT_MS });
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
      await this.exec('bpftool', lines[0].split(' '), { timeoutMs: BPFTOOL_TIMEOUT_MS });
      return;
    }
    await this.exec('bpftool', ['batch', 'file', '-'], { input: lines.join('\n') + '\n', timeoutMs: BPFTOOL_TIMEOUT_MS });
  }
}

/** `c6 12 fa 01`: bytes as bpftool's `hex` arguments, for one batch-file line. */
function spacedHex(b: Buffer, at: number, size: number): string {
  return b.toString('hex', at, at + size).replace(/(..)(?!$)/g, '$1 ');
}
