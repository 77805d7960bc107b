/**
 * Crafted Ethernet/IPv4/TCP/UDP frames for BPF_PROG_TEST_RUN, and the reference checksum: RFC
 * 1071's sum computed from scratch over the whole header or segment, independent of the
 * program's incremental arithmetic.
 */

export interface FrameSpec {
  proto: 'tcp' | 'udp';
  src: string;
  dst: string;
  sport: number;
  dport: number;
  payload: Buffer;
  /** UDP only: send without a checksum (0). */
  noUdpChecksum?: boolean;
  srcMac?: string;
  dstMac?: string;
}

const ip4 = (s: string) => Buffer.from(s.split('.').map(Number));
const mac = (s: string) => Buffer.from(s.split(':').map((x) => parseInt(x, 16)));

/** RFC 1071: one's complement of the one's complement sum of 16-bit words (odd byte padded). */
export function internetChecksum(...parts: Buffer[]): number {
  let sum = 0;
  for (const b of parts) {
    for (let i = 0; i + 1 < b.length; i += 2) sum += b.readUInt16BE(i);
    if (b.length % 2) sum += b[b.length - 1] << 8;
  }
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

function pseudoHeader(src: Buffer, dst: Buffer, proto: number, length: number): Buffer {
  const p = Buffer.alloc(12);
  src.copy(p, 0);
  dst.copy(p, 4);
  p[9] = proto;
  p.writeUInt16BE(length, 10);
  return p;
}

/** An IPv4 packet's header checksum and its L4 checksum, recomputed from scratch (checksum fields taken as 0). */
export function referenceChecksums(ipPacket: Buffer): { ip: number; l4: number } {
  const ihl = (ipPacket[0] & 0xf) * 4;
  const header = Buffer.from(ipPacket.subarray(0, ihl));
  header.writeUInt16BE(0, 10);
  const proto = ipPacket[9];
  const total = ipPacket.readUInt16BE(2);
  const l4 = Buffer.from(ipPacket.subarray(ihl, total));
  const at = proto === 6 ? 16 : 6;
  l4.writeUInt16BE(0, at);
  let l4sum = internetChecksum(pseudoHeader(ipPacket.subarray(12, 16), ipPacket.subarray(16, 20), proto, l4.length), l4);
  if (proto === 17 && l4sum === 0) l4sum = 0xffff;
  return { ip: internetChecksum(header), l4: l4sum };
}

/** The checksums the packet carries. */
export function carriedChecksums(ipPacket: Buffer): { ip: number; l4: number } {
  const ihl = (ipPacket[0] & 0xf) * 4;
  return { ip: ipPacket.readUInt16BE(10), l4: ipPacket.readUInt16BE(ihl + (ipPacket[9] === 6 ? 16 : 6)) };
}

export function buildFrame(f: FrameSpec): Buffer {
  const proto = f.proto === 'tcp' ? 6 : 17;
  const l4len = (f.proto === 'tcp' ? 20 : 8) + f.payload.length;
  const ipHeader = Buffer.alloc(20);
  ipHeader[0] = 0x45;
  ipHeader.writeUInt16BE(20 + l4len, 2);
  ipHeader.writeUInt16BE(0x1234, 4);
  ipHeader.writeUInt16BE(0x4000, 6);
  ipHeader[8] = 64;
  ipHeader[9] = proto;
  ip4(f.src).copy(ipHeader, 12);
  ip4(f.dst).copy(ipHeader, 16);
  const l4 = Buffer.alloc(l4len);
  l4.writeUInt16BE(f.sport, 0);
  l4.writeUInt16BE(f.dport, 2);
  if (f.proto === 'tcp') {
    l4.writeUInt32BE(0x01020304, 4);
    l4.writeUInt32BE(0x0a0b0c0d, 8);
    l4[12] = 5 << 4;
    l4[13] = 0x18; // PSH ACK
    l4.writeUInt16BE(64240, 14);
    f.payload.copy(l4, 20);
  } else {
    l4.writeUInt16BE(l4len, 4);
    f.payload.copy(l4, 8);
  }
  const ipPacket = Buffer.concat([ipHeader, l4]);
  const ref = referenceChecksums(ipPacket);
  ipPacket.writeUInt16BE(ref.ip, 10);
  if (!(f.proto === 'udp' && f.noUdpChecksum)) ipPacket.writeUInt16BE(ref.l4, 20 + (f.proto === 'tcp' ? 16 : 6));
  const eth = Buffer.alloc(14);
  mac(f.dstMac ?? '02:00:00:00:00:01').copy(eth, 0);
  mac(f.srcMac ?? '02:00:00:00:00:02').copy(eth, 6);
  eth.writeUInt16BE(0x0800, 12);
  return Buffer.concat([eth, ipPacket]);
}

/** Addresses and ports of an IPv4 packet (for assertions). */
export function endpointsOf(ipPacket: Buffer): { src: string; dst: string; sport: number; dport: number; proto: number } {
  const ihl = (ipPacket[0] & 0xf) * 4;
  const a = (at: number) => [...ipPacket.subarray(at, at + 4)].join('.');
  return { src: a(12), dst: a(16), sport: ipPacket.readUInt16BE(ihl), dport: ipPacket.readUInt16BE(ihl + 2), proto: ipPacket[9] };
}
