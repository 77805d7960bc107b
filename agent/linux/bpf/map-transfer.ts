import type { Executor } from '../../../lib/exec.js';
import { BpftoolMap, type MapAccess, type MapAccessMethod, type MapShape, type PackedEntries } from './map-access.js';
import { NativeMap, nativeBpfMapProblem } from './native-map.js';

/*
 * A map's entries out of one host and into another (or into a map of a newer layout): packed
 * keys and values, the layout of the kernel's batch calls, so that an export is one batch
 * lookup and an import one batch update through the native addon.
 */

/** Entries of one map, packed; keySize and valueSize say how to walk them. */
export interface MapEntries extends PackedEntries {
  keySize: number;
  valueSize: number;
}

/** The native addon's access when it is built (or when asked for), else bpftool's. */
export function mapAccess(exec: Executor, pin: string, shape: MapShape, method?: MapAccessMethod): MapAccess {
  const m = method ?? (nativeBpfMapProblem() ? 'bpftool' : 'native');
  return m === 'native' ? new NativeMap(pin, shape) : new BpftoolMap(exec, pin, shape);
}

/**
 * One entry of a dump, as a selector sees it: its key at `keyOffset` in `keys`, its value at
 * `valueOffset` in `values`. The same object is moved along the dump (no view is made per
 * entry: two subarrays per entry cost ~40 ms per 100,000 entries on this machine kind, more than
 * the kernel's batch lookup of them).
 */
export interface EntryCursor {
  readonly keys: Buffer;
  readonly values: Buffer;
  index: number;
  keyOffset: number;
  valueOffset: number;
}

/** Decides whether the entry under the cursor is exported; read it, do not keep the cursor. */
export type EntrySelector = (entry: EntryCursor) => boolean;

/**
 * Every entry of the map that `select` accepts (all of them without one): it sees the key and
 * the value (a flow is a workload's by its value's backend).
 */
export async function exportEntries(access: MapAccess, shape: MapShape, select?: EntrySelector): Promise<MapEntries> {
  const { keySize, valueSize } = shape;
  const all = await access.dump();
  const entries = { keys: all.keys, values: all.values, count: all.count, keySize, valueSize };
  // The dump is this call's own: selected in place.
  return select ? selectEntries(entries, select, true) : entries;
}

/**
 * The entries `select` accepts, in their order, packed again. Selected entries that lie next to
 * each other are copied as one run (a workload's share of a map is often most of it). inPlace:
 * packed at the front of `all`'s own buffers, which the caller gives up; no new memory is
 * touched (on this machine kind a first touch of fresh memory costs ~10 ms per MB, more than
 * the kernel's batch walk of the same entries).
 */
export function selectEntries(all: MapEntries, select: EntrySelector, inPlace = false): MapEntries {
  const { keySize, valueSize } = all;
  const keys = inPlace ? all.keys : Buffer.allocUnsafe(all.count * keySize);
  const values = inPlace ? all.values : Buffer.allocUnsafe(all.count * valueSize);
  const cursor: EntryCursor = { keys: all.keys, values: all.values, index: 0, keyOffset: 0, valueOffset: 0 };
  let count = 0;
  let runStart = -1; // first entry of the current run of selected entries, -1 when none
  const flush = (end: number) => {
    if (runStart < 0) return;
    // copy() is memmove: in place, a run only ever moves towards the front.
    if (!inPlace || count !== runStart) {
      all.keys.copy(keys, count * keySize, runStart * keySize, end * keySize);
      all.values.copy(values, count * valueSize, runStart * valueSize, end * valueSize);
    }
    count += end - runStart;
    runStart = -1;
  };
  for (let i = 0; i < all.count; i++) {
    cursor.index = i;
    cursor.keyOffset = i * keySize;
    cursor.valueOffset = i * valueSize;
    if (select(cursor)) {
      if (runStart < 0) runStart = i;
    } else flush(i);
  }
  flush(all.count);
  return { keys: keys.subarray(0, count * keySize), values: values.subarray(0, count * valueSize), count, keySize, valueSize };
}

/** Writes the entries (creating or overwriting each); returns how many. Refuses entries of another shape. */
export async function importEntries(access: MapAccess, shape: MapShape, entries: MapEntries): Promise<number> {
  if (entries.keySize !== shape.keySize || entries.valueSize !== shape.valueSize)
    throw new RangeError(`entries of ${entries.keySize}-byte keys and ${entries.valueSize}-byte values do not fit map ${shape.name} (${shape.keySize} and ${shape.valueSize})`);
  if (entries.keys.length !== entries.count * entries.keySize || entries.values.length !== entries.count * entries.valueSize)
    throw new RangeError(`${entries.count} entries need ${entries.count * entries.keySize} key and ${entries.count * entries.valueSize} value bytes`);
  if (entries.count === 0) return 0;
  await access.update(entries.keys, entries.values);
  return entries.count;
}
