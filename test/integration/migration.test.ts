/**
 * The walking skeleton, end to end with real parts: a lab of network-namespace hosts, a real
 * nats-server, the controller and agents as processes, CRIU, the XDP lock, and a bystander
 * client checking every echoed byte on 200 connections.
 */
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Bus } from '../../lib/bus.js';
import { join } from 'node:path';
import { formatEndpoint, type Endpoint } from '../../lib/endpoint.js';
import { execCommand } from '../../lib/exec.js';
import { isServiceError, REPO_ROOT } from '../../lib/rpc.js';
import { SUBJECTS } from '../../lib/subjects.js';
import { endpointToWire } from '../../lib/wire.js';
import { migrateHop } from '../../lab/hop.js';
import { labUp, startLabWorkload, type Lab } from '../../lab/lab.js';
import { startTraffic, type TrafficHandle } from '../../lab/traffic.js';
import { startWorkload, stopWorkload } from '../../lab/workload.js';
import { addressesOn, lockEntries, processesNamed } from '../support/lab-state.js';

const CONNECTIONS = 200;
const PORT = 7000;

describe('live migration through the controller', () => {
  let lab: Lab;
  let traffic: TrafficHandle;
  let bus: Bus;
  let endpoint: Endpoint;
  let pid = 0;
  let home = 'a';
  const events: { subject: string; phase: string; kind: string; migrationId: string }[] = [];

  beforeAll(async () => {
    lab = await labUp({ hosts: ['a', 'b'] });
    ({ pid, endpoint } = await startLabWorkload(lab, 'a', PORT));
    const vip = endpoint.address;
    bus = await Bus.connect({ servers: lab.natsUrl, name: 'migration-test' });
    bus.subscribe<{ phase: string; kind: string; migrationId: string }>('godwit.events.migration.>', (e, subject) =>
      events.push({ subject, phase: e.phase, kind: e.kind, migrationId: e.migrationId }),
    );
    traffic = startTraffic(lab.topology.client, { address: vip, port: PORT }, { connections: CONNECTIONS });
    await traffic.ready;
  });

  afterAll(async () => {
    await traffic?.stop();
    await bus?.close().catch(() => undefined);
    await lab?.down();
  });

  /** One workload, running once, on `home`; no lock held anywhere; its address only on `home`. */
  async function expectConsistent() {
    const running = await processesNamed(lab, 'echo-server');
    const everywhere = [...running.values()].flat();
    expect(everywhere, 'the workload runs exactly once').toEqual([pid]);
    expect(running.get(home)).toEqual([pid]);
    for (const h of ['a', 'b']) {
      expect(await lockEntries(lab, h), `no lock left on ${h}`).toEqual([]);
      expect((await addressesOn(lab, h)).includes(endpoint.address), `address on ${h}`).toBe(h === home);
    }
  }

  it('moves the workload a -> b -> a with every connection and every byte intact', async () => {
    for (const to of ['b', 'a']) {
      const hop = await migrateHop(lab.controller, traffic, { from: home, to, pid, endpoints: [endpoint] });
      expect(hop.phase, hop.error).toBe('DONE');
      expect(hop.alive).toBe(CONNECTIONS);
      expect(hop.bytesLost).toBe(0);
      expect(hop.bytesDuplicated).toBe(0);
      expect(hop.corrupted).toBe(0);
      // Every connection sent during the freeze: what the locks stopped was delivered, not lost.
      expect(hop.deliveredPackets).toBeGreaterThan(0);
      expect(hop.pid).toBeGreaterThan(1);
      pid = hop.pid;
      home = to;
      await expectConsistent();
      // Automation sees every phase on NATS, in order.
      const phases = events.filter((e) => e.migrationId === hop.migrationId && e.kind === 'SUCCEEDED').map((e) => e.phase);
      expect(phases).toEqual(['PENDING', 'PREPARE', 'LOCK', 'STEER', 'DUMP', 'TRANSFER', 'RESTORE', 'UNLOCK', 'CLEANUP', 'DONE']);
      // The workload's address followed it in the steering table, and every host acked in time.
      const m = await lab.controller.getMigration(hop.migrationId);
      expect(Number(m.steer?.generation)).toBeGreaterThan(0);
      expect(m.steer?.converged).toBe(true);
      expect(events.find((e) => e.migrationId === hop.migrationId && e.phase === 'DUMP')?.subject).toBe(SUBJECTS.migrationEvent(hop.migrationId, 'DUMP'));
      // Each phase of the freeze says where its time went on the hosts, and the pipelined freeze
      // (the transfer carried by the dump's call, the unlock by the restore's) records each phase.
      const stepsOf = (phase: string) => hop.steps.filter((st) => st.phase === phase).map((st) => `${st.host}: ${st.step}`);
      expect(stepsOf('LOCK')).toEqual(expect.arrayContaining([`${home === 'b' ? 'a' : 'b'}: lock entries`, `${home}: lock entries`]));
      expect(stepsOf('DUMP')).toContain(`${home === 'b' ? 'a' : 'b'}: criu dump`);
      expect(stepsOf('TRANSFER')).toEqual(expect.arrayContaining([`${home === 'b' ? 'a' : 'b'}: send image`, `${home}: (concurrent) receive: write files`]));
      expect(stepsOf('RESTORE')).toContain(`${home}: criu restore`);
      expect(stepsOf('UNLOCK')).toContain(`${home}: unlock entries`);
      const carried = m.timings.filter((t) => ['TRANSFER', 'UNLOCK'].includes(String(t.phase)));
      expect(carried.every((t) => t.ok && t.durationMs > 0)).toBe(true);
    }
    const stats = await traffic.stats();
    expect(stats.alive).toBe(CONNECTIONS);
    expect(stats.corrupted).toBe(0);
    expect(stats.bytesLost).toBe(0);
    expect(stats.bytesDuplicated).toBe(0);
    expect(stats.verifiedBytes).toBeGreaterThan(0);
  });

  describe('bad input gets the right status and changes nothing', () => {
    const attempt = async (mutate: (r: ReturnType<typeof request>) => void) => {
      const r = request();
      mutate(r);
      const before = (await lab.controller.listMigrations()).migrations.length;
      const err = await lab.controller.migrate(r).then(
        () => undefined,
        (e: unknown) => e,
      );
      if (!isServiceError(err)) throw new Error(`expected a gRPC error, got ${JSON.stringify(err)}`);
      expect((await lab.controller.listMigrations()).migrations.length, 'no migration recorded').toBe(before);
      await expectConsistent();
      return err;
    };
    const request = () => ({
      sourceHost: home,
      targetHost: home === 'a' ? 'b' : 'a',
      workload: { pid, endpoints: [endpointToWire(endpoint)] },
    });

    it('an unknown host: NOT_FOUND naming the known hosts', async () => {
      const err = await attempt((r) => (r.targetHost = 'nowhere'));
      expect(status[err.code]).toBe('NOT_FOUND');
      expect(err.details).toMatch(/host "nowhere" is not registered.*known hosts: a, b/);
    });

    it('a target equal to the source: INVALID_ARGUMENT', async () => {
      const err = await attempt((r) => (r.targetHost = r.sourceHost));
      expect(status[err.code]).toBe('INVALID_ARGUMENT');
      expect(err.details).toMatch(/must differ/);
    });

    it('a PID that does not exist: NOT_FOUND', async () => {
      const err = await attempt((r) => (r.workload.pid = 4_000_000));
      expect(status[err.code]).toBe('NOT_FOUND');
      expect(err.details).toMatch(/no process with PID 4000000 on host/);
    });

    it('a process that runs on another host: FAILED_PRECONDITION', async () => {
      const elsewhere = home === 'a' ? 'b' : 'a';
      const err = await attempt((r) => {
        r.sourceHost = elsewhere;
        r.targetHost = home;
      });
      expect(status[err.code]).toBe('FAILED_PRECONDITION');
      expect(err.details).toMatch(new RegExp(`process ${pid} .* does not run on host "${elsewhere}"`));
    });

    it('an endpoint address that is not on the source: FAILED_PRECONDITION', async () => {
      const err = await attempt((r) => (r.workload.endpoints = [{ protocol: 'TCP', address: lab.topology.workloadAddress(1), port: PORT }]));
      expect(status[err.code]).toBe('FAILED_PRECONDITION');
      expect(err.details).toMatch(new RegExp(`endpoint address ${lab.topology.workloadAddress(1).replace(/\./g, '\\.')} is not on host`));
    });

    it('the operator CLI prints the status and the fix, and exits 2', async () => {
      const cli = join(REPO_ROOT, 'dist', 'controller', 'cli.js');
      const env = { GODWIT_CONTROLLER: lab.controllerAddress };
      const hosts = await execCommand(process.execPath, [cli, 'hosts'], { env });
      expect(hosts.stdout).toMatch(/^a +ready/m);
      const r = await execCommand(process.execPath, [cli, 'migrate', '--from', home, '--to', 'nowhere', '--pid', String(pid), '--endpoint', formatEndpoint(endpoint)], { env, allowFailure: true });
      expect(r.exitCode).toBe(2);
      expect(r.stderr).toMatch(/^NOT_FOUND: host "nowhere" is not registered/);
      await expectConsistent();
    });

    it('a malformed endpoint: INVALID_ARGUMENT', async () => {
      const err = await attempt((r) => (r.workload.endpoints = [{ protocol: 'TCP', address: '0.0.0.0', port: PORT }]));
      expect(status[err.code]).toBe('INVALID_ARGUMENT');
    });
  });

  it('a restore that fails for real leaves the workload running once on the source, unlocked, FAILED with the cause', async () => {
    const target = home === 'a' ? 'b' : 'a';
    // Something else already listens on the workload's port on the target: CRIU cannot bind
    // the restored listening socket, so restore fails on the target.
    const squatter = await startWorkload(lab.host(target), '0.0.0.0', PORT);
    try {
      const hop = await migrateHop(lab.controller, traffic, { from: home, to: target, pid, endpoints: [endpoint] });
      expect(hop.phase).toBe('FAILED');
      const m = await lab.controller.getMigration(hop.migrationId);
      expect(m.failedPhase).toBe('RESTORE');
      expect(m.error).toMatch(/restore/);
      expect(m.restoredPid).toBeGreaterThan(1);
      pid = m.restoredPid; // brought back on the source from its image
      const running = await processesNamed(lab, 'echo-server');
      expect([...running.values()].flat().filter((p) => p !== squatter.pid)).toEqual([pid]);
      expect(running.get(home)).toContain(pid);
      for (const h of ['a', 'b']) expect(await lockEntries(lab, h), `no lock left on ${h}`).toEqual([]);
      expect(await addressesOn(lab, home)).toContain(endpoint.address);
      expect(await addressesOn(lab, target)).not.toContain(endpoint.address);
      expect(hop.alive).toBe(CONNECTIONS);
      expect(hop.bytesLost).toBe(0);
      expect(hop.corrupted).toBe(0);
    } finally {
      await stopWorkload(squatter.pid);
    }
    await expectConsistent();
    const final = await traffic.drain(15_000);
    expect(final.drained).toBe(true);
    expect(final.alive).toBe(CONNECTIONS);
    expect(final.bytesLost).toBe(0);
    expect(final.bytesDuplicated).toBe(0);
    expect(final.corrupted).toBe(0);
  });
});
