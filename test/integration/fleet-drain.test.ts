/**
 * Drain with real parts: a 3-host lab, 5 registered workloads on host a, each with a bystander
 * client checking every echoed byte; `godwit drain a --wait` moves them all to b and c by the
 * placement rule (least loaded, anti-affinity labels kept), the host stays cordoned (in KV), and
 * a migration to it is refused until it is uncordoned.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DrainRecord__Output } from '../../proto/gen/godwit/v1/DrainRecord.js';
import type { ListHostsResponse__Output } from '../../proto/gen/godwit/v1/ListHostsResponse.js';
import { CordonStore, type CordonRecord } from '../../controller/cordon.js';
import { Bus } from '../../lib/bus.js';
import { CORDONS_BUCKET } from '../../lib/subjects.js';
import { checkConnections, openWindows, type FleetWorkload } from '../../lab/fleet-workloads.js';
import type { Lab } from '../../lab/lab.js';
import { startFleetLab, stopFleetLab, type FleetLab } from '../support/fleet-lab.js';
import { expectConnectionsIntact } from '../support/intact.js';
import { lockEntries, processesNamed } from '../support/lab-state.js';
import { godwitCli } from '../support/godwit-cli.js';

const WORKLOADS = 5;
const CONNECTIONS = 20;

describe('drain', () => {
  let f: FleetLab | undefined;
  let lab: Lab;
  let bus: Bus;
  let ws: FleetWorkload[] = [];
  const drainEvents: { state: string; moved: number }[] = [];

  beforeAll(async () => {
    // dw0 is a database; dw1 must never share a host with one.
    f = await startFleetLab(
      { hosts: ['a', 'b', 'c'] },
      { prefix: 'dw', count: WORKLOADS, connections: CONNECTIONS, labels: (i): Record<string, string> => (i === 0 ? { db: '' } : i === 1 ? { avoid: 'db' } : { tier: 'web' }) },
    );
    ({ lab, ws } = f);
    bus = await Bus.connect({ servers: lab.natsUrl, name: 'fleet-drain-test' });
    bus.subscribe<{ state: string; moved: number }>('godwit.events.drain.>', (d) => drainEvents.push({ state: d.state, moved: d.moved }));
  });

  afterAll(async () => {
    await bus?.close().catch(() => undefined);
    await stopFleetLab(f);
  });

  it('moves every workload off the host with connections and bytes intact, and leaves it cordoned', async () => {
    const before = await openWindows(ws);
    const run = await godwitCli(lab, ['drain', 'a', '--wait', '--json']);
    const d = JSON.parse(run.stdout) as DrainRecord__Output;
    expect(d.state, run.stderr).toBe('DONE');
    expect(d.moved).toBe(WORKLOADS);
    expect(d.failed).toBe(0);
    const target = new Map(d.workloads.map((w) => [w.name, w.targetHost]));
    for (const w of d.workloads) {
      expect(w.state, `${w.name}: ${w.error}`).toBe('MOVED');
      expect(['b', 'c']).toContain(w.targetHost);
      expect(w.migrationId).toMatch(/^m-/);
    }
    // Anti-affinity kept; the rest spread by load (5 over 2 hosts: 3 and 2).
    expect(target.get('dw1')).not.toBe(target.get('dw0'));
    const perHost = [...target.values()].reduce((m, h) => m.set(h, (m.get(h) ?? 0) + 1), new Map<string, number>());
    expect([...perHost.values()].sort()).toEqual([2, 3]);
    // Events on NATS, one per change, ending DONE.
    expect(drainEvents.at(-1)).toEqual({ state: 'DONE', moved: WORKLOADS });

    expectConnectionsIntact(await checkConnections(ws, before), CONNECTIONS);
    const running = await processesNamed(lab, 'echo-server');
    expect(running.get('a')).toEqual([]);
    expect((running.get('b')?.length ?? 0) + (running.get('c')?.length ?? 0)).toBe(WORKLOADS);
    for (const h of ['a', 'b', 'c']) expect(await lockEntries(lab, h), `locks on ${h}`).toEqual([]);

    // Cordoned, as ListHosts says and as KV keeps it for the next controller.
    const hosts = JSON.parse((await godwitCli(lab, ['hosts', '--json'])).stdout) as ListHostsResponse__Output;
    expect(hosts.hosts.find((h) => h.name === 'a')).toMatchObject({ cordoned: true, workloads: 0, cordonReason: `drained by ${d.id}` });
    const kept = new CordonStore(await bus.kv<CordonRecord>(CORDONS_BUCKET));
    await kept.load();
    expect(kept.isCordoned('a')).toBe(true);
    console.log(`[fleet-drain] ${WORKLOADS} workloads drained in ${Math.round(d.updatedAtMs - d.createdAtMs)} ms; freeze ms: ${d.workloads.map((w) => Math.round(w.freezeMs)).join(' ')} (loaded machine)`);
  });

  it('refuses a migration to the cordoned host until it is uncordoned; a second drain of it finds nothing to move', async () => {
    const refused = await godwitCli(lab, ['migrate', '--workload', 'dw2', '--to', 'a'], { allowFailure: true });
    expect(refused.exitCode).toBe(2);
    expect(refused.stderr).toMatch(/^FAILED_PRECONDITION: host "a" is cordoned/);
    const again = JSON.parse((await godwitCli(lab, ['drain', 'a', '--wait', '--json'])).stdout) as DrainRecord__Output;
    expect(again).toMatchObject({ state: 'DONE', moved: 0, failed: 0, workloads: [] });
    // The registry through the CLI: labels kept, where each runs now; a process that is not there is NOT_FOUND.
    const listed = JSON.parse((await godwitCli(lab, ['workload', 'list', '--json'])).stdout) as { workloads: { name: string; host: string; labels: Record<string, string>; registered: boolean }[] };
    expect(listed.workloads.find((w) => w.name === 'dw1')).toMatchObject({ labels: { avoid: 'db' }, registered: true });
    expect(listed.workloads.every((w) => w.host !== 'a')).toBe(true);
    const missing = await godwitCli(lab, ['workload', 'register', '--host', 'b', '--name', 'ghost', '--pid', '999999', '--endpoint', 'tcp://198.18.250.1:7000'], { allowFailure: true });
    expect(missing.exitCode).toBe(2);
    expect(missing.stderr).toMatch(/^NOT_FOUND: /);
    await godwitCli(lab, ['uncordon', 'a']);
    const hosts = (await lab.controller.listHosts()).hosts;
    expect(hosts.find((h) => h.name === 'a')?.cordoned).toBe(false);
  });
});
