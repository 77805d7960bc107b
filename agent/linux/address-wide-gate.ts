import type { MapAccess } from './bpf/map-access.js';
import { batchShape } from './bpf/map-spec.js';
import { ADDRESS_WIDE_GATE_MAP } from './lock-maps.js';

/*
 * godwit_lock_any, the gate in front of the lock's address-wide lookup (bpf/lock.c): a bound on
 * how many address-wide entries (port ANY_PORT) godwit_lock_ep holds. While it is 0 a packet
 * that no entry matches costs the program no third lookup: on the miss path that lookup was
 * about a third of the program's time (bench lock-progrun).
 *
 * Safe because the bound never falls below the truth while a packet could need it: the lock
 * raises it before it writes an address-wide entry, and lowers it only to the number the map
 * still holds after an unlock or a sweep. Too high costs only the lookup it would have saved.
 */
export const ADDRESS_WIDE_GATE_SHAPE = batchShape(ADDRESS_WIDE_GATE_MAP);

export class AddressWideGate {
  /** What this process last wrote; undefined when unknown (before the first write, after a reinstall). */
  private written: number | undefined;

  constructor(private readonly access: MapAccess) {}

  /** Sets the bound to n (a no-op when that is what it last wrote). */
  async set(n: number): Promise<void> {
    if (n === this.written) return;
    const value = Buffer.alloc(4);
    value.writeUInt32LE(Math.min(n, 0xffff_ffff));
    this.written = undefined; // in doubt until the write went in
    await this.access.update(Buffer.alloc(4), value);
    this.written = n;
  }

  /** Forgets what it wrote: the map may be another one now. */
  forget(): void {
    this.written = undefined;
  }
}
