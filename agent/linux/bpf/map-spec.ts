import type { Logger } from 'pino';
import type { Executor } from '../../../lib/exec.js';
import type { BatchMapType, MapShape } from './map-access.js';
import type { StructLayout } from './struct-layout.js';

/*
 * What a pinned map is, declared once by the feature that owns it: its shape as the kernel
 * reports it (checked before a pin is reused), the BTF structs its entries are made of, and the
 * version of its layout with the upgrades that carry state over from older layouts.
 */

/** Map types as `bpftool -j map show` names them. */
export type MapType = 'hash' | 'lru_hash' | 'array' | 'percpu_array' | 'ringbuf' | 'prog_array';

export interface MapSpec {
  /** The name in the object's source; bpftool pins it under this full name. */
  name: string;
  type: MapType;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  /** Map flags that must be set (BPF_F_MMAPABLE for a table written in memory). */
  flags?: number;
  /** Structs whose BTF layout a reused pin must match (key first, then value); empty: sizes only. */
  structs: readonly StructLayout[];
  /**
   * The layout version, counted per map from 1: bump it whenever a reused pin could not be read
   * as this spec says, and add an upgrade from the previous version.
   */
  version: number;
  upgrades?: readonly MapUpgrade[];
}

/**
 * Carries the state of an older layout into a freshly created map, before the new program
 * runs, so that what the old maps held (locks, flows) is still held when the new program takes
 * over. The older maps' pins are removed once the new program is live.
 */
export interface MapUpgrade {
  /** The layout version it starts from. */
  fromVersion: number;
  /**
   * Names of the pinned maps of that layout it reads. The map's own name when the map itself
   * changed layout (its old pin is set aside while the new one is created); another name when
   * the older layout kept this state in another map (which must still be pinned).
   */
  reads: readonly string[];
  copy(ctx: UpgradeContext): Promise<void>;
}

export interface UpgradeContext {
  exec: Executor;
  /** Pin of each map named in `reads`, as it was before this load. */
  from: Readonly<Record<string, string>>;
  /** Pin of the new, empty map. */
  to: string;
  log: Logger;
}

/** The kernel keeps a map's name in BPF_OBJ_NAME_LEN (16) bytes with the NUL: `bpftool map show` prints at most 15 characters. */
export function kernelMapName(name: string): string {
  return name.slice(0, 15);
}

/** A map's shape for batch reads and writes (map-access.ts); its type must be one read in batches. */
export function batchShape(spec: MapSpec): MapShape {
  if (spec.type === 'ringbuf' || spec.type === 'prog_array') throw new RangeError(`map ${spec.name} (${spec.type}) is not read and written in batches`);
  return { name: spec.name, type: spec.type satisfies BatchMapType, keySize: spec.keySize, valueSize: spec.valueSize, maxEntries: spec.maxEntries };
}
