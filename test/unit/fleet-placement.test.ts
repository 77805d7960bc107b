import { describe, expect, it } from 'vitest';
import { chooseTarget, labelProblem, matches, parseLabels, type PlacementHost } from '../../controller/placement.js';

const host = (name: string, over: Partial<PlacementHost> = {}): PlacementHost => ({ name, ready: true, cordoned: false, workloads: 0, workloadLabels: [], ...over });
const web = { name: 'web', host: 'a', labels: {} };

describe('placement: where a drained workload goes', () => {
  it('never the source, never a silent or cordoned host', () => {
    const r = chooseTarget(web, [host('a'), host('b', { ready: false }), host('c', { cordoned: true }), host('d', { workloads: 9 })]);
    expect(r).toEqual({ host: 'd' });
  });

  it('the least loaded host by workload count, then by free memory, then by name', () => {
    expect(chooseTarget(web, [host('a'), host('b', { workloads: 2 }), host('c', { workloads: 1 })])).toEqual({ host: 'c' });
    expect(chooseTarget(web, [host('b', { workloads: 1, freeMemoryBytes: 1e9 }), host('c', { workloads: 1, freeMemoryBytes: 2e9 })])).toEqual({ host: 'c' });
    expect(chooseTarget(web, [host('c', { workloads: 1 }), host('b', { workloads: 1 })])).toEqual({ host: 'b' });
  });

  it('anti-affinity: avoid=LABEL keeps it off hosts holding a workload with that label, both ways', () => {
    const cache = { name: 'cache', host: 'a', labels: { avoid: 'db' } };
    const hosts = [host('b', { workloadLabels: [{ db: '' }] }), host('c', { workloads: 5, workloadLabels: [{ app: 'x' }] })];
    expect(chooseTarget(cache, hosts)).toEqual({ host: 'c' });
    // The other way round: the database moves, and b holds a workload that avoids it.
    const db = { name: 'db', host: 'a', labels: { db: '', tier: 'data' } };
    expect(chooseTarget(db, [host('b', { workloadLabels: [{ avoid: 'tier=data' }] }), host('c', { workloads: 3 })])).toEqual({ host: 'c' });
    // KEY=VALUE selectors match the value only.
    expect(chooseTarget({ ...cache, labels: { avoid: 'app=y' } }, hosts.slice(1))).toEqual({ host: 'c' });
  });

  it('says per host why none fits', () => {
    const r = chooseTarget({ name: 'cache', host: 'a', labels: { avoid: 'db,queue' } }, [
      host('a'),
      host('b', { cordoned: true }),
      host('c', { workloadLabels: [{ queue: 'q1' }] }),
    ]);
    expect(r.host).toBeUndefined();
    expect('reasons' in r && r.reasons).toEqual(['a: the workload runs there', 'b: cordoned', 'c: holds a workload labelled queue, which cache avoids']);
    expect(chooseTarget(web, [])).toEqual({ reasons: ['no hosts are registered'] });
  });

  it('allowed targets narrow the choice', () => {
    expect(chooseTarget(web, [host('b'), host('c', { workloads: 4 })], { allowed: ['c'] })).toEqual({ host: 'c' });
  });

  it('labels: parsed from KEY=VALUE and KEY, checked, matched', () => {
    expect(parseLabels(['db', 'avoid=app=web', 'tier=data'])).toEqual({ db: '', avoid: 'app=web', tier: 'data' });
    expect(matches('db', { db: '' })).toBe(true);
    expect(matches('tier=data', { tier: 'data' })).toBe(true);
    expect(matches('tier=data', { tier: 'web' })).toBe(false);
    expect(labelProblem({ ok: 'x' })).toBeUndefined();
    expect(labelProblem({ 'bad key': 'x' })).toMatch(/label key "bad key"/);
  });
});
