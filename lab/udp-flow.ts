/**
 * UDP flows that can be checked: the datagram layout and the per-flow accounting of
 * lab/udp-client.ts, as pure code (no sockets, no clock of its own) so that it is unit-tested.
 *
 * A flow is one client socket (one source port: one 5-tuple, which steering keeps on one
 * backend). It sends datagrams numbered 0, 1, 2... and the echo server sends each back unchanged.
 *
 * Datagram (DATAGRAM_HEADER bytes of header, then payload up to the datagram's size):
 *   u32 LE magic "GWUD" | u32 LE flow index | u32 LE sequence number | u32 LE run seed |
 *   payload: bytes of a generator seeded by (flow, seq, seed)
 * so an echo names its flow and sequence, and any changed byte shows.
 *
 * Per flow: sent, echoed (distinct sequence numbers back), duplicates, the longest gap between
 * two echoes while sending (ms; the first send opens the first gap), and whether the flow is
 * broken: an echo with wrong content, or no echo during the last `brokenAfterMs` of sending.
 * Lost: what was sent and never came back (final after a drain; while running, only the numbers
 * below the highest echoed one that are missing).
 */

export const DATAGRAM_MAGIC = 0x44555747; // "GWUD" read as u32 LE
export const DATAGRAM_HEADER = 16;
/** Sequence numbers are u32 on the wire. */
const SEQ_LIMIT = 2 ** 32;

/** Payload byte i of datagram (flow, seq) under run seed `seed` (xorshift32, never seeded with 0). */
function fillPayload(buf: Buffer, from: number, flow: number, seq: number, seed: number): void {
  let x = (Math.imul(flow + 1, 0x9e3779b1) ^ Math.imul(seq + 1, 0x85ebca6b) ^ Math.imul(seed + 1, 0xc2b2ae35)) >>> 0 || 1;
  for (let i = from; i < buf.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    buf[i] = x & 0xff;
  }
}

export function encodeDatagram(flow: number, seq: number, seed: number, size: number): Buffer {
  if (size < DATAGRAM_HEADER) throw new RangeError(`datagram size ${size} is below the ${DATAGRAM_HEADER}-byte header`);
  if (!Number.isInteger(seq) || seq < 0 || seq >= SEQ_LIMIT) throw new RangeError(`sequence number ${seq} is not a u32`);
  const b = Buffer.allocUnsafe(size);
  b.writeUInt32LE(DATAGRAM_MAGIC, 0);
  b.writeUInt32LE(flow >>> 0, 4);
  b.writeUInt32LE(seq, 8);
  b.writeUInt32LE(seed >>> 0, 12);
  fillPayload(b, DATAGRAM_HEADER, flow, seq, seed);
  return b;
}

export type DatagramCheck = { ok: true; seq: number } | { ok: false; why: string };

/** Checks an echo received on flow `flow`: its header and every payload byte. */
export function checkDatagram(echo: Buffer, flow: number, seed: number, size: number): DatagramCheck {
  if (echo.length !== size) return { ok: false, why: `length ${echo.length}, sent ${size}` };
  if (echo.readUInt32LE(0) !== DATAGRAM_MAGIC) return { ok: false, why: 'bad magic' };
  if (echo.readUInt32LE(4) !== flow >>> 0) return { ok: false, why: `flow ${echo.readUInt32LE(4)} echoed on flow ${flow}` };
  if (echo.readUInt32LE(12) !== seed >>> 0) return { ok: false, why: `seed ${echo.readUInt32LE(12)}, run seed ${seed}` };
  const seq = echo.readUInt32LE(8);
  const want = encodeDatagram(flow, seq, seed, size);
  if (!want.equals(echo)) {
    let i = DATAGRAM_HEADER;
    while (i < size && want[i] === echo[i]) i++;
    return { ok: false, why: `seq ${seq}: payload byte ${i} differs` };
  }
  return { ok: true, seq };
}

/** One flow's figures at a moment. */
export interface UdpFlowStats {
  flow: number;
  sent: number;
  /** Distinct sequence numbers echoed. */
  echoed: number;
  /** Echoes of a sequence number already echoed. */
  duplicates: number;
  /** Echoes that arrived after a later sequence number's echo. */
  reordered: number;
  /** Sent and not echoed: after a drain, everything missing; before, the holes below the highest echo. */
  lost: number;
  /** Longest time between two echoes while sending, including one going on now (ms). */
  maxGapMs: number;
  /** Since the last echo (or the first send, before any echo), measured up to the end of sending (ms). */
  silentMs: number;
  /** Echoes whose content was wrong (a seq never sent counts too). */
  corrupt: number;
  firstCorruption?: string;
  broken: boolean;
}

export interface LedgerSnapshotOptions {
  /** Count every unechoed datagram as lost (after sending stopped and the last echoes had time to come). */
  final: boolean;
  /** A flow silent for longer than this at the end of sending is broken. */
  brokenAfterMs: number;
}

/**
 * The accounting of one flow. Times are plain numbers in ms from a clock the caller owns
 * (performance.now() in the client, made-up numbers in tests).
 */
export class UdpFlowLedger {
  private sentCount = 0;
  private echoedCount = 0;
  private dup = 0;
  private reord = 0;
  private highest = -1;
  private corruptCount = 0;
  private firstCorrupt: string | undefined;
  /** Bit per sequence number: echoed. Grows as sequence numbers do. */
  private seen = new Uint8Array(1024);
  /** When the current gap began: the last echo, or the first send. Undefined before anything was sent. */
  private gapStart: number | undefined;
  private stoppedAt: number | undefined;
  private maxGap = 0;
  private windowMaxGap = 0;

  constructor(readonly flow: number) {}

  get sent(): number {
    return this.sentCount;
  }

  /** The next sequence number to send, and records that it was sent at `now`. */
  noteSent(now: number): number {
    const seq = this.sentCount++;
    if (this.gapStart === undefined) this.gapStart = now;
    // Sending again after a stop: the pause is not a gap.
    if (this.stoppedAt !== undefined) {
      this.stoppedAt = undefined;
      this.gapStart = now;
    }
    return seq;
  }

  /** Sending stopped at `now` (a drain): time from here on is not a gap. */
  noteStopped(now: number): void {
    if (this.stoppedAt === undefined) this.stoppedAt = now;
  }

  /** A correct echo of `seq` arrived at `now`. */
  noteEcho(seq: number, now: number): 'new' | 'duplicate' | 'unknown' {
    if (seq >= this.sentCount) {
      this.noteCorrupt(`seq ${seq} echoed but only ${this.sentCount} sent`);
      return 'unknown';
    }
    if (this.isSeen(seq)) {
      this.dup++;
      return 'duplicate';
    }
    this.markSeen(seq);
    this.echoedCount++;
    if (seq < this.highest) this.reord++;
    else this.highest = seq;
    if (this.gapStart !== undefined) this.noteGap(Math.min(now, this.stoppedAt ?? now) - this.gapStart);
    this.gapStart = now;
    return 'new';
  }

  noteCorrupt(why: string): void {
    this.corruptCount++;
    this.firstCorrupt ??= why;
  }

  private noteGap(ms: number): void {
    if (ms > this.maxGap) this.maxGap = ms;
    if (ms > this.windowMaxGap) this.windowMaxGap = ms;
  }

  /** The gap going on now: from the last echo to now, or to when sending stopped. */
  private ongoingGap(now: number): number {
    if (this.gapStart === undefined) return 0;
    return Math.max(0, Math.min(now, this.stoppedAt ?? now) - this.gapStart);
  }

  /** The longest gap since the last call (one going on now included), then a new window. */
  takeWindowMaxGap(now: number): number {
    const ms = Math.max(this.windowMaxGap, this.ongoingGap(now));
    this.windowMaxGap = 0;
    return ms;
  }

  snapshot(now: number, o: LedgerSnapshotOptions): UdpFlowStats {
    const silentMs = this.ongoingGap(now);
    const lost = o.final ? this.sentCount - this.echoedCount : this.highest + 1 - this.echoedCount;
    return {
      flow: this.flow,
      sent: this.sentCount,
      echoed: this.echoedCount,
      duplicates: this.dup,
      reordered: this.reord,
      lost,
      maxGapMs: Math.max(this.maxGap, silentMs),
      silentMs,
      corrupt: this.corruptCount,
      ...(this.firstCorrupt ? { firstCorruption: this.firstCorrupt } : {}),
      broken: this.corruptCount > 0 || (this.sentCount > 0 && silentMs > o.brokenAfterMs),
    };
  }

  private isSeen(seq: number): boolean {
    const byte = seq >>> 3;
    return byte < this.seen.length && (this.seen[byte] & (1 << (seq & 7))) !== 0;
  }

  private markSeen(seq: number): void {
    const byte = seq >>> 3;
    if (byte >= this.seen.length) {
      let size = this.seen.length * 2;
      while (size <= byte) size *= 2;
      const grown = new Uint8Array(size);
      grown.set(this.seen);
      this.seen = grown;
    }
    this.seen[byte] |= 1 << (seq & 7);
  }
}

/** Totals over every flow. */
export interface UdpTrafficTotals {
  flows: number;
  sent: number;
  echoed: number;
  duplicates: number;
  reordered: number;
  lost: number;
  corrupt: number;
  broken: number;
  /** Longest per-flow gap (ms) and its flow. */
  maxGapMs: number;
  maxGapFlow: number;
  /** 99th percentile over flows of each flow's longest gap (ms). */
  p99GapMs: number;
  /** First broken flows (up to 10) and why. */
  brokenFlows: { flow: number; why: string }[];
}

/** The p-th percentile (0-100) by nearest rank; 0 for no values. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))];
}

export function totals(flows: readonly UdpFlowStats[], brokenAfterMs: number): UdpTrafficTotals {
  const t: UdpTrafficTotals = {
    flows: flows.length,
    sent: 0,
    echoed: 0,
    duplicates: 0,
    reordered: 0,
    lost: 0,
    corrupt: 0,
    broken: 0,
    maxGapMs: 0,
    maxGapFlow: -1,
    p99GapMs: percentile(
      flows.map((f) => f.maxGapMs),
      99,
    ),
    brokenFlows: [],
  };
  for (const f of flows) {
    t.sent += f.sent;
    t.echoed += f.echoed;
    t.duplicates += f.duplicates;
    t.reordered += f.reordered;
    t.lost += f.lost;
    t.corrupt += f.corrupt;
    if (f.maxGapMs > t.maxGapMs) {
      t.maxGapMs = f.maxGapMs;
      t.maxGapFlow = f.flow;
    }
    if (f.broken) {
      t.broken++;
      if (t.brokenFlows.length < 10)
        t.brokenFlows.push({ flow: f.flow, why: f.corrupt > 0 ? `wrong echo: ${f.firstCorruption}` : `no echo for the last ${Math.round(f.silentMs)} ms (limit ${brokenAfterMs})` });
    }
  }
  return t;
}
