/**
 * A drain outlives its controller: the controller is killed (SIGKILL, the real process) while a
 * drain moves workloads one at a time, and started again. The new leader resumes the migration
 * that was running (forward, or rolled back when it stopped before the pivot), follows it, and
 * moves the workloads still waiting: the drain ends DONE with every workload moved, each running
 * exactly once, every connection alive and every byte checked, no lock left.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DrainRecord__Output } from '../../proto/gen/godwit/v1/DrainRecord.js';
import type { FleetApi } from '../../controller/fleet-client.js';
import { checkConnections, openWindows, type FleetWorkload } from '../../lab/fleet-workloads.js';
import type { Lab } from '../../lab/lab.js';
import { startFleetLab, stopFleetLab, type FleetLab } from '../support/fleet-lab.js';
import { expectConnectionsIntact } from '../support/intact.js';
import { lockEntries, processesNamed } from '../support/lab-state.js';

const WORKLOADS = 3;
const CONNECTIONS = 20;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('a drain whose controller dies', () => {
  let f: FleetLab | undefined;
  let lab: Lab;
  let fleet: FleetApi;
  let ws: FleetWorkload[] = [];

  beforeAll(async () => {
    f = await startFleetLab({ hosts: ['a', 'b'], controllerFlags: ['--lease-ms', '3000'] }, { prefix: 'tw', count: WORKLOADS, connections: CONNECTIONS });
    ({ lab, fleet, ws } = f);
  }, 300_000);

  afterAll(() => stopFleetLab(f));

  it('is driven on by the restarted controller to DONE, every workload moved exactly once, every byte there', async () => {
    const before = await openWindows(ws);
    const started = await fleet.drain({ host: 'a', maxInFlight: 1 });
    // Killed while the first workload moves: the others wait their turn.
    const deadline = Date.now() + 120_000;
    let seen: DrainRecord__Output = started;
    while (!seen.workloads.some((w) => w.state === 'MOVING' && w.migrationId) && Date.now() < deadline) {
      await sleep(20);
      seen = await fleet.getDrain(started.id);
    }
    expect(seen.workloads.filter((w) => w.state === 'MOVING')).toHaveLength(1);
    await lab.crash('controller');
    await lab.restart('controller');

    let d: DrainRecord__Output = seen;
    const end = Date.now() + 300_000;
    while (d.state === 'RUNNING' && Date.now() < end) {
      await sleep(500);
      d = await fleet.getDrain(started.id).catch(() => d);
    }
    expect(d.state, JSON.stringify(d)).toBe('DONE');
    expect(d.moved).toBe(WORKLOADS);
    for (const w of d.workloads) expect(w.state, `${w.name}: ${w.error}`).toBe('MOVED');

    expectConnectionsIntact(await checkConnections(ws, before), CONNECTIONS);
    const running = await processesNamed(lab, 'echo-server');
    expect(running.get('a')).toEqual([]);
    expect(running.get('b')).toHaveLength(WORKLOADS);
    for (const h of ['a', 'b']) expect(await lockEntries(lab, h), `locks on ${h}`).toEqual([]);
  }, 600_000);
});
