/**
 * A CRIU pagemap image (pagemap-<pid>.img) as post-copy needs it: which of a task's pages a lazy
 * dump left out of the image (served by CRIU's page server instead), and the rewrite that makes the
 * image whole again once those pages have been fetched back (the source's rollback).
 *
 * Layout (CRIU images/pagemap.proto, criu/pagemap.c): the common magic, PAGEMAP_MAGIC, then
 * length-prefixed protobuf messages: one pagemap_head {pages_id = 1}, then pagemap_entry {vaddr = 1,
 * compat_nr_pages = 2, in_parent = 3, flags = 4, nr_pages = 5} per run of pages, in address order.
 * pages-<pages_id>.img holds the contents of the entries flagged PE_PRESENT, back to back in entry
 * order (no magic). A lazy dump flags the pages it left out PE_LAZY without PE_PRESENT.
 */
import { decodeFields, imageEntries, IMG_COMMON_MAGIC, type Field } from './criu-image.js';

export const PAGEMAP_MAGIC = 0x56084025;
export const PAGE_SIZE = 4096;
/** criu/include/pagemap.h */
export const PE_PARENT = 1 << 0;
export const PE_LAZY = 1 << 1;
export const PE_PRESENT = 1 << 2;

export interface PagemapEntry {
  vaddr: bigint;
  nrPages: number;
  flags: number;
  /** The entry's own fields, kept so that a rewrite changes only the flags. */
  fields: Field[];
}

export interface Pagemap {
  pagesId: number;
  entries: PagemapEntry[];
}

export function parsePagemap(buf: Buffer): Pagemap {
  const [head, ...rest] = imageEntries(buf, PAGEMAP_MAGIC);
  if (!head) throw new Error('pagemap image has no head');
  const pagesId = Number(varint(decodeFields(head), 1) ?? 0n);
  const entries = rest.map((raw) => {
    const fields = decodeFields(raw);
    // nr_pages (5) replaced compat_nr_pages (2) in CRIU 3.x; an image carries one of them.
    const nrPages = Number(varint(fields, 5) ?? varint(fields, 2) ?? 0n);
    return { vaddr: varint(fields, 1) ?? 0n, nrPages, flags: Number(varint(fields, 4) ?? 0n), fields };
  });
  return { pagesId, entries };
}

/** Left out of the image by a lazy dump: to be fetched from the page server. */
export function isLazyOnly(e: PagemapEntry): boolean {
  return (e.flags & PE_LAZY) !== 0 && (e.flags & PE_PRESENT) === 0;
}

export function lazyBytes(map: Pagemap): number {
  return map.entries.filter(isLazyOnly).reduce((n, e) => n + e.nrPages * PAGE_SIZE, 0);
}

/** Every entry flagged present (the lazy ones now in the pages file too); the rest of each entry unchanged. */
export function encodeCompletePagemap(map: Pagemap): Buffer {
  const messages = [encodeFields([{ no: 1, v: { wire: 0, value: BigInt(map.pagesId) } }])];
  for (const e of map.entries) {
    const flags = isLazyOnly(e) ? e.flags | PE_PRESENT : e.flags;
    const fields = e.fields.some((f) => f.no === 4)
      ? e.fields.map((f) => (f.no === 4 ? { no: 4, v: { wire: 0 as const, value: BigInt(flags) } } : f))
      : [...e.fields, { no: 4, v: { wire: 0 as const, value: BigInt(flags) } }];
    messages.push(encodeFields(fields));
  }
  const parts: Buffer[] = [u32(IMG_COMMON_MAGIC), u32(PAGEMAP_MAGIC)];
  for (const m of messages) parts.push(u32(m.length), m);
  return Buffer.concat(parts);
}

function varint(fields: Field[], no: number): bigint | undefined {
  const f = fields.find((x) => x.no === no && x.v.wire === 0);
  return f ? (f.v.value as bigint) : undefined;
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
}

function encodeVarint(v: bigint): Buffer {
  const out: number[] = [];
  let x = BigInt.asUintN(64, v);
  do {
    let byte = Number(x & 0x7fn);
    x >>= 7n;
    if (x > 0n) byte |= 0x80;
    out.push(byte);
  } while (x > 0n);
  return Buffer.from(out);
}

/** Fields back to protobuf wire bytes, in the order given. */
export function encodeFields(fields: Field[]): Buffer {
  const parts: Buffer[] = [];
  for (const f of fields) {
    parts.push(encodeVarint(BigInt((f.no << 3) | f.v.wire)));
    if (f.v.wire === 0) parts.push(encodeVarint(f.v.value));
    else if (f.v.wire === 2) parts.push(encodeVarint(BigInt(f.v.value.length)), f.v.value);
    else {
      const b = Buffer.alloc(f.v.wire === 1 ? 8 : 4);
      if (f.v.wire === 1) b.writeBigUInt64LE(f.v.value);
      else b.writeUInt32LE(Number(f.v.value));
      parts.push(b);
    }
  }
  return Buffer.concat(parts);
}
