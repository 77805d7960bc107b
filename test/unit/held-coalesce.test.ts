import { describe, it, expect } from 'vitest';
import { coalescePackets } from '../../agent/linux/bpf/native-map.js';
import { splitHeld } from '../../agent/held-packets.js';

/* The native coalescer (native/bpfmap/held.c) on hand-made IPv4 packets. */

const ACK = 0x10;
const PSH = 0x08;
const SYN = 0x02;
const FIN = 0x01;

interface Tcp {
  sport?: number;
  seq: number;
  ack?: number;
  flags?: number;
  window?: number;
  data?: string;
  /** A marker in the TCP options (a timestamp's TSval), to see whose headers a joined segment has. */
  tsval?: number;
}

function tcp(t: Tcp): Buffer {
  const payload = Buffer.from(t.data ?? '');
  const p = Buffer.alloc(20 + 32 + payload.length);
  p[0] = 0x45;
  p.writeUInt16BE(p.length, 2);
  p[8] = 64;
  p[9] = 6;
  p.writeUInt32BE(0xc612f802, 12); // 198.18.248.2, the peer
  p.writeUInt32BE(0xc612f801, 16); // 198.18.248.1, the workload
  p.writeUInt16BE(t.sport ?? 40000, 20);
  p.writeUInt16BE(7200, 22);
  p.writeUInt32BE(t.seq >>> 0, 24);
  p.writeUInt32BE((t.ack ?? 1) >>> 0, 28);
  p[32] = 8 << 4; // 32-byte header: 12 bytes of options
  p[33] = t.flags ?? ACK | PSH;
  p.writeUInt16BE(t.window ?? 100, 34);
  p.set([1, 1, 8, 10], 40); // NOP NOP TIMESTAMP(10)
  p.writeUInt32BE(t.tsval ?? 0, 44);
  payload.copy(p, 52);
  return p;
}

function udp(data: string): Buffer {
  const p = Buffer.alloc(28 + data.length);
  p[0] = 0x45;
  p.writeUInt16BE(p.length, 2);
  p[9] = 17;
  p.writeUInt32BE(0xc612f802, 12);
  p.writeUInt32BE(0xc612f801, 16);
  p.writeUInt16BE(5000, 20);
  p.writeUInt16BE(7100, 22);
  p.writeUInt16BE(8 + data.length, 24);
  p.write(data, 28);
  return p;
}

function pack(packets: Buffer[]): Buffer {
  return Buffer.concat(packets.flatMap((p) => [Buffer.from(new Uint32Array([p.length]).buffer), p]));
}

function parse(p: Buffer) {
  const ihl = (p[0] & 0x0f) * 4;
  if (p[9] !== 6) return { proto: p[9], total: p.readUInt16BE(2), data: p.subarray(ihl + 8).toString() };
  const doff = (p[ihl + 12] >> 4) * 4;
  return {
    total: p.readUInt16BE(2),
    sport: p.readUInt16BE(ihl),
    seq: p.readUInt32BE(ihl + 4),
    ack: p.readUInt32BE(ihl + 8),
    flags: p[ihl + 13],
    window: p.readUInt16BE(ihl + 14),
    tsval: p.readUInt32BE(ihl + 24),
    data: p.subarray(ihl + doff).toString(),
  };
}

const run = (packets: Buffer[]) => splitHeld(coalescePackets(pack(packets))).map(parse);

describe('coalescing held packets', () => {
  it('joins a connection\'s contiguous data once: retransmissions and pure ACKs disappear into it', () => {
    const out = run([
      tcp({ seq: 1000, data: 'abc', tsval: 1, ack: 50, window: 10 }),
      tcp({ seq: 1003, data: 'def', tsval: 2, ack: 60, window: 20 }),
      tcp({ seq: 1000, data: 'abc', tsval: 3, ack: 60, window: 20 }), // the retransmission of the first
      tcp({ seq: 1006, flags: ACK, tsval: 4, ack: 70, window: 30 }), // a pure ACK, the newest
      tcp({ seq: 1006, data: 'gh', tsval: 5, ack: 65, window: 25 }),
    ]);
    expect(out).toEqual([{ total: 52 + 8, sport: 40000, seq: 1000, ack: 70, flags: ACK | PSH, window: 30, tsval: 1, data: 'abcdefgh' }]);
  });

  it('keeps a gap: each contiguous range is its own segment, where its first byte arrived', () => {
    const out = run([tcp({ seq: 1005, data: 'fg' }), tcp({ seq: 1000, data: 'ab' }), tcp({ seq: 1002, data: 'c' })]);
    expect(out.map((p) => [p.seq, p.data])).toEqual([
      [1005, 'fg'],
      [1000, 'abc'],
    ]);
  });

  it('joins across the wrap of the sequence space', () => {
    const out = run([tcp({ seq: 0xfffffffe, data: 'ab' }), tcp({ seq: 0, data: 'cd' })]);
    expect(out.map((p) => [p.seq, p.data])).toEqual([[0xfffffffe, 'abcd']]);
  });

  it('passes SYN, FIN and UDP untouched and in place, and keeps connections apart', () => {
    const out = run([
      tcp({ sport: 1, seq: 10, flags: SYN }),
      tcp({ sport: 2, seq: 100, data: 'x' }),
      udp('datagram'),
      tcp({ sport: 3, seq: 500, data: 'p' }),
      tcp({ sport: 2, seq: 101, data: 'y' }),
      tcp({ sport: 2, seq: 102, flags: ACK | FIN }),
      tcp({ sport: 3, seq: 501, data: 'q' }),
    ]);
    expect(out.map((p) => ('sport' in p ? `${p.sport}:${p.flags}:${p.data}` : `udp:${p.data}`))).toEqual([
      `1:${SYN}:`,
      `2:${ACK | PSH}:xy`,
      'udp:datagram',
      `3:${ACK | PSH}:pq`,
      `2:${ACK | FIN}:`,
    ]);
  });

  it('refuses a malformed list', () => {
    expect(() => coalescePackets(Buffer.from([9, 0, 0, 0, 1]))).toThrow(/malformed/);
  });
});
