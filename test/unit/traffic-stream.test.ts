import { describe, expect, it } from 'vitest';
import { StreamVerifier, StreamWriter, fillStream, streamBytes, streamSeed } from '../../lab/byte-stream.js';

/** Splits a buffer at pseudo-random points (like TCP segmentation does). */
function* segments(buf: Buffer, seed: number): Generator<Buffer> {
  let s = seed || 1;
  let pos = 0;
  while (pos < buf.length) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    const len = 1 + ((s >>> 0) % 1500);
    yield buf.subarray(pos, pos + len);
    pos += len;
  }
}

function sendAll(writer: StreamWriter, chunks: number, size: number): Buffer {
  return Buffer.concat(Array.from({ length: chunks }, () => writer.next(size)));
}

describe('byte stream', () => {
  it('is deterministic per seed and differs between connections', () => {
    const a = streamSeed(0);
    expect(streamBytes(a, 0, 64)).toEqual(streamBytes(a, 0, 64));
    expect(streamBytes(a, 0, 64)).not.toEqual(streamBytes(streamSeed(1), 0, 64));
    expect(streamBytes(a, 0, 64)).not.toEqual(streamBytes(streamSeed(0, 7), 0, 64));
    expect(new Set(Array.from({ length: 1000 }, (_, i) => streamSeed(i))).size).toBe(1000);
  });

  it('gives the same bytes at any offset whatever the alignment (random access)', () => {
    const seed = streamSeed(3);
    const whole = streamBytes(seed, 0, 4096);
    for (const [off, len] of [[0, 1], [1, 3], [3, 9], [5, 100], [1023, 2000], [4095, 1]]) {
      const part = Buffer.alloc(len);
      fillStream(seed, off, part);
      expect(part).toEqual(whole.subarray(off, off + len));
    }
    const w = new StreamWriter(seed);
    expect(Buffer.concat([w.next(7), w.next(1), w.next(100), w.next(3988)])).toEqual(whole);
  });

  it('is not a short periodic pattern', () => {
    const buf = streamBytes(streamSeed(0), 0, 1 << 20);
    const seen = new Set<string>();
    for (let off = 0; off + 8 <= buf.length; off += 8) seen.add(buf.subarray(off, off + 8).toString('hex'));
    expect(seen.size).toBe(buf.length / 8); // no 8-byte word repeats in 1 MiB
    // Roughly uniform bytes.
    const counts = new Array(256).fill(0);
    for (const b of buf) counts[b]++;
    expect(Math.min(...counts)).toBeGreaterThan(3500);
    expect(Math.max(...counts)).toBeLessThan(4700);
  });
});

describe('stream verifier', () => {
  const seed = streamSeed(42);

  it('accepts an exact echo split anywhere', () => {
    const sent = sendAll(new StreamWriter(seed), 1000, 64);
    const v = new StreamVerifier(seed);
    for (const s of segments(sent, 9)) v.feed(s, sent.length);
    expect(v).toMatchObject({ received: sent.length, highWater: sent.length, duplicated: 0, skipped: 0, corruptAt: undefined });
    expect(v.outstanding(sent.length)).toBe(0);
  });

  it('counts outstanding bytes while the echo lags', () => {
    const sent = sendAll(new StreamWriter(seed), 10, 64);
    const v = new StreamVerifier(seed);
    v.feed(sent.subarray(0, 100), sent.length);
    expect(v.outstanding(sent.length)).toBe(540);
    expect(v.corrupted).toBe(false);
  });

  it('detects duplicated bytes (a replay) and keeps verifying after them', () => {
    const sent = sendAll(new StreamWriter(seed), 100, 64);
    const echoed = Buffer.concat([sent.subarray(0, 3000), sent.subarray(2500, 3000), sent.subarray(3000)]);
    const v = new StreamVerifier(seed);
    for (const s of segments(echoed, 5)) v.feed(s, sent.length);
    expect(v.duplicated).toBe(500);
    expect(v.skipped).toBe(0);
    expect(v.corrupted).toBe(false);
    expect(v.highWater).toBe(sent.length);
    expect(v.outstanding(sent.length)).toBe(0);
  });

  it('detects lost bytes (a gap) and keeps verifying after them', () => {
    const sent = sendAll(new StreamWriter(seed), 100, 64);
    const echoed = Buffer.concat([sent.subarray(0, 1000), sent.subarray(1200)]);
    const v = new StreamVerifier(seed);
    for (const s of segments(echoed, 11)) v.feed(s, sent.length);
    expect(v.skipped).toBe(200);
    expect(v.duplicated).toBe(0);
    expect(v.corrupted).toBe(false);
    expect(v.outstanding(sent.length)).toBe(0);
  });

  it('detects reordered bytes', () => {
    const sent = sendAll(new StreamWriter(seed), 100, 64);
    const echoed = Buffer.concat([sent.subarray(0, 1000), sent.subarray(1100, 1200), sent.subarray(1000, 1100), sent.subarray(1200)]);
    const v = new StreamVerifier(seed);
    v.feed(echoed, sent.length);
    expect(v).toMatchObject({ reordered: 100, skipped: 0, duplicated: 0, corruptAt: undefined, highWater: sent.length });

    // Part of a gap filled late: the rest stays lost.
    const partial = Buffer.concat([sent.subarray(0, 1000), sent.subarray(1300, 1400), sent.subarray(1100, 1300), sent.subarray(1400)]);
    const w = new StreamVerifier(seed);
    for (const s of segments(partial, 2)) w.feed(s, sent.length);
    expect(w).toMatchObject({ reordered: 200, skipped: 100, duplicated: 0, corruptAt: undefined });
  });

  it('flags corruption, even of a single bit, at its offset', () => {
    const sent = sendAll(new StreamWriter(seed), 100, 64);
    const echoed = Buffer.from(sent);
    echoed[4321] ^= 0x10;
    const v = new StreamVerifier(seed);
    for (const s of segments(echoed, 3)) v.feed(s, sent.length);
    expect(v.corruptAt).toBe(4321);
    expect(v.received).toBe(sent.length);
    expect(v.outstanding(sent.length)).toBe(0); // judged by raw counts once corrupt
  });

  it('flags bytes that were never sent, and another connection’s stream', () => {
    const v = new StreamVerifier(seed);
    const sent = sendAll(new StreamWriter(seed), 1, 64);
    v.feed(Buffer.concat([sent, Buffer.alloc(64, 0x41)]), 64);
    expect(v.corruptAt).toBe(64);

    const other = new StreamVerifier(seed);
    other.feed(streamBytes(streamSeed(43), 0, 64), 64);
    expect(other.corruptAt).toBe(0);
  });

  it('holds back a mismatching tail too short to locate until more arrives', () => {
    const sent = sendAll(new StreamWriter(seed), 10, 64);
    const echoed = Buffer.concat([sent.subarray(0, 100), sent.subarray(50, 640)]); // replay of 50 bytes
    const v = new StreamVerifier(seed);
    v.feed(echoed.subarray(0, 103), sent.length); // 3 mismatching bytes: not enough to tell
    expect(v.corrupted).toBe(false);
    expect(v.pendingBytes).toBe(3);
    v.feed(echoed.subarray(103), sent.length);
    expect(v.pendingBytes).toBe(0);
    expect(v.duplicated).toBe(50);
    expect(v.corrupted).toBe(false);
    expect(v.outstanding(sent.length)).toBe(0);
  });
});
