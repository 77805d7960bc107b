/**
 * CancelMigration with real CRIU and the XDP lock: accepted before the pivot, the migration rolls
 * back and the workload runs on its source with every connection and byte intact; at or after
 * the pivot it is refused with FAILED_PRECONDITION saying the workload has already moved.
 */
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Migration__Output } from '../../proto/gen/godwit/v1/Migration.js';
import type { FleetApi } from '../../controller/fleet-client.js';
import { isServiceError } from '../../lib/rpc.js';
import { checkConnections, openWindows, type FleetWorkload } from '../../lab/fleet-workloads.js';
import type { Lab } from '../../lab/lab.js';
import { startFleetLab, stopFleetLab, type FleetLab } from '../support/fleet-lab.js';
import { addressesOn, lockEntries, processesNamed } from '../support/lab-state.js';

const CONNECTIONS = 50;

describe('cancelling a migration', () => {
  let f: FleetLab | undefined;
  let lab: Lab;
  let fleet: FleetApi;
  let ws: FleetWorkload[] = [];

  beforeAll(async () => {
    f = await startFleetLab({ hosts: ['a', 'b'] }, { prefix: 'cx', count: 1, connections: CONNECTIONS });
    ({ lab, fleet, ws } = f);
  });

  afterAll(() => stopFleetLab(f));

  /** Starts a move of the workload to b and cancels it when `when` says so (the cancel's answer or error). */
  async function moveAndCancel(when: (e: { phase: string; kind: string }) => boolean) {
    const m = await lab.controller.migrate({ workloadName: ws[0].name, targetHost: 'b' });
    let cancel: Promise<Migration__Output | unknown> | undefined;
    const ended = await lab.controller.wait(m.id, (e) => {
      if (!cancel && when({ phase: String(e.phase), kind: String(e.kind) })) cancel = fleet.cancelMigration(m.id).catch((err: unknown) => err);
    });
    return { ended, answer: await cancel };
  }

  async function expectOnlyOn(host: string) {
    const running = await processesNamed(lab, 'echo-server');
    expect([...running.values()].flat().length, 'the workload runs exactly once').toBe(1);
    expect(running.get(host)?.length).toBe(1);
    for (const h of ['a', 'b']) {
      expect(await lockEntries(lab, h), `no lock left on ${h}`).toEqual([]);
      expect((await addressesOn(lab, h)).includes(ws[0].endpoint.address), `address on ${h}`).toBe(h === host);
    }
    const w = (await lab.controller.listWorkloads()).workloads.find((x) => x.name === ws[0].name);
    expect(w?.host).toBe(host);
  }

  it('before the pivot: rolls back, the workload runs on the source, connections and bytes intact', async () => {
    for (const when of [(e: { kind: string }) => e.kind === 'SNAPSHOT', (e: { phase: string; kind: string }) => e.phase === 'LOCK' && e.kind === 'SUCCEEDED']) {
      const before = await openWindows(ws);
      const { ended, answer } = await moveAndCancel(when);
      expect(isServiceError(answer), String((answer as Error)?.message)).toBe(false);
      expect(ended.phase).toBe('FAILED');
      expect(ended.cancelled).toBe(true);
      expect(ended.error).toMatch(/cancelled on request/);
      expect(['PREPARE', 'LOCK', 'STEER', 'DUMP', 'TRANSFER', 'RESTORE']).toContain(ended.failedPhase);
      expect(ended.timings.map((t) => t.phase)).toContain('ROLLBACK');
      expect(ended.timings.find((t) => t.phase === 'ROLLBACK')?.ok).toBe(true);
      const [c] = await checkConnections(ws, before);
      expect(c.alive).toBe(CONNECTIONS);
      expect(c.bytesLost).toBe(0);
      expect(c.corrupted).toBe(0);
      await expectOnlyOn('a');
    }
  });

  it('at or after the pivot: FAILED_PRECONDITION, it has already moved; the migration finishes', async () => {
    const before = await openWindows(ws);
    const { ended, answer } = await moveAndCancel((e) => e.phase === 'RESTORE' && e.kind === 'STARTED');
    expect(isServiceError(answer)).toBe(true);
    if (isServiceError(answer)) {
      expect(answer.code).toBe(status.FAILED_PRECONDITION);
      expect(answer.details).toMatch(/already moved to host "b"/);
    }
    expect(ended.phase, ended.error).toBe('DONE');
    expect(ended.cancelled).toBe(false);
    const [c] = await checkConnections(ws, before);
    expect(c.alive).toBe(CONNECTIONS);
    expect(c.bytesLost).toBe(0);
    await expectOnlyOn('b');
  });
});
