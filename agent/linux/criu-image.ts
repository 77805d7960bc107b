/**
 * Reads the little that godwit needs from a CRIU image folder, so that the target can install the
 * same network lock that CRIU's dump made on the source (and the source can remove it later):
 *
 *   inventory.img  network_lock_method (field 11: 0 iptables, 1 nftables, 2 skip) and
 *                  dump_criu_run_id (field 13), which names CRIU's nftables table
 *   files.img      every file of the tree; inet sockets (field 4 of a file entry) carry family,
 *                  protocol, state, ports and addresses
 *
 * Image layout (CRIU 3.x/4.x, images/*.proto and criu/image.c): a file starts with a 32-bit magic
 * (inventory.img: its own magic only; the others: the common magic, then their own), followed by
 * entries, each a 32-bit little-endian length and that many bytes of protobuf (proto2).
 *
 * CRIU locks (at dump) and unlocks (at restore) exactly the TCP sockets with a peer port
 * ("tcp_connection()" in criu/sk-inet.c: protocol TCP and dst_port != 0); connectionsIn() picks
 * the same ones.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

export const IMG_COMMON_MAGIC = 0x54564319;
export const INVENTORY_MAGIC = 0x58313116;
export const FILES_MAGIC = 0x56303138;

const AF_INET = 2;
const AF_INET6 = 10;
const IPPROTO_TCP = 6;

export type CriuLockMethod = 'iptables' | 'nftables' | 'skip';
const LOCK_METHODS: CriuLockMethod[] = ['iptables', 'nftables', 'skip'];

/** One TCP connection, from the workload's side. IPv4 dotted quads. */
export interface ConnectionTuple {
  local: string;
  localPort: number;
  peer: string;
  peerPort: number;
}

export interface ImageLockInfo {
  /** The lock method the image was dumped with; CRIU's restore uses it whatever it is told. */
  method: CriuLockMethod;
  /** The dump's CRIU run id (a UUID), when the image records it. */
  runId?: string;
  /** The connections CRIU locked at dump and unlocks at restore. */
  connections: ConnectionTuple[];
}

export class CriuImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CriuImageError';
  }
}

// ---- a minimal protobuf (proto2) wire reader: varints and length-delimited fields ----

type FieldValue = { wire: 0; value: bigint } | { wire: 2; value: Buffer } | { wire: 1 | 5; value: bigint };
export interface Field {
  no: number;
  v: FieldValue;
}

function readVarint(buf: Buffer, pos: number): [bigint, number] {
  let result = 0n;
  let shift = 0n;
  for (;;) {
    if (pos >= buf.length) throw new CriuImageError('truncated varint');
    const b = buf[pos++];
    result |= BigInt(b & 0x7f) << shift;
    if ((b & 0x80) === 0) return [result, pos];
    shift += 7n;
    if (shift > 63n) throw new CriuImageError('varint too long');
  }
}

/** The fields of one protobuf message, in wire order. Groups (wire types 3, 4) are not used by CRIU. */
export function decodeFields(buf: Buffer): Field[] {
  const out: Field[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const [key, p1] = readVarint(buf, pos);
    pos = p1;
    const no = Number(key >> 3n);
    const wire = Number(key & 7n);
    if (wire === 0) {
      const [value, p2] = readVarint(buf, pos);
      pos = p2;
      out.push({ no, v: { wire: 0, value } });
    } else if (wire === 2) {
      const [len, p2] = readVarint(buf, pos);
      const end = p2 + Number(len);
      if (end > buf.length) throw new CriuImageError(`field ${no} runs past its message`);
      out.push({ no, v: { wire: 2, value: buf.subarray(p2, end) } });
      pos = end;
    } else if (wire === 1 || wire === 5) {
      const size = wire === 1 ? 8 : 4;
      if (pos + size > buf.length) throw new CriuImageError(`field ${no} runs past its message`);
      const value = wire === 1 ? buf.readBigUInt64LE(pos) : BigInt(buf.readUInt32LE(pos));
      out.push({ no, v: { wire, value } });
      pos += size;
    } else {
      throw new CriuImageError(`unsupported protobuf wire type ${wire} (field ${no})`);
    }
  }
  return out;
}

/** Values of a repeated uint32 field, packed or not. */
function uint32s(fields: Field[], no: number): number[] {
  const out: number[] = [];
  for (const f of fields) {
    if (f.no !== no) continue;
    if (f.v.wire === 0) out.push(Number(f.v.value & 0xffffffffn));
    else if (f.v.wire === 2) {
      let pos = 0;
      while (pos < f.v.value.length) {
        const [v, p] = readVarint(f.v.value, pos);
        out.push(Number(v & 0xffffffffn));
        pos = p;
      }
    }
  }
  return out;
}

function uint(fields: Field[], no: number): number | undefined {
  const f = fields.find((x) => x.no === no && x.v.wire === 0);
  return f ? Number(f.v.value) : undefined;
}

function bytes(fields: Field[], no: number): Buffer | undefined {
  const f = fields.find((x) => x.no === no && x.v.wire === 2);
  return f ? (f.v.value as Buffer) : undefined;
}

/** The entries of an image file: magic(s) checked, then length-prefixed messages. */
export function imageEntries(buf: Buffer, magic: number, common = true): Buffer[] {
  let pos = 0;
  const word = () => {
    if (pos + 4 > buf.length) throw new CriuImageError('truncated image');
    const v = buf.readUInt32LE(pos);
    pos += 4;
    return v;
  };
  if (common) {
    const c = word();
    if (c !== IMG_COMMON_MAGIC) throw new CriuImageError(`not a CRIU image (magic 0x${c.toString(16)})`);
  }
  const m = word();
  if (m !== magic) throw new CriuImageError(`unexpected image magic 0x${m.toString(16)}, want 0x${magic.toString(16)}`);
  const out: Buffer[] = [];
  while (pos < buf.length) {
    const len = word();
    if (pos + len > buf.length) throw new CriuImageError('truncated image entry');
    out.push(buf.subarray(pos, pos + len));
    pos += len;
  }
  return out;
}

/**
 * An address as CRIU stores it: the in_addr / in6_addr bytes copied into 32-bit words, so each
 * word's little-endian bytes are the address's bytes in order. IPv4-mapped IPv6 addresses
 * (::ffff:a.b.c.d) are IPv4, as CRIU treats them.
 */
export function addressFromWords(words: number[], family: number): string | undefined {
  const octets = (w: number) => [w & 0xff, (w >>> 8) & 0xff, (w >>> 16) & 0xff, (w >>> 24) & 0xff];
  if (family === AF_INET && words.length >= 1) return octets(words[0]).join('.');
  if (family === AF_INET6 && words.length === 4 && words[0] === 0 && words[1] === 0 && words[2] === 0xffff0000)
    return octets(words[3]).join('.');
  return undefined;
}

/** The TCP connections in files.img's inet socket entries (CRIU's tcp_connection(): TCP with a peer port). */
export function connectionsIn(filesImg: Buffer): ConnectionTuple[] {
  const out: ConnectionTuple[] = [];
  for (const entry of imageEntries(filesImg, FILES_MAGIC)) {
    const isk = bytes(decodeFields(entry), 4);
    if (!isk) continue;
    const f = decodeFields(isk);
    const family = uint(f, 3) ?? 0;
    const proto = uint(f, 5) ?? 0;
    const srcPort = uint(f, 7) ?? 0;
    const dstPort = uint(f, 8) ?? 0;
    if (proto !== IPPROTO_TCP || dstPort === 0) continue;
    const local = addressFromWords(uint32s(f, 11), family);
    const peer = addressFromWords(uint32s(f, 12), family);
    if (!local || !peer)
      throw new CriuImageError(`the image holds an IPv6 TCP connection (port ${srcPort} -> ${dstPort}); godwit handles IPv4 workloads only`);
    out.push({ local, localPort: srcPort, peer, peerPort: dstPort });
  }
  return out;
}

export function inventoryLock(inventoryImg: Buffer): { method: CriuLockMethod; runId?: string } {
  const [entry] = imageEntries(inventoryImg, INVENTORY_MAGIC, false);
  if (!entry) throw new CriuImageError('inventory.img has no entry');
  const f = decodeFields(entry);
  // An image without the field predates lock methods; CRIU then falls back to iptables.
  const m = uint(f, 11) ?? 0;
  const method = LOCK_METHODS[m];
  if (!method) throw new CriuImageError(`inventory.img names unknown network lock method ${m}`);
  const runId = bytes(f, 13)?.toString('utf8');
  return { method, ...(runId ? { runId } : {}) };
}

/** The lock method, run id and locked connections of the image in `imageDir`. */
export async function readImageLock(imageDir: string): Promise<ImageLockInfo> {
  const [inventory, files] = await Promise.all([readFile(join(imageDir, 'inventory.img')), readFile(join(imageDir, 'files.img'))]);
  return { ...inventoryLock(inventory), connections: connectionsIn(files) };
}
