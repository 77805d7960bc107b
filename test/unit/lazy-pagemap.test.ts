import { describe, expect, it } from 'vitest';
import { IMG_COMMON_MAGIC } from '../../agent/linux/criu-image.js';
import { encodeCompletePagemap, encodeFields, isLazyOnly, lazyBytes, PAGEMAP_MAGIC, PE_LAZY, PE_PRESENT, parsePagemap } from '../../agent/linux/lazy-pagemap.js';

/** A pagemap image as CRIU 4.2's lazy dump writes it: head, then entries {vaddr, compat 0, flags, nr_pages}. */
function image(pagesId: number, entries: { vaddr: bigint; nrPages: number; flags: number }[]): Buffer {
  const msg = (b: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32LE(b.length);
    return [len, b];
  };
  const head = encodeFields([{ no: 1, v: { wire: 0, value: BigInt(pagesId) } }]);
  const parts = [Buffer.from([0x19, 0x43, 0x56, 0x54]), Buffer.from([0x25, 0x40, 0x08, 0x56]), ...msg(head)];
  for (const e of entries)
    parts.push(
      ...msg(
        encodeFields([
          { no: 1, v: { wire: 0, value: e.vaddr } },
          { no: 2, v: { wire: 0, value: 0n } },
          { no: 4, v: { wire: 0, value: BigInt(e.flags) } },
          { no: 5, v: { wire: 0, value: BigInt(e.nrPages) } },
        ]),
      ),
    );
  return Buffer.concat(parts);
}

describe('lazy pagemap', () => {
  const entries = [
    { vaddr: 0x55d0a0000000n, nrPages: 3, flags: PE_PRESENT },
    { vaddr: 0x7f0000000000n, nrPages: 16384, flags: PE_LAZY },
    { vaddr: 0x7ffd00000000n, nrPages: 2, flags: PE_PRESENT | PE_LAZY },
  ];

  it('reads what a lazy dump left to the page server', () => {
    const buf = image(1, entries);
    expect(buf.readUInt32LE(0)).toBe(IMG_COMMON_MAGIC);
    expect(buf.readUInt32LE(4)).toBe(PAGEMAP_MAGIC);
    const map = parsePagemap(buf);
    expect(map.pagesId).toBe(1);
    expect(map.entries.map((e) => [e.vaddr, e.nrPages, e.flags])).toEqual(entries.map((e) => [e.vaddr, e.nrPages, e.flags]));
    expect(map.entries.map(isLazyOnly)).toEqual([false, true, false]);
    expect(lazyBytes(map)).toBe(16384 * 4096);
  });

  it('made whole: every entry present, nothing else changed', () => {
    const whole = parsePagemap(encodeCompletePagemap(parsePagemap(image(7, entries))));
    expect(whole.pagesId).toBe(7);
    expect(whole.entries.map((e) => [e.vaddr, e.nrPages, e.flags])).toEqual([
      [0x55d0a0000000n, 3, PE_PRESENT],
      [0x7f0000000000n, 16384, PE_LAZY | PE_PRESENT],
      [0x7ffd00000000n, 2, PE_PRESENT | PE_LAZY],
    ]);
    expect(lazyBytes(whole)).toBe(0);
    // Byte for byte what CRIU wrote, apart from the one flags varint.
    expect(encodeCompletePagemap(whole)).toEqual(image(7, whole.entries));
  });
});
