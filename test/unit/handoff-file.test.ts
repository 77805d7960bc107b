import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { STEERING_FILE } from '../../agent/held-packets.js';
import {
  decodeHandoff,
  encodeHandoff,
  entriesDigest,
  HANDOFF_FORMAT_VERSION,
  HANDOFF_SECTIONS,
  handoffDigest,
  HandoffFileError,
  readHandoffFile,
  removeHandoffFile,
  writeHandoffFile,
} from '../../agent/handoff-file.js';
import { selectEntries } from '../../agent/linux/bpf/map-transfer.js';
import { COUNTER_LAYOUT, STEER_MAPS } from '../../agent/linux/steer-map-codec.js';
import type { PackedMapEntries, SteeringHandoff } from '../../agent/steering.js';

function entries(keySize: number, valueSize: number, n: number, seed: number): PackedMapEntries {
  const keys = Buffer.alloc(n * keySize);
  const values = Buffer.alloc(n * valueSize);
  for (let i = 0; i < n; i++) {
    keys.writeUInt32BE(seed * 100_000 + i, i * keySize);
    values.writeUInt32LE(seed + i, i * valueSize);
  }
  return { keySize, valueSize, count: n, keys, values };
}

function handoff(flows = 5, rnat = 3): SteeringHandoff {
  return {
    flows: entries(16, 12, flows, 1),
    rnat: entries(16, 8, rnat, 2),
    backendCounters: new Map([
      [9, { packets: 10n, bytes: 2n ** 40n, flows: 3n }],
      [4, { packets: 1n, bytes: 60n, flows: 1n }],
    ]),
  };
}

/** The error a decode throws (or fails the test). */
function refusal(bytes: Buffer): HandoffFileError {
  try {
    decodeHandoff(bytes, 'img/godwit-steering.bin');
  } catch (err) {
    expect(err).toBeInstanceOf(HandoffFileError);
    return err as HandoffFileError;
  }
  throw new Error('decoded');
}

describe('steering handoff file', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('carries the sections of the maps it says, in their layouts (steer_maps.h)', () => {
    for (const [name, m] of [['flows', STEER_MAPS.flows], ['rnat', STEER_MAPS.rnat]] as const)
      expect(HANDOFF_SECTIONS[name], name).toMatchObject({ layout: m.version, keySize: m.keySize, valueSize: m.valueSize });
    expect(HANDOFF_SECTIONS.counters).toMatchObject({ layout: STEER_MAPS.backendStats.version, keySize: STEER_MAPS.backendStats.keySize, valueSize: COUNTER_LAYOUT.size });
  });

  it('round-trips every section, with the same digests', () => {
    const h = handoff();
    const bytes = encodeHandoff(h);
    expect(bytes.subarray(0, 8).toString('latin1')).toBe('GWSTEER\n');
    expect(bytes.readUInt32LE(8)).toBe(HANDOFF_FORMAT_VERSION);
    const back = decodeHandoff(bytes);
    expect(back.flows).toEqual(h.flows);
    expect(back.rnat).toEqual(h.rnat);
    expect(back.backendCounters).toEqual(h.backendCounters);
    expect(handoffDigest(back)).toEqual(handoffDigest(h));
    // Empty sections are fine (a workload with no reverse NAT here).
    const empty = decodeHandoff(encodeHandoff({ ...handoff(0, 0), backendCounters: new Map() }));
    expect([empty.flows.count, empty.rnat.count, empty.backendCounters.size]).toEqual([0, 0, 0]);
  });

  it('writes the file into the image folder beside the held packets, reads it back, removes it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gwt-handoff-file-'));
    dirs.push(dir);
    expect(await readHandoffFile(dir)).toBeUndefined();
    const h = handoff(1000, 200);
    const size = await writeHandoffFile(dir, h);
    expect(size).toBe((await readFile(join(dir, STEERING_FILE))).length);
    const back = await readHandoffFile(dir);
    expect(handoffDigest(back!)).toEqual(handoffDigest(h));
    await removeHandoffFile(dir);
    expect(await readHandoffFile(dir)).toBeUndefined();
  });

  it('refuses an unknown version, a wrong magic, a truncated or oversized file and a bad checksum, saying which', async () => {
    const good = encodeHandoff(handoff());

    const v2 = Buffer.from(good);
    v2.writeUInt32LE(HANDOFF_FORMAT_VERSION + 1, 8);
    const version = refusal(v2);
    expect(version.problem).toBe('version');
    expect(version.message).toMatch(/img\/godwit-steering\.bin: format version 2; this agent reads version 1 only/);

    const magic = Buffer.from(good);
    magic.write('CRIUIMG!', 0, 'latin1');
    expect(refusal(magic)).toMatchObject({ problem: 'magic' });
    expect(refusal(magic).message).toMatch(/not a godwit steering file/);

    expect(refusal(good.subarray(0, 10))).toMatchObject({ problem: 'truncated' });
    const cut = refusal(good.subarray(0, good.length - 7));
    expect(cut.problem).toBe('truncated');
    expect(cut.message).toMatch(/flows 5, rnat 3, counters 2 entries/);
    expect(refusal(Buffer.concat([good, Buffer.alloc(3)]))).toMatchObject({ problem: 'size' });

    // One bit flipped in a flow's value, then in the checksum itself.
    const flipped = Buffer.from(good);
    flipped[16 + 3 * 20 + 5 * 16 + 2] ^= 0x10;
    const corrupt = refusal(flipped);
    expect(corrupt.problem).toBe('checksum');
    expect(corrupt.message).toMatch(/does not match the recorded .*: the file is corrupt/);
    const sum = Buffer.from(good);
    sum[sum.length - 1] ^= 1;
    expect(refusal(sum)).toMatchObject({ problem: 'checksum' });

    // A section of another layout (a flows map of layout 3), checksummed as a writer would.
    const { createHash } = await import('node:crypto');
    const layout = Buffer.from(good);
    layout.writeUInt32LE(3, 16 + 4);
    createHash('sha256').update(layout.subarray(0, layout.length - 32)).digest().copy(layout, layout.length - 32);
    const l = refusal(layout);
    expect(l.problem).toBe('layout');
    expect(l.message).toMatch(/flows: layout 3 .* this agent's maps are layout 2/);

    // The file on disk: the same refusal, naming the file.
    const dir = await mkdtemp(join(tmpdir(), 'gwt-handoff-file-'));
    dirs.push(dir);
    await writeFile(join(dir, STEERING_FILE), v2);
    await expect(readHandoffFile(dir)).rejects.toMatchObject({ name: 'HandoffFileError', problem: 'version', file: join(dir, STEERING_FILE) });
  });

  it('refuses to write sections that do not fit the format', () => {
    const h = handoff();
    expect(() => encodeHandoff({ ...h, flows: entries(16, 8, 2, 1) })).toThrow(HandoffFileError);
    expect(() => encodeHandoff({ ...h, rnat: { ...h.rnat, count: 4 } })).toThrow(/3 entries|4 entries need/);
  });

  it('digests ignore order and see every byte', () => {
    const e = entries(16, 12, 50, 3);
    const keys = Buffer.alloc(e.keys.length);
    const values = Buffer.alloc(e.values.length);
    for (let i = 0; i < 50; i++) {
      e.keys.copy(keys, (49 - i) * 16, i * 16, (i + 1) * 16);
      e.values.copy(values, (49 - i) * 12, i * 12, (i + 1) * 12);
    }
    expect(entriesDigest({ ...e, keys, values })).toEqual(entriesDigest(e));
    values[7] ^= 1;
    expect(entriesDigest({ ...e, keys, values }).sha256).not.toBe(entriesDigest(e).sha256);
    expect(entriesDigest(e).count).toBe(50);
  });

  it('selects by key and value, in place or into new buffers, keeping order', () => {
    const e = entries(16, 12, 10, 1); // values 1..10
    const odd = (c: { values: Buffer; valueOffset: number }) => c.values.readUInt32LE(c.valueOffset) % 2 === 1;
    const copy = selectEntries(e, odd);
    expect(copy.count).toBe(5);
    expect(Array.from({ length: 5 }, (_, i) => copy.values.readUInt32LE(i * 12))).toEqual([1, 3, 5, 7, 9]);
    const before = Buffer.from(e.values);
    expect(e.values.equals(before)).toBe(true);
    const inPlace = selectEntries(e, (c) => c.index >= 4 || c.index === 1, true);
    expect(Array.from({ length: inPlace.count }, (_, i) => inPlace.values.readUInt32LE(i * 12))).toEqual([2, 5, 6, 7, 8, 9, 10]);
    expect(Array.from({ length: inPlace.count }, (_, i) => inPlace.keys.readUInt32BE(i * 16) - 100_000)).toEqual([1, 4, 5, 6, 7, 8, 9]);
  });
});
