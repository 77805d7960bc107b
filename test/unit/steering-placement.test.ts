import { describe, expect, it } from 'vitest';
import { placeWorkload, workloadBackendIds } from '../../controller/steering-placement.js';
import { applyOp, EMPTY_TABLE, type RuleTable } from '../../controller/steering-table.js';
import { PreconditionError, UnknownHostError } from '../../lib/errors.js';

const fleet = { hosts: new Map([['a', '198.18.1.2'], ['b', '198.18.1.10'], ['c', '']]) };
const W = '198.18.1.200';
const OTHER = '198.18.1.201';

/** web (two backends: the workload W on a, another on b) and dns (W on a). */
function table(): RuleTable {
  let t = EMPTY_TABLE;
  const op = (o: Parameters<typeof applyOp>[1]) => (t = applyOp(t, o, fleet).table);
  const web = { proto: 'tcp' as const, vip: '198.19.1.1', port: 80 };
  const dns = { proto: 'udp' as const, vip: '198.19.1.2', port: 53 };
  op({ op: 'create-service', service: web });
  op({ op: 'create-service', service: dns });
  op({ op: 'add-backend', service: web, backend: { address: W, port: 7000 }, weight: 1, host: 'a' });
  op({ op: 'add-backend', service: web, backend: { address: OTHER, port: 7000 }, weight: 1, host: 'b' });
  op({ op: 'add-backend', service: dns, backend: { address: W, port: 5353 }, weight: 1, host: 'a' });
  return t;
}

describe('placing a workload in the steering table (the migration\'s STEER step)', () => {
  it('points every backend on its addresses and the addresses themselves to the host, in one generation, ids kept', () => {
    const before = table();
    const r = placeWorkload(before, { addresses: [W], host: 'b' }, fleet);
    expect(r.changed).toBe(true);
    expect(r.table.generation).toBe(before.generation + 1);
    const mine = r.table.services.flatMap((s) => s.backends).filter((b) => b.address === W);
    expect(mine.map((b) => [b.id, b.host, b.hostAddress])).toEqual(
      before.services.flatMap((s) => s.backends).filter((b) => b.address === W).map((b) => [b.id, 'b', '198.18.1.10']),
    );
    expect(r.backendIds).toEqual(mine.map((b) => b.id).sort((x, y) => x - y));
    expect(r.table.addresses).toEqual([{ address: W, host: 'b', hostAddress: '198.18.1.10' }]);
    // Nothing else moved, and the input is untouched.
    expect(r.table.services.flatMap((s) => s.backends).find((b) => b.address === OTHER)?.host).toBe('b');
    expect(before.services.flatMap((s) => s.backends).filter((b) => b.address === W).every((b) => b.host === 'a')).toBe(true);
  });

  it('spends no generation when the table already places it there, and moves back in the next one', () => {
    const there = placeWorkload(table(), { addresses: [W], host: 'b' }, fleet).table;
    const again = placeWorkload(there, { addresses: [W], host: 'b' }, fleet);
    expect(again.changed).toBe(false);
    expect(again.table).toBe(there);
    const back = placeWorkload(there, { addresses: [W], host: 'a' }, fleet);
    expect(back.table.generation).toBe(there.generation + 1);
    expect(back.table.addresses).toEqual([{ address: W, host: 'a', hostAddress: '198.18.1.2' }]);
  });

  it('places an address that no service names (a workload reached directly)', () => {
    const r = placeWorkload(EMPTY_TABLE, { addresses: ['198.18.1.205'], host: 'a' }, fleet);
    expect(r.changed).toBe(true);
    expect(r.backendIds).toEqual([]);
    expect(r.table.addresses).toEqual([{ address: '198.18.1.205', host: 'a', hostAddress: '198.18.1.2' }]);
  });

  it('refuses an unknown host or one without a data-plane address, changing nothing', () => {
    const t = table();
    expect(() => placeWorkload(t, { addresses: [W], host: 'zz' }, fleet)).toThrow(UnknownHostError);
    expect(() => placeWorkload(t, { addresses: [W], host: 'c' }, fleet)).toThrow(PreconditionError);
    expect(() => placeWorkload(t, { addresses: [W], host: 'c' }, fleet)).toThrow(/no data-plane address/);
  });

  it('names the workload\'s backends by its addresses', () => {
    expect(workloadBackendIds(table(), [W])).toHaveLength(2);
    expect(workloadBackendIds(table(), ['198.18.1.99'])).toEqual([]);
  });
});
