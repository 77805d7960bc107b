/**
 * Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4), weighted: the lookup
 * table that the steering program indexes by a connection's hash to choose a new flow's backend.
 *
 * Pure and deterministic: the same backends (ids and weights, in any order) give the same table
 * on every host and after every restart. Each backend walks its own permutation of the table
 * (offset and skip derived from its stable id), and in turn claims the next entry still free;
 * a backend of weight w takes w turns for every maxWeight turns of the heaviest one, so its share
 * of entries is about w / sum(weights). Adding or removing one backend of N moves about 1/N of
 * the entries; the rest keep their backend.
 */

/** Entries in a service's table: a prime (skips must be coprime with it). bpf/steer_maps.h's GODWIT_STEER_RING_SIZE. */
export const MAGLEV_TABLE_SIZE = 4099;

export interface MaglevBackend {
  /** Stable id (never 0: 0 marks an entry with no backend). */
  id: number;
  /** Positive share relative to the other backends. */
  weight: number;
}

export class MaglevInputError extends Error {
  constructor(readonly problem: string) {
    super(`maglev: ${problem}`);
    this.name = 'MaglevInputError';
  }
}

/** MurmurHash3's 32-bit finaliser over the id mixed with a seed: two independent hashes of one id. */
function hashId(id: number, seed: number): number {
  let h = Math.imul(id ^ seed, 0xcc9e2d51);
  h = (h << 15) | (h >>> 17);
  h = Math.imul(h, 0x1b873593) ^ seed;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

const OFFSET_SEED = 0x2545f491;
const SKIP_SEED = 0x9e3779b9 | 0;

function isPrime(n: number): boolean {
  if (n < 2 || !Number.isInteger(n)) return false;
  for (let d = 2; d * d <= n; d++) if (n % d === 0) return false;
  return true;
}

/**
 * The table: `size` backend ids (0 everywhere when there is no backend). Backends with weight 0
 * are left out (a draining backend is passed as absent by the caller).
 */
export function maglevTable(backends: readonly MaglevBackend[], size = MAGLEV_TABLE_SIZE): Uint32Array {
  if (!isPrime(size)) throw new MaglevInputError(`table size ${size} is not a prime`);
  const seen = new Set<number>();
  for (const b of backends) {
    if (!Number.isInteger(b.id) || b.id < 1 || b.id > 0xffffffff) throw new MaglevInputError(`backend id ${b.id} is not an integer 1..2^32-1`);
    if (seen.has(b.id)) throw new MaglevInputError(`backend id ${b.id} appears twice`);
    seen.add(b.id);
    if (!Number.isFinite(b.weight) || b.weight < 0) throw new MaglevInputError(`backend ${b.id}: weight ${b.weight} is not a non-negative number`);
  }
  const table = new Uint32Array(size);
  // Sorted by id: the order of turns, hence the table, does not depend on the caller's order.
  const live = backends.filter((b) => b.weight > 0).sort((a, b) => a.id - b.id);
  if (live.length === 0) return table;

  // Typed arrays and each backend's position stepped by its skip (instead of offset + next *
  // skip, mod size): the same permutation, at a fraction of the cost. Every host computes this
  // table for every change to a service, so its speed is part of the fleet's convergence time.
  const n = live.length;
  const weight = new Float64Array(n);
  const pos = new Int32Array(n);
  const skip = new Int32Array(n);
  const credit = new Float64Array(n);
  let maxWeight = 0;
  for (let i = 0; i < n; i++) {
    const b = live[i];
    weight[i] = b.weight;
    if (b.weight > maxWeight) maxWeight = b.weight;
    pos[i] = hashId(b.id, OFFSET_SEED) % size;
    skip[i] = (hashId(b.id, SKIP_SEED) % (size - 1)) + 1;
  }
  const ids = new Uint32Array(live.map((b) => b.id));
  const taken = new Uint8Array(size);
  let filled = 0;
  while (filled < size) {
    for (let i = 0; i < n && filled < size; i++) {
      credit[i] += weight[i];
      while (credit[i] >= maxWeight && filled < size) {
        credit[i] -= maxWeight;
        // The backend's next preferred entry that no one has claimed yet.
        let at = pos[i];
        const step = skip[i];
        while (taken[at]) {
          at += step;
          if (at >= size) at -= size;
        }
        taken[at] = 1;
        table[at] = ids[i];
        filled++;
        at += step;
        pos[i] = at >= size ? at - size : at;
      }
    }
  }
  return table;
}
