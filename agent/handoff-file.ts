/**
 * A workload's steering state (SteeringHandoff, agent/steering.ts) as a file: what the source
 * host exports travels inside the migration's image folder next to the held packets
 * (agent/held-packets.ts), and the target imports it before unlock.
 *
 * Layout (all integers little endian):
 *
 *   0   8 bytes  magic "GWSTEER\n"
 *   8   u32      format version (HANDOFF_FORMAT_VERSION)
 *   12  u32      section count
 *   16  per section, 20 bytes: u32 kind (flows 1, rnat 2, counters 3), u32 layout version of its
 *       entries (the map's GODWIT_STEER_*_VERSION in bpf/steer_maps.h), u32 key size,
 *       u32 value size, u32 count
 *   ..  per section, in the table's order: its keys packed, then its values packed (the layout
 *       of the kernel's batch calls, so an import is one batch update)
 *   ..  32 bytes: sha256 over every byte before it
 *
 * Counters are one entry per backend id: key u32 id, value godwit_steer_counter (packets,
 * bytes, flows as u64), summed over the source's CPUs.
 *
 * The layout version of each section is what makes a file from a host with other map layouts
 * refused instead of misread (Cilium loses state on a layout change; here it is said so, and a
 * future reader can convert). No kernel here: files and bytes only.
 */
import { createHash } from 'node:crypto';
import { open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { STEERING_FILE } from './held-packets.js';
import type { PackedMapEntries, SteeringCounter, SteeringHandoff } from './steering.js';

const MAGIC = Buffer.from('GWSTEER\n', 'latin1');
/** Bump when the framing changes; a reader refuses versions it does not know. */
export const HANDOFF_FORMAT_VERSION = 1;
const HEADER_BYTES = 16;
const SECTION_BYTES = 20;
const CHECKSUM_BYTES = 32;

export type HandoffSectionName = 'flows' | 'rnat' | 'counters';

/** What each section holds in this format: its entries' layout as bpf/steer_maps.h declares it. */
export const HANDOFF_SECTIONS: Readonly<Record<HandoffSectionName, { kind: number; layout: number; keySize: number; valueSize: number }>> = {
  /** godwit_flow_key -> godwit_flow_value, GODWIT_STEER_FLOWS_VERSION 2. */
  flows: { kind: 1, layout: 2, keySize: 16, valueSize: 12 },
  /** godwit_rnat_key -> godwit_rnat_value, GODWIT_STEER_RNAT_VERSION 1. */
  rnat: { kind: 2, layout: 1, keySize: 16, valueSize: 8 },
  /** backend id -> godwit_steer_counter summed over CPUs, GODWIT_STEER_STATS_VERSION 1. */
  counters: { kind: 3, layout: 1, keySize: 4, valueSize: 24 },
};
const SECTION_ORDER: readonly HandoffSectionName[] = ['flows', 'rnat', 'counters'];

export type HandoffFileProblem = 'magic' | 'version' | 'truncated' | 'size' | 'checksum' | 'layout';

/** A steering file this reader cannot take (or a handoff that does not fit the format); nothing was imported. */
export class HandoffFileError extends Error {
  constructor(
    readonly problem: HandoffFileProblem,
    readonly detail: string,
    /** The file, when the bytes came from one. */
    readonly file?: string,
  ) {
    super(`steering handoff${file ? ` ${file}` : ''}: ${detail}`);
    this.name = 'HandoffFileError';
  }
}

/** Per-backend counters as a packed section: ids ascending. */
export function packCounters(counters: ReadonlyMap<number, SteeringCounter>): PackedMapEntries {
  const ids = [...counters.keys()].sort((a, b) => a - b);
  const keys = Buffer.alloc(ids.length * 4);
  const values = Buffer.alloc(ids.length * 24);
  ids.forEach((id, i) => {
    const c = counters.get(id)!;
    keys.writeUInt32LE(id, i * 4);
    values.writeBigUInt64LE(c.packets, i * 24);
    values.writeBigUInt64LE(c.bytes, i * 24 + 8);
    values.writeBigUInt64LE(c.flows, i * 24 + 16);
  });
  return { keySize: 4, valueSize: 24, count: ids.length, keys, values };
}

export function unpackCounters(e: PackedMapEntries): Map<number, SteeringCounter> {
  const out = new Map<number, SteeringCounter>();
  for (let i = 0; i < e.count; i++)
    out.set(e.keys.readUInt32LE(i * 4), { packets: e.values.readBigUInt64LE(i * 24), bytes: e.values.readBigUInt64LE(i * 24 + 8), flows: e.values.readBigUInt64LE(i * 24 + 16) });
  return out;
}

function checkSection(name: HandoffSectionName, e: PackedMapEntries): void {
  const want = HANDOFF_SECTIONS[name];
  if (e.keySize !== want.keySize || e.valueSize !== want.valueSize)
    throw new HandoffFileError('layout', `${name}: ${e.keySize}-byte keys and ${e.valueSize}-byte values, this format carries ${want.keySize} and ${want.valueSize}`);
  if (!Number.isSafeInteger(e.count) || e.count < 0 || e.keys.length !== e.count * e.keySize || e.values.length !== e.count * e.valueSize)
    throw new HandoffFileError('size', `${name}: ${e.count} entries need ${e.count * e.keySize} key and ${e.count * e.valueSize} value bytes, have ${e.keys.length} and ${e.values.length}`);
}

/**
 * The file's bytes for a handoff, in pieces (the sections' own buffers, not copied) and the
 * checksum last: what writeHandoffFile writes with one writev.
 */
export function encodeHandoffParts(h: SteeringHandoff): Buffer[] {
  const sections: Record<HandoffSectionName, PackedMapEntries> = { flows: h.flows, rnat: h.rnat, counters: packCounters(h.backendCounters) };
  for (const name of SECTION_ORDER) checkSection(name, sections[name]);
  const head = Buffer.alloc(HEADER_BYTES + SECTION_ORDER.length * SECTION_BYTES);
  MAGIC.copy(head, 0);
  head.writeUInt32LE(HANDOFF_FORMAT_VERSION, 8);
  head.writeUInt32LE(SECTION_ORDER.length, 12);
  SECTION_ORDER.forEach((name, i) => {
    const s = HANDOFF_SECTIONS[name];
    const at = HEADER_BYTES + i * SECTION_BYTES;
    head.writeUInt32LE(s.kind, at);
    head.writeUInt32LE(s.layout, at + 4);
    head.writeUInt32LE(s.keySize, at + 8);
    head.writeUInt32LE(s.valueSize, at + 12);
    head.writeUInt32LE(sections[name].count, at + 16);
  });
  const parts = [head, ...SECTION_ORDER.flatMap((name) => [sections[name].keys, sections[name].values])].filter((p) => p.length > 0);
  const hash = createHash('sha256');
  for (const p of parts) hash.update(p);
  return [...parts, hash.digest()];
}

/** The file's bytes for a handoff, in one Buffer. */
export function encodeHandoff(h: SteeringHandoff): Buffer {
  return Buffer.concat(encodeHandoffParts(h));
}

/**
 * A handoff from the file's bytes. Refuses (HandoffFileError, `problem` says which) a wrong
 * magic, a format version it does not know, a size that disagrees with the section table, a
 * checksum that does not match, and sections whose layout is not this format's. The sections
 * returned are views into `bytes`.
 */
export function decodeHandoff(bytes: Buffer, file?: string): SteeringHandoff {
  const fail = (problem: HandoffFileProblem, detail: string) => new HandoffFileError(problem, detail, file);
  if (bytes.length < HEADER_BYTES) throw fail('truncated', `${bytes.length} bytes, shorter than the ${HEADER_BYTES}-byte header`);
  if (!bytes.subarray(0, MAGIC.length).equals(MAGIC)) throw fail('magic', `starts with ${bytes.subarray(0, MAGIC.length).toString('hex')}, not a godwit steering file (magic ${MAGIC.toString('hex')})`);
  const version = bytes.readUInt32LE(8);
  if (version !== HANDOFF_FORMAT_VERSION) throw fail('version', `format version ${version}; this agent reads version ${HANDOFF_FORMAT_VERSION} only (written by a newer or older godwit?)`);
  const n = bytes.readUInt32LE(12);
  if (n !== SECTION_ORDER.length) throw fail('layout', `${n} sections; version ${HANDOFF_FORMAT_VERSION} has ${SECTION_ORDER.length} (${SECTION_ORDER.join(', ')})`);
  const tableEnd = HEADER_BYTES + n * SECTION_BYTES;
  if (bytes.length < tableEnd + CHECKSUM_BYTES) throw fail('truncated', `${bytes.length} bytes, shorter than the header, section table and checksum (${tableEnd + CHECKSUM_BYTES})`);
  const table = SECTION_ORDER.map((_, i) => {
    const at = HEADER_BYTES + i * SECTION_BYTES;
    return { kind: bytes.readUInt32LE(at), layout: bytes.readUInt32LE(at + 4), keySize: bytes.readUInt32LE(at + 8), valueSize: bytes.readUInt32LE(at + 12), count: bytes.readUInt32LE(at + 16) };
  });
  // Sizes from the table (at most 2^32 entries of 2^32 bytes: exact in a double).
  const payload = table.reduce((sum, s) => sum + s.count * (s.keySize + s.valueSize), 0);
  const want = tableEnd + payload + CHECKSUM_BYTES;
  if (bytes.length < want) throw fail('truncated', `${bytes.length} bytes; its section table says ${want} (${table.map((s, i) => `${SECTION_ORDER[i]} ${s.count}`).join(', ')} entries)`);
  if (bytes.length > want) throw fail('size', `${bytes.length} bytes; its section table says ${want}: ${bytes.length - want} bytes too many`);
  const body = bytes.subarray(0, want - CHECKSUM_BYTES);
  const sum = createHash('sha256').update(body).digest();
  if (!sum.equals(bytes.subarray(want - CHECKSUM_BYTES))) throw fail('checksum', `sha256 ${sum.toString('hex')} does not match the recorded ${bytes.subarray(want - CHECKSUM_BYTES).toString('hex')}: the file is corrupt`);
  const sections = {} as Record<HandoffSectionName, PackedMapEntries>;
  let at = tableEnd;
  SECTION_ORDER.forEach((name, i) => {
    const s = table[i];
    const expect = HANDOFF_SECTIONS[name];
    if (s.kind !== expect.kind) throw fail('layout', `section ${i} is of kind ${s.kind}, expected ${expect.kind} (${name})`);
    if (s.layout !== expect.layout || s.keySize !== expect.keySize || s.valueSize !== expect.valueSize)
      throw fail('layout', `${name}: layout ${s.layout} with ${s.keySize}-byte keys and ${s.valueSize}-byte values; this agent's maps are layout ${expect.layout} with ${expect.keySize} and ${expect.valueSize}`);
    const keys = bytes.subarray(at, at + s.count * s.keySize);
    at += keys.length;
    const values = bytes.subarray(at, at + s.count * s.valueSize);
    at += values.length;
    sections[name] = { keySize: s.keySize, valueSize: s.valueSize, count: s.count, keys, values };
  });
  return { flows: sections.flows, rnat: sections.rnat, backendCounters: unpackCounters(sections.counters) };
}

/** Writes the image's steering file whole (a temporary name, then renamed: never seen half written); returns its size. */
export async function writeHandoffFile(imageDir: string, h: SteeringHandoff): Promise<number> {
  const parts = encodeHandoffParts(h);
  const path = join(imageDir, STEERING_FILE);
  const tmp = `${path}.tmp-${process.pid}`;
  const file = await open(tmp, 'w');
  let bytes = 0;
  try {
    // writev may write less than asked (a signal, a full disk): go on from where it stopped.
    for (let rest = parts; rest.length > 0; ) {
      const { bytesWritten } = await file.writev(rest);
      bytes += bytesWritten;
      rest = skipBytes(rest, bytesWritten);
    }
  } finally {
    await file.close();
  }
  await rename(tmp, path);
  return bytes;
}

function skipBytes(parts: Buffer[], n: number): Buffer[] {
  let i = 0;
  while (i < parts.length && n >= parts[i].length) n -= parts[i++].length;
  return i < parts.length ? [parts[i].subarray(n), ...parts.slice(i + 1)] : [];
}

/**
 * The image's steering state; undefined when the image has none (the source steered nothing for
 * it). `load` reads the file's bytes: on Linux pass mapFile (agent/linux/bpf/native-map.ts), or
 * call readHandoffFileMapped (agent/linux/steer-handoff.ts), which maps the file instead of
 * copying it (the returned sections are views into those bytes).
 */
export async function readHandoffFile(imageDir: string, load: (path: string) => Buffer | Promise<Buffer> = (p) => readFile(p)): Promise<SteeringHandoff | undefined> {
  const path = join(imageDir, STEERING_FILE);
  let bytes: Buffer;
  try {
    bytes = await load(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  return decodeHandoff(bytes, path);
}

export async function removeHandoffFile(imageDir: string): Promise<void> {
  await rm(join(imageDir, STEERING_FILE), { force: true });
}

/** How many entries and which: the same for two sets of entries exactly when they hold the same entries. */
export interface EntriesDigest {
  count: number;
  /** sha256 hex over key || value of every entry, in ascending byte order of the entries. */
  sha256: string;
}

/**
 * The digest of packed entries, independent of their order (a map dump's order is the kernel's
 * hash order, which differs between hosts): entries sorted by their bytes, then hashed.
 */
export function entriesDigest(e: PackedMapEntries): EntriesDigest {
  const rows: string[] = new Array(e.count);
  // latin1 strings compare code unit by code unit, i.e. byte by byte: sort() orders the bytes.
  for (let i = 0; i < e.count; i++) rows[i] = e.keys.toString('latin1', i * e.keySize, (i + 1) * e.keySize) + e.values.toString('latin1', i * e.valueSize, (i + 1) * e.valueSize);
  rows.sort();
  const hash = createHash('sha256');
  for (const r of rows) hash.update(r, 'latin1');
  return { count: e.count, sha256: hash.digest('hex') };
}

/** Each section's digest: what the benchmark and the tests compare between the two hosts. */
export function handoffDigest(h: SteeringHandoff): Record<HandoffSectionName, EntriesDigest> {
  return { flows: entriesDigest(h.flows), rnat: entriesDigest(h.rnat), counters: entriesDigest(packCounters(h.backendCounters)) };
}
