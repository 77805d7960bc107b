import { describe, expect, it } from 'vitest';
import { MAGLEV_TABLE_SIZE, MaglevInputError, maglevTable, type MaglevBackend } from '../../agent/maglev.js';

const shares = (t: Uint32Array) => {
  const n = new Map<number, number>();
  for (const id of t) n.set(id, (n.get(id) ?? 0) + 1);
  return n;
};
const changed = (a: Uint32Array, b: Uint32Array) => a.reduce((n, id, i) => n + (id === b[i] ? 0 : 1), 0);
const equal = (n: number, weight = 1): MaglevBackend[] => Array.from({ length: n }, (_, i) => ({ id: 100 + i * 7, weight }));

describe('maglev table', () => {
  it('fills every entry, with only the given ids', () => {
    const t = maglevTable(equal(5));
    expect(t.length).toBe(MAGLEV_TABLE_SIZE);
    expect([...shares(t).keys()].sort()).toEqual(equal(5).map((b) => b.id).sort());
  });

  it('is deterministic and independent of the backends\' order', () => {
    const bs = equal(9);
    expect(maglevTable(bs)).toEqual(maglevTable(bs));
    expect(maglevTable([...bs].reverse())).toEqual(maglevTable(bs));
  });

  it('gives equal backends equal shares, within 2%', () => {
    const s = shares(maglevTable(equal(10)));
    for (const n of s.values()) expect(Math.abs(n / MAGLEV_TABLE_SIZE - 0.1)).toBeLessThan(0.02);
  });

  it('gives each backend a share close to its weight\'s', () => {
    const bs: MaglevBackend[] = [
      { id: 1, weight: 1 },
      { id: 2, weight: 2 },
      { id: 3, weight: 5 },
      { id: 4, weight: 100 },
      { id: 5, weight: 12 },
    ];
    const total = bs.reduce((n, b) => n + b.weight, 0);
    const s = shares(maglevTable(bs));
    for (const b of bs) expect(Math.abs((s.get(b.id) ?? 0) / MAGLEV_TABLE_SIZE - b.weight / total)).toBeLessThan(0.01);
  });

  it('moves about 1/N of the entries when one backend of N is added or removed', () => {
    for (const n of [4, 10, 20]) {
      const before = maglevTable(equal(n));
      const removed = maglevTable(equal(n).slice(1));
      const added = maglevTable([...equal(n), { id: 9999, weight: 1 }]);
      // Removal moves exactly the removed backend's entries, plus a little churn (Maglev is not minimal).
      const own = shares(before).get(equal(n)[0].id)!;
      expect(changed(before, removed)).toBeGreaterThanOrEqual(own);
      expect(changed(before, removed) / MAGLEV_TABLE_SIZE).toBeLessThan(1.6 / n);
      expect(changed(before, added) / MAGLEV_TABLE_SIZE).toBeLessThan(1.6 / (n + 1));
      expect(changed(before, added)).toBeGreaterThanOrEqual(shares(added).get(9999)!);
    }
  });

  it('leaves a table of zeros without backends, or when all weigh 0 (drained)', () => {
    expect(maglevTable([]).every((id) => id === 0)).toBe(true);
    expect(maglevTable([{ id: 3, weight: 0 }]).every((id) => id === 0)).toBe(true);
  });

  it('refuses what it cannot build', () => {
    expect(() => maglevTable(equal(2), 4096)).toThrow(MaglevInputError);
    expect(() => maglevTable([{ id: 0, weight: 1 }])).toThrow(/id 0/);
    expect(() => maglevTable([{ id: 2, weight: 1 }, { id: 2, weight: 1 }])).toThrow(/twice/);
    expect(() => maglevTable([{ id: 2, weight: -1 }])).toThrow(/weight/);
  });
});
