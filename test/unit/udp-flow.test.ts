import { describe, expect, it } from 'vitest';
import { DATAGRAM_HEADER, UdpFlowLedger, checkDatagram, encodeDatagram, percentile, totals } from '../../lab/udp-flow.js';

const RUNNING = { final: false, brokenAfterMs: 2000 };
const FINAL = { final: true, brokenAfterMs: 2000 };

describe('UDP flow datagrams', () => {
  it('an unchanged echo checks out with its sequence number', () => {
    const d = encodeDatagram(7, 123, 5, 64);
    expect(d.length).toBe(64);
    expect(checkDatagram(Buffer.from(d), 7, 5, 64)).toEqual({ ok: true, seq: 123 });
  });

  it('payloads differ between flows, sequence numbers and seeds', () => {
    const a = encodeDatagram(1, 1, 0, 64).subarray(DATAGRAM_HEADER);
    expect(a.equals(encodeDatagram(2, 1, 0, 64).subarray(DATAGRAM_HEADER))).toBe(false);
    expect(a.equals(encodeDatagram(1, 2, 0, 64).subarray(DATAGRAM_HEADER))).toBe(false);
    expect(a.equals(encodeDatagram(1, 1, 9, 64).subarray(DATAGRAM_HEADER))).toBe(false);
  });

  it('a changed payload byte, another flow, another run or a truncated echo is wrong content', () => {
    const d = encodeDatagram(3, 9, 1, 64);
    const flipped = Buffer.from(d);
    flipped[40] ^= 1;
    expect(checkDatagram(flipped, 3, 1, 64)).toEqual({ ok: false, why: 'seq 9: payload byte 40 differs' });
    expect(checkDatagram(d, 4, 1, 64).ok).toBe(false);
    expect(checkDatagram(d, 3, 2, 64).ok).toBe(false);
    expect(checkDatagram(d.subarray(0, 63), 3, 1, 64).ok).toBe(false);
    const badMagic = Buffer.from(d);
    badMagic[0] ^= 0xff;
    expect(checkDatagram(badMagic, 3, 1, 64)).toEqual({ ok: false, why: 'bad magic' });
  });

  it('refuses a size below the header and a sequence number past u32', () => {
    expect(() => encodeDatagram(0, 0, 0, DATAGRAM_HEADER - 1)).toThrow(RangeError);
    expect(() => encodeDatagram(0, 2 ** 32, 0, 64)).toThrow(RangeError);
  });
});

describe('UDP flow ledger', () => {
  it('numbers sends from 0 and counts distinct echoes, duplicates and reordering', () => {
    const l = new UdpFlowLedger(0);
    expect([l.noteSent(0), l.noteSent(10), l.noteSent(20)]).toEqual([0, 1, 2]);
    expect(l.noteEcho(0, 5)).toBe('new');
    expect(l.noteEcho(2, 25)).toBe('new');
    expect(l.noteEcho(1, 26)).toBe('new');
    expect(l.noteEcho(1, 27)).toBe('duplicate');
    const s = l.snapshot(30, RUNNING);
    expect(s).toMatchObject({ sent: 3, echoed: 3, duplicates: 1, reordered: 1, lost: 0, corrupt: 0, broken: false });
  });

  it('while running, lost counts only the holes below the highest echo; after a drain, everything missing', () => {
    const l = new UdpFlowLedger(0);
    for (let t = 0; t < 5; t++) l.noteSent(t * 10);
    l.noteEcho(0, 1);
    l.noteEcho(2, 21); // 1 missing below the highest; 3 and 4 may still come
    expect(l.snapshot(45, RUNNING).lost).toBe(1);
    l.noteStopped(50);
    expect(l.snapshot(1000, FINAL).lost).toBe(3);
  });

  it('the longest gap runs from the first send to the first echo, then between echoes', () => {
    const l = new UdpFlowLedger(0);
    l.noteSent(100);
    l.noteEcho(0, 130); // 30
    l.noteSent(140);
    l.noteEcho(1, 400); // 270
    l.noteSent(410);
    l.noteEcho(2, 420); // 20
    expect(l.snapshot(430, RUNNING)).toMatchObject({ maxGapMs: 270, silentMs: 10 });
  });

  it('a gap going on now counts, and a flow silent past the limit is broken', () => {
    const l = new UdpFlowLedger(0);
    l.noteSent(0);
    l.noteEcho(0, 10);
    for (let t = 20; t < 3000; t += 100) l.noteSent(t);
    const s = l.snapshot(3010, RUNNING);
    expect(s.silentMs).toBe(3000);
    expect(s.maxGapMs).toBe(3000);
    expect(s.broken).toBe(true);
  });

  it('time after sending stopped is no gap; sending again starts a fresh gap', () => {
    const l = new UdpFlowLedger(0);
    l.noteSent(0);
    l.noteEcho(0, 10);
    l.noteSent(20);
    l.noteEcho(1, 30);
    l.noteStopped(40);
    const s = l.snapshot(10_000, FINAL);
    expect(s).toMatchObject({ silentMs: 10, maxGapMs: 20, broken: false, lost: 0 });
    l.noteSent(20_000);
    expect(l.snapshot(20_050, RUNNING).silentMs).toBe(50);
  });

  it('an echo of a sequence number never sent, or wrong content, breaks the flow', () => {
    const l = new UdpFlowLedger(4);
    l.noteSent(0);
    expect(l.noteEcho(5, 1)).toBe('unknown');
    const s = l.snapshot(2, RUNNING);
    expect(s).toMatchObject({ corrupt: 1, broken: true, firstCorruption: 'seq 5 echoed but only 1 sent' });
  });

  it('windows report the longest gap since the last window, one going on included', () => {
    const l = new UdpFlowLedger(0);
    l.noteSent(0);
    l.noteEcho(0, 500);
    l.noteSent(510);
    l.noteEcho(1, 520);
    expect(l.takeWindowMaxGap(530)).toBe(500);
    l.noteSent(540);
    expect(l.takeWindowMaxGap(600)).toBe(80); // ongoing since the echo at 520
    l.noteEcho(2, 610);
    expect(l.takeWindowMaxGap(615)).toBe(90);
  });

  it('tracks sequence numbers far past its first bitmap', () => {
    const l = new UdpFlowLedger(0);
    for (let i = 0; i < 100_000; i++) l.noteSent(i);
    for (let i = 0; i < 100_000; i += 2) l.noteEcho(i, 100_000 + i);
    expect(l.noteEcho(99_998, 300_000)).toBe('duplicate');
    expect(l.snapshot(300_000, FINAL)).toMatchObject({ echoed: 50_000, lost: 50_000, duplicates: 1 });
  });
});

describe('UDP flow totals', () => {
  it('percentile by nearest rank', () => {
    expect(percentile([], 99)).toBe(0);
    expect(percentile([5], 99)).toBe(5);
    const hundred = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(percentile(hundred, 99)).toBe(99);
    expect(percentile(hundred, 100)).toBe(100);
    expect(percentile(hundred, 50)).toBe(50);
  });

  it('sums the flows, names the longest gap and the broken flows', () => {
    const a = new UdpFlowLedger(0);
    const b = new UdpFlowLedger(1);
    a.noteSent(0);
    a.noteEcho(0, 100);
    b.noteSent(0);
    b.noteSent(10);
    b.noteEcho(1, 50);
    b.noteCorrupt('seq 0: payload byte 20 differs');
    const t = totals([a.snapshot(100, FINAL), b.snapshot(100, FINAL)], 2000);
    expect(t).toMatchObject({ flows: 2, sent: 3, echoed: 2, lost: 1, corrupt: 1, broken: 1, maxGapMs: 100, maxGapFlow: 0 });
    expect(t.brokenFlows).toEqual([{ flow: 1, why: 'wrong echo: seq 0: payload byte 20 differs' }]);
  });
});
