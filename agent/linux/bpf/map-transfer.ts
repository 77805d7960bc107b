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

/** Every entry of the map whose key `select` accepts (all of them without one). */
export async function exportEntries(access: MapAccess, shape: MapShape, select?: (key: Buffer) => boolean): Promise<MapEntries> {
  const { keySize, valueSize } = shape;
  const all = await access.dump();
  if (!select) return { keys: all.keys, values: all.values, count: all.count, keySize, valueSize };
  const keys = Buffer.alloc(all.keys.length);
  const values = Buffer.alloc(all.values.length);
  let count = 0;
  for (let i = 0; i < all.count; i++) {
    const key = all.keys.subarray(i * keySize, (i + 1) * keySize);
    if (!select(key)) continue;
    key.copy(keys, count * keySize);
    all.values.copy(values, count * valueSize, i * valueSize, (i + 1) * valueSize);
    count++;
  }
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
