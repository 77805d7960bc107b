import type { Executor } from '../../../lib/exec.js';
import { pathExists, run } from './bpftool.js';
import { BpftoolMap } from './map-access.js';

/*
 * The layout version of every map pinned in a host's folder, itself a small pinned hash map
 * (DIR/layouts: map name -> u32 version).
 *
 * Why a pinned map and not a file: the record must live exactly as long as the pins it
 * describes. Pins vanish at reboot and with `rm -rf` of the folder; a file under /var/lib would
 * outlive them and then describe maps that are gone, and bpffs holds no regular files. Read and
 * written through bpftool: a handful of entries once per install, so no addon is needed.
 *
 * Hosts installed before the record existed have no entry for their maps: install reads a
 * missing entry as "the version the BTF check accepts" (maps.ts).
 */

/** Key: the map's full name, NUL-padded (names stay well below this). */
const NAME_BYTES = 32;
const RECORD_SHAPE = { name: 'godwit_layouts', keySize: NAME_BYTES, valueSize: 4, maxEntries: 256 };

export class LayoutRecord {
  private readonly access: BpftoolMap;

  constructor(
    private readonly exec: Executor,
    readonly pin: string,
  ) {
    this.access = new BpftoolMap(exec, pin, RECORD_SHAPE);
  }

  /** Every recorded version; empty when nothing is recorded yet. */
  async read(): Promise<Map<string, number>> {
    const versions = new Map<string, number>();
    if (!(await pathExists(this.exec, this.pin))) return versions;
    const held = await this.access.dump();
    for (let i = 0; i < held.count; i++) {
      const key = held.keys.subarray(i * NAME_BYTES, (i + 1) * NAME_BYTES);
      const end = key.indexOf(0);
      versions.set(key.toString('utf8', 0, end < 0 ? NAME_BYTES : end), held.values.readUInt32LE(i * 4));
    }
    return versions;
  }

  async write(versions: ReadonlyMap<string, number>): Promise<void> {
    if (versions.size === 0) return;
    if (!(await pathExists(this.exec, this.pin)))
      await run(this.exec, 'bpftool', ['map', 'create', this.pin, 'type', 'hash', 'key', String(NAME_BYTES), 'value', '4', 'entries', String(RECORD_SHAPE.maxEntries), 'name', RECORD_SHAPE.name]);
    const names = [...versions.keys()];
    const values = Buffer.alloc(names.length * 4);
    names.forEach((n, i) => values.writeUInt32LE(versions.get(n)!, i * 4));
    await this.access.update(nameKeys(names), values);
  }

  /** Forgets these maps; removes the record once it holds none. */
  async forget(names: readonly string[]): Promise<void> {
    if (!(await pathExists(this.exec, this.pin))) return;
    const known = await this.read();
    const gone = names.filter((n) => known.has(n));
    if (gone.length === known.size) {
      await run(this.exec, 'rm', ['-f', this.pin]);
      return;
    }
    await this.access.delete(nameKeys(gone));
  }
}

function nameKeys(names: readonly string[]): Buffer {
  const keys = Buffer.alloc(names.length * NAME_BYTES);
  names.forEach((n, i) => {
    if (Buffer.byteLength(n) >= NAME_BYTES) throw new RangeError(`map name "${n}" is longer than ${NAME_BYTES - 1} bytes`);
    keys.write(n, i * NAME_BYTES, 'utf8');
  });
  return keys;
}
