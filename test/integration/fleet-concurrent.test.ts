/**
 * Ten workloads migrating at once between two lab hosts, with real CRIU and the XDP lock, each
 * with a bystander client checking every echoed byte; and a second migration of a workload that
 * is moving refused (by name and by host+PID) with FAILED_PRECONDITION naming the running one.
 */
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FleetApi } from '../../controller/fleet-client.js';
import { isServiceError } from '../../lib/rpc.js';
import { endpointToWire } from '../../lib/wire.js';
import { checkConnections, openWindows, type FleetWorkload } from '../../lab/fleet-workloads.js';
import type { Lab } from '../../lab/lab.js';
import { startFleetLab, stopFleetLab, type FleetLab } from '../support/fleet-lab.js';
import { expectConnectionsIntact } from '../support/intact.js';
import { lockEntries, processesNamed } from '../support/lab-state.js';

const WORKLOADS = 10;
const CONNECTIONS = 20;

describe('concurrent migrations', () => {
  let f: FleetLab | undefined;
  let lab: Lab;
  let fleet: FleetApi;
  let ws: FleetWorkload[] = [];

  beforeAll(async () => {
    f = await startFleetLab({ hosts: ['a', 'b'] }, { prefix: 'cw', count: WORKLOADS, connections: CONNECTIONS });
    ({ lab, fleet, ws } = f);
  });

  afterAll(() => stopFleetLab(f));

  it(`moves ${WORKLOADS} workloads at once with every connection and byte intact; a second move of one that is moving is refused`, async () => {
    const before = await openWindows(ws);
    const accepted = await Promise.all(ws.map((w) => lab.controller.migrate({ workloadName: w.name, targetHost: 'b' })));
    expect(new Set(accepted.map((m) => m.id)).size).toBe(WORKLOADS);

    // The same workload again, by name and by host+PID, while it moves.
    const refusal = async (req: Parameters<typeof lab.controller.migrate>[0]) => {
      try {
        await lab.controller.migrate(req);
        return undefined;
      } catch (e) {
        return e;
      }
    };
    const byName = await refusal({ workloadName: ws[0].name, targetHost: 'b' });
    const byPid = await refusal({ sourceHost: 'a', targetHost: 'b', workload: { pid: ws[1].pid, endpoints: [endpointToWire(ws[1].endpoint)] } });
    for (const [err, m] of [[byName, accepted[0]], [byPid, accepted[1]]] as const) {
      expect(isServiceError(err), String(err)).toBe(true);
      if (!isServiceError(err)) continue;
      expect(err.code).toBe(status.FAILED_PRECONDITION);
      expect(err.details).toContain(m.id);
    }

    const ended = await Promise.all(accepted.map((m) => lab.controller.wait(m.id)));
    for (const m of ended) expect(m.phase, `${m.request?.workloadName}: ${m.error}`).toBe('DONE');
    expectConnectionsIntact(await checkConnections(ws, before), CONNECTIONS);
    // Every workload runs once, on b; the registry says so; no lock is left anywhere.
    const running = await processesNamed(lab, 'echo-server');
    expect(running.get('a')).toEqual([]);
    expect(running.get('b')?.length).toBe(WORKLOADS);
    const listed = (await lab.controller.listWorkloads()).workloads;
    expect(listed.filter((w) => w.host === 'b').map((w) => w.name).sort()).toEqual(ws.map((w) => w.name).sort());
    for (const h of ['a', 'b']) expect(await lockEntries(lab, h), `locks on ${h}`).toEqual([]);
    const freezes = ended.map((m) => Math.round(m.freezeMs));
    console.log(`[fleet-concurrent] ${WORKLOADS} at once, freeze ms: ${freezes.join(' ')} (loaded machine)`);
  });
});
