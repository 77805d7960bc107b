/**
 * The deterministic byte stream a traffic-client connection sends, and the checker for what
 * comes back. Dependency-free: lab/traffic-client.ts runs it as plain JS in a client namespace.
 *
 * The stream is counter-based (word i = mix32(seed + i * golden)), not a sequential PRNG such as
 * xorshift32: any offset can be generated directly, which lets the verifier tell, on a mismatch,
 * whether the bytes it got are a replay of earlier bytes (duplication), bytes from further on
 * (a gap: loss), or neither (corruption). mix32 is a bijection, so a stream repeats no word before
 * 2^32 words (16 GiB); a lost, duplicated or reordered byte shows up as a mismatch at once.
 */

const GOLDEN = 0x9e3779b9;

/** A 32-bit avalanche mix (a bijection on uint32). */
function mix32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/** The seed of connection `index` (0-based) of a run; different runs may pass different run seeds. */
export function streamSeed(connectionIndex: number, runSeed = 0): number {
  return mix32((Math.imul(runSeed >>> 0, 0x85ebca6b) ^ mix32(connectionIndex + 1)) >>> 0);
}

function streamWord(seed: number, wordIndex: number): number {
  return mix32((seed + Math.imul((wordIndex % 0x1_0000_0000) >>> 0, GOLDEN)) >>> 0);
}

/** Fills `out` with the stream's bytes at [offset, offset + out.length). */
export function fillStream(seed: number, offset: number, out: Uint8Array): void {
  let i = 0;
  let word = Math.floor(offset / 4);
  let shift = offset % 4;
  while (i < out.length) {
    const w = streamWord(seed, word);
    if (shift === 0 && i + 4 <= out.length) {
      out[i] = w & 0xff;
      out[i + 1] = (w >>> 8) & 0xff;
      out[i + 2] = (w >>> 16) & 0xff;
      out[i + 3] = w >>> 24;
      i += 4;
    } else {
      for (let b = shift; b < 4 && i < out.length; b++) out[i++] = (w >>> (8 * b)) & 0xff;
      shift = 0;
    }
    word++;
  }
}

export function streamBytes(seed: number, offset: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  fillStream(seed, offset, b);
  return b;
}

/** The sending side: successive chunks of one connection's stream. */
export class StreamWriter {
  offset = 0;
  constructor(readonly seed: number) {}
  next(length: number): Buffer {
    const b = streamBytes(this.seed, this.offset, length);
    this.offset += length;
    return b;
  }
}

export interface StreamVerifierOptions {
  /** How far before the highest verified offset a replay is searched for (bytes). Default 1 MiB. */
  searchBackBytes?: number;
  /** Bytes used to locate a mismatching run in the stream (>= 8). Default 16. */
  probeBytes?: number;
}

/**
 * The receiving side. feed() every echoed chunk with the number of bytes sent so far.
 * Bytes that match the stream at the expected offset are verified. On a mismatch it looks for the
 * received bytes elsewhere in [highWater - searchBack, sent): found later = a gap (the skipped
 * bytes count as lost until they turn up), found earlier = bytes verified again: those that fill a
 * gap count as reordered (and no longer as lost), the others as duplicated; found nowhere =
 * corruption, after which the connection is no longer checked.
 */
export class StreamVerifier {
  /** Stream offset the next received byte should have. */
  expected = 0;
  /** One past the highest stream offset verified. */
  highWater = 0;
  /** Raw bytes received (including duplicates and bytes received after corruption). */
  received = 0;
  duplicated = 0;
  /** Bytes the stream skipped over (not received) before a later part arrived, and still missing. */
  skipped = 0;
  /** Bytes that arrived after later bytes (they filled a gap). */
  reordered = 0;
  /** Stream offset of the first mismatch that is neither a replay nor a gap. */
  corruptAt: number | undefined;
  private carry: Buffer | undefined;
  /** Missing ranges [start, end) below highWater (the newest few). */
  private gaps: [number, number][] = [];
  private readonly searchBack: number;
  private readonly probe: number;

  constructor(
    readonly seed: number,
    opts: StreamVerifierOptions = {},
  ) {
    this.searchBack = opts.searchBackBytes ?? 1 << 20;
    this.probe = Math.max(8, opts.probeBytes ?? 16);
  }

  get corrupted(): boolean {
    return this.corruptAt !== undefined;
  }

  /** Received bytes held back because they were too few to locate after a mismatch. */
  get pendingBytes(): number {
    return this.carry?.length ?? 0;
  }

  /** Bytes sent but not (yet) seen echoed; after corruption, judged by raw byte counts. */
  outstanding(sent: number): number {
    if (this.corruptAt !== undefined) return Math.max(0, sent - this.received);
    return Math.max(0, sent - this.highWater);
  }

  feed(chunk: Uint8Array, sent: number): void {
    this.received += chunk.length;
    if (this.corruptAt !== undefined) return;
    let data = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length);
    if (this.carry) {
      data = Buffer.concat([this.carry, data]);
      this.carry = undefined;
    }
    let pos = 0;
    while (pos < data.length) {
      const n = data.length - pos;
      const want = streamBytes(this.seed, this.expected, n);
      let k = 0;
      while (k < n && data[pos + k] === want[k]) k++;
      this.accept(this.expected, k);
      this.expected += k;
      pos += k;
      if (pos === data.length) break;
      // Mismatch at stream offset `expected`.
      const rest = data.length - pos;
      if (rest < 8) {
        // Too few bytes to locate reliably: wait for more.
        this.carry = Buffer.from(data.subarray(pos));
        return;
      }
      const probe = data.subarray(pos, pos + Math.min(this.probe, rest));
      const lo = Math.max(0, this.highWater - this.searchBack);
      const hi = Math.max(sent, this.highWater);
      const found = hi - lo >= probe.length ? streamBytes(this.seed, lo, hi - lo).indexOf(probe) : -1;
      if (found < 0 || lo + found === this.expected) {
        this.corruptAt = this.expected;
        return;
      }
      const at = lo + found;
      const gapStart = Math.max(this.expected, this.highWater);
      if (at > gapStart) {
        this.skipped += at - gapStart;
        this.gaps.push([gapStart, at]);
        if (this.gaps.length > 64) this.gaps.shift(); // the oldest stays counted as lost
        this.highWater = at;
      }
      this.expected = at;
    }
  }

  private accept(start: number, length: number): void {
    if (length <= 0) return;
    const end = start + length;
    if (start < this.highWater) {
      const again = Math.min(end, this.highWater) - start;
      let filled = 0;
      for (const g of this.gaps) {
        const s = Math.max(g[0], start);
        const e = Math.min(g[1], end);
        if (e <= s) continue;
        filled += e - s;
        // Cut [s, e) out of the gap (it may split in two).
        if (s > g[0] && e < g[1]) this.gaps.push([e, g[1]]);
        if (s > g[0]) g[1] = s;
        else g[0] = e;
      }
      this.gaps = this.gaps.filter((g) => g[1] > g[0]);
      this.reordered += filled;
      this.skipped -= filled;
      this.duplicated += again - filled;
    }
    if (end > this.highWater) this.highWater = end;
  }
}
