import type { Logger } from 'pino';
import type { Executor } from '../../../lib/exec.js';
import { bpftoolJson } from './bpftool.js';
import type { MapSpec } from './map-spec.js';
import { layoutMismatch, structLayoutFromBtf } from './struct-layout.js';

/** A pinned map's layout is not the one its spec declares; reusing it would corrupt entries. */
export class MapLayoutError extends Error {
  constructor(
    readonly pinPath: string,
    readonly problem: string,
  ) {
    super(`pinned map ${pinPath} has another layout (${problem}); migrate it or uninstall on this host first`);
    this.name = 'MapLayoutError';
  }
}

interface MapInfo {
  type: string;
  bytes_key: number;
  bytes_value: number;
  max_entries: number;
  flags?: number;
  btf_id?: number;
}

/** Refuses (MapLayoutError) a pinned map whose shape or BTF struct layouts differ from the spec's. */
export async function checkPinnedLayout(exec: Executor, spec: MapSpec, pin: string, log: Logger): Promise<void> {
  const info = await bpftoolJson<MapInfo>(exec, ['map', 'show', 'pinned', pin]);
  const shape = (t: string, k: number, v: number, n: number, f: number) => `${t} key ${k} value ${v} max_entries ${n}${f ? ` flags ${f}` : ''}`;
  const want = shape(spec.type, spec.keySize, spec.valueSize, spec.maxEntries, spec.flags ?? 0);
  const have = shape(info.type, info.bytes_key, info.bytes_value, info.max_entries, (info.flags ?? 0) & (spec.flags ?? 0));
  if (want !== have) throw new MapLayoutError(pin, `expected ${want}, found ${have}`);
  if (spec.structs.length === 0) return;
  if (info.btf_id === undefined) {
    log.warn({ pin }, 'pinned map has no BTF; checked its sizes only');
    return;
  }
  const btf: unknown = await bpftoolJson(exec, ['btf', 'dump', 'id', String(info.btf_id)]);
  for (const layout of spec.structs) {
    const problem = layoutMismatch(layout, structLayoutFromBtf(btf, layout.name));
    if (problem) throw new MapLayoutError(pin, problem);
  }
}
