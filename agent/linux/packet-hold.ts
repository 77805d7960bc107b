/**
 * Held packets: what the XDP lock stopped during a freeze, delivered after unlock.
 *
 * Why: a peer whose segments are dropped during the freeze retransmits on an exponentially
 * backed-off timer (200 ms, 400 ms, 800 ms, ...), so after unlock it stays silent for up to as
 * long again as the freeze lasted. Linux peers that already timed out do not answer duplicate
 * ACKs or window updates from the restored side (in the Loss state only a timer, RACK or an
 * ICMP revert sends again). Delivering the very packets that were stopped needs nothing from
 * the peer: the restored socket ACKs them, which tells the peer its timeout was spurious (the
 * ACK echoes the original's timestamp) and it goes on sending at once. Seen from the peer the
 * freeze was a delay, not a loss.
 *
 * bpf/lock.c copies every stopped frame into the ring godwit_held. The agent drains the ring
 * when it needs the packets (the source when the image leaves, the target at unlock), joins each
 * connection's contiguous data into one segment, and sends them again from this host through a
 * raw socket (native/bpfmap/held.c): to the restored workload's own address, so the local stack
 * takes them as if they had just arrived.
 */
import { pino, type Logger } from 'pino';
import type { Endpoint } from '../../lib/endpoint.js';
import { splitHeld } from '../held-packets.js';
import type { HeldPackets, HeldTraffic } from '../platform.js';
import type { MapSpec } from './bpf/map-spec.js';
import { coalescePackets, drainRing, selectHeld, sendRawPackets } from './bpf/native-map.js';
import { encodeEndpointKeys } from './lock-map-codec.js';

/** GODWIT_HELD_RING_BYTES in bpf/lock_maps.h. */
export const HELD_RING_BYTES = 32 * 1024 * 1024;

/**
 * The held-packet maps of bpf/lock.c (bpf/lock_maps.h): the ring, its counters, the per-CPU
 * scratch record. Loaded with the lock; nothing in them needs carrying over to a new layout.
 */
export const HELD_MAPS: readonly MapSpec[] = [
  { name: 'godwit_held', type: 'ringbuf', keySize: 0, valueSize: 0, maxEntries: HELD_RING_BYTES, structs: [], version: 1 },
  { name: 'godwit_hold_stats', type: 'percpu_array', keySize: 4, valueSize: 24, maxEntries: 1, structs: [], version: 1 },
  { name: 'godwit_held_scratch', type: 'percpu_array', keySize: 4, valueSize: 16 + 1536, maxEntries: 1, structs: [], version: 1 },
];

/**
 * Drained records no endpoint has claimed yet (another migration's, still locked) are kept this
 * long at most: past it, their lock's lease has run out and their peers retransmitted long ago.
 */
const UNCLAIMED_MAX_AGE_MS = 10 * 60_000;
/** And this many bytes at most; the oldest go first. */
const UNCLAIMED_MAX_BYTES = 128 * 1024 * 1024;

/** Records of the ring, as drained at one time. */
interface Drained {
  atMs: number;
  records: Buffer;
}

export interface RingHeldTrafficOptions {
  /** The pinned godwit_held ring. */
  ringPin: string;
  log?: Logger;
}

/**
 * HeldTraffic on the lock's ring, delivered through a raw socket of this host. Every step per
 * packet (parsing, selecting, joining, sending) is native: a freeze of 1,000 chatty connections
 * holds about 11,000 packets, and this runs inside the freeze.
 */
export class RingHeldTraffic implements HeldTraffic {
  private readonly log: Logger;
  /** Drained but not yet claimed, oldest first. */
  private unclaimed: Drained[] = [];

  constructor(private readonly opts: RingHeldTrafficOptions) {
    this.log = (opts.log ?? pino({ enabled: false })).child({ component: 'packet-hold' });
  }

  take(endpoints: readonly Endpoint[]): HeldPackets {
    const keys = encodeEndpointKeys(endpoints);
    const now = Date.now();
    const sources = [...this.unclaimed, { atMs: now, records: drainRing(this.opts.ringPin, HELD_RING_BYTES) }];
    const taken: Buffer[] = [];
    const kept: Drained[] = [];
    for (const d of sources) {
      const s = selectHeld(d.records, keys);
      taken.push(s.taken);
      if (s.kept.length > 0) kept.push({ atMs: d.atMs, records: s.kept });
    }
    this.keepUnclaimed(kept, now);
    const bytes = coalescePackets(Buffer.concat(taken));
    return { count: splitHeld(bytes).length, bytes };
  }

  deliver(held: HeldPackets): number {
    if (held.count === 0) return 0;
    // Joined again: a list made of several takes (the image's and this host's) overlaps. The
    // result is a fresh buffer, which rawSend may rewrite (checksums) as it sends.
    return sendRawPackets(coalescePackets(held.bytes));
  }

  discardAll(): number {
    const drained = drainRing(this.opts.ringPin, HELD_RING_BYTES);
    const n = [...this.unclaimed.map((d) => d.records), drained].reduce((sum, r) => sum + splitHeld(r).length, 0);
    this.unclaimed = [];
    return n;
  }

  private keepUnclaimed(kept: Drained[], now: number): void {
    const fresh = kept.filter((d) => now - d.atMs <= UNCLAIMED_MAX_AGE_MS);
    let bytes = fresh.reduce((n, d) => n + d.records.length, 0);
    while (bytes > UNCLAIMED_MAX_BYTES && fresh.length > 0) bytes -= fresh.shift()!.records.length;
    if (fresh.length < kept.length) this.log.info({ discardedDrains: kept.length - fresh.length }, 'unclaimed held packets discarded (too old or too many)');
    this.unclaimed = fresh;
  }
}
