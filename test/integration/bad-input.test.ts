/**
 * Bad input at the edges (issue 12): 1,000 malformed requests to every public gRPC method of a
 * running lab - the controller API, the steering API, an agent's API (bench/bad-input.ts, the same
 * run as `npm run bench -- bad-input`). Every one is refused with INVALID_ARGUMENT, NOT_FOUND or
 * FAILED_PRECONDITION; no process crashes; nothing changes on any host; no file appears under a
 * name the requests carried.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fuzzLab, type MethodResult, type Summary } from '../../bench/bad-input.js';
import { Cleanup } from '../../bench/lab-cleanup.js';
import { labUp, type Lab } from '../../lab/lab.js';

const PER_METHOD = 1000;

describe('malformed requests to every public method', () => {
  let lab: Lab;
  let cleanup: Cleanup;
  let results: MethodResult[];
  let summary: Summary;

  beforeAll(async () => {
    lab = await labUp({ hosts: ['a', 'b'] });
    cleanup = new Cleanup(lab);
    ({ results, summary } = await fuzzLab(lab, { perMethod: PER_METHOD, seed: 20261202, concurrency: 16, json: true }, cleanup));
  }, 1_200_000);

  afterAll(async () => {
    await cleanup?.run().catch(() => undefined);
    await lab?.down();
  }, 120_000);

  it('reaches every method of the three APIs with 1,000 requests each', () => {
    const methods = results.map((r) => r.method);
    for (const m of ['Controller.Migrate', 'Controller.WatchMigration', 'Steering.CreateService', 'Agent.Lock', 'Agent.ReceiveImage', 'Agent.RunWorkload', 'Agent.CheckFiles'])
      expect(methods).toContain(m);
    for (const r of results) expect(r.requests).toBe(PER_METHOD);
  });

  it('answers every one with INVALID_ARGUMENT, NOT_FOUND or FAILED_PRECONDITION', () => {
    const wrong = results.filter((r) => r.unexpected > 0).map((r) => `${r.method}: ${JSON.stringify(r.codes)} ${r.examples.join(' | ')}`);
    expect(wrong).toEqual([]);
  });

  it('crashes nothing, changes nothing, and writes no file under a name the requests carried', () => {
    expect(summary.crashed).toEqual([]);
    expect(summary.changed).toEqual([]);
    expect(summary.escapedFiles).toEqual([]);
    expect(summary.clean).toBe(true);
  });
});
