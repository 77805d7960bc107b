/**
 * CRIU's own network locks as godwit lock modes, end to end with real parts: a migration under
 * IPTABLES and one under NFTABLES (CRIU locks each connection at dump, the target installs the
 * same lock before restore, the source removes what the dump left), and a real restore failure
 * under each, rolled back. Every connection and every byte must survive, the workload must run
 * exactly once, and no rule, table or lock entry may be left on either host. With more connections
 * than CRIU's nftables lock survives: the controller refuses the request up front and changes
 * nothing, unless the request accepts the risk (then CRIU's real failure is checked).
 */
import { status } from '@grpc/grpc-js';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseEndpoint, type Endpoint } from '../../lib/endpoint.js';
import { execCommand } from '../../lib/exec.js';
import { isServiceError, REPO_ROOT } from '../../lib/rpc.js';
import { endpointToWire } from '../../lib/wire.js';
import { migrateHop, type HopLockMode } from '../../lab/hop.js';
import { labUp, startLabWorkload, type Lab } from '../../lab/lab.js';
import { startTraffic, type TrafficHandle } from '../../lab/traffic.js';
import { startWorkload, stopWorkload } from '../../lab/workload.js';
import { addressesOn, criuLockOn, lockEntries, processesNamed } from '../support/lab-state.js';

const CONNECTIONS = 20;
const PORT = 7000;

describe('lock modes IPTABLES and NFTABLES (CRIU\'s own lock)', () => {
  let lab: Lab;
  let traffic: TrafficHandle;
  let endpoint: Endpoint;
  let pid = 0;
  let home = 'a';

  beforeAll(async () => {
    lab = await labUp({ hosts: ['a', 'b'] });
    ({ pid, endpoint } = await startLabWorkload(lab, 'a', PORT));
    const vip = endpoint.address;
    traffic = startTraffic(lab.topology.client, { address: vip, port: PORT }, { connections: CONNECTIONS });
    await traffic.ready;
  });

  afterAll(async () => {
    await traffic?.stop();
    await lab?.down();
  });

  /** The workload once, on `home` (besides `others`); its address only there; no lock of any kind anywhere. */
  async function expectConsistent(others: number[] = []) {
    const running = await processesNamed(lab, 'echo-server');
    expect([...running.values()].flat().filter((p) => !others.includes(p)), 'the workload runs exactly once').toEqual([pid]);
    expect(running.get(home)).toContain(pid);
    for (const h of ['a', 'b']) {
      expect(await criuLockOn(lab, h), `no CRIU rule or table left on ${h}`).toEqual({ iptablesRules: 0, nftTables: [] });
      expect(await lockEntries(lab, h), `no XDP lock entry on ${h}`).toEqual([]);
      expect((await addressesOn(lab, h)).includes(endpoint.address), `address on ${h}`).toBe(h === home);
    }
  }

  const other = () => (home === 'a' ? 'b' : 'a');

  for (const mode of ['IPTABLES', 'NFTABLES'] as HopLockMode[]) {
    it(`moves the workload under ${mode} with every connection and byte intact, and leaves no rule behind`, async () => {
      const to = other();
      const hop = await migrateHop(lab.controller, traffic, { from: home, to, pid, endpoints: [endpoint], lockMode: mode });
      expect(hop.phase, hop.error).toBe('DONE');
      const m = await lab.controller.getMigration(hop.migrationId);
      expect(m.request?.lockMode).toBe(mode);
      expect(m.warnings, 'CRIU removed all of the lock the target installed').toEqual([]);
      expect(hop.alive).toBe(CONNECTIONS);
      expect(hop.bytesLost).toBe(0);
      expect(hop.bytesDuplicated).toBe(0);
      expect(hop.corrupted).toBe(0);
      pid = hop.pid;
      home = to;
      await expectConsistent();
    });
  }

  for (const mode of ['IPTABLES', 'NFTABLES'] as HopLockMode[]) {
    it(`a restore that fails under ${mode} rolls back: workload once on the source, connections intact, no rule left`, async () => {
      const target = other();
      // Something already listens on the workload's port on the target: CRIU cannot bind the
      // restored listening socket there. The target had installed CRIU's lock by then, and the
      // source's restore from the image needs the lock its dump left.
      const squatter = await startWorkload(lab.host(target), '0.0.0.0', PORT);
      try {
        const hop = await migrateHop(lab.controller, traffic, { from: home, to: target, pid, endpoints: [endpoint], lockMode: mode });
        expect(hop.phase).toBe('FAILED');
        const m = await lab.controller.getMigration(hop.migrationId);
        expect(m.failedPhase).toBe('RESTORE');
        expect(m.error).toMatch(/restore/);
        expect(m.restoredPid).toBeGreaterThan(1);
        pid = m.restoredPid;
        await expectConsistent([squatter.pid]);
        expect(hop.alive).toBe(CONNECTIONS);
        expect(hop.bytesLost).toBe(0);
        expect(hop.bytesDuplicated).toBe(0);
        expect(hop.corrupted).toBe(0);
      } finally {
        await stopWorkload(squatter.pid);
      }
      await expectConsistent();
    });
  }

  it('every byte of every connection came back', async () => {
    const final = await traffic.drain(15_000);
    expect(final.drained).toBe(true);
    expect(final.alive).toBe(CONNECTIONS);
    expect(final.bytesLost).toBe(0);
    expect(final.bytesDuplicated).toBe(0);
    expect(final.corrupted).toBe(0);
  });
});

describe('NFTABLES with many connections (CRIU 4.2 aborts above about 500: FD_SETSIZE)', () => {
  const MANY = 700;
  let lab: Lab;
  let traffic: TrafficHandle | undefined;
  let pid = 0;
  let vip = '';

  beforeAll(async () => {
    lab = await labUp({ hosts: ['a', 'b'] });
    let moved: Endpoint;
    ({ pid, endpoint: moved } = await startLabWorkload(lab, 'a', PORT));
    vip = moved.address;
    traffic = startTraffic(lab.topology.client, { address: vip, port: PORT }, { connections: MANY });
    await traffic.ready;
  });

  afterAll(async () => {
    await traffic?.stop();
    await lab?.down();
  });

  it('is refused up front with FAILED_PRECONDITION and the fix, and changes nothing', async () => {
    const before = (await lab.controller.listMigrations()).migrations.length;
    const err = await lab.controller
      .migrate({ sourceHost: 'a', targetHost: 'b', workload: { pid, endpoints: [endpointToWire(parseEndpoint(`tcp://${vip}:${PORT}`))] }, lockMode: 'NFTABLES' })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    if (!isServiceError(err)) throw new Error(`expected a gRPC error, got ${JSON.stringify(err)}`);
    expect(status[err.code]).toBe('FAILED_PRECONDITION');
    expect(err.details).toMatch(new RegExp(`lock_mode NFTABLES .* ${MANY} TCP connections \\(refused from 512\\)`));
    expect(err.details).toMatch(/use lock_mode EBPF, or set allow_unsafe_lock to accept the risk$/);
    expect((await lab.controller.listMigrations()).migrations.length, 'no migration recorded').toBe(before);
    const running = await processesNamed(lab, 'echo-server');
    expect([...running.values()].flat(), 'the workload runs once, on a').toEqual([pid]);
    expect(running.get('a')).toEqual([pid]);
    expect(await addressesOn(lab, 'a')).toContain(vip);
    expect(await addressesOn(lab, 'b')).not.toContain(vip);
    for (const h of ['a', 'b']) {
      expect(await criuLockOn(lab, h), `no CRIU rule or table on ${h}`).toEqual({ iptablesRules: 0, nftTables: [] });
      expect(await lockEntries(lab, h), `no XDP lock entry on ${h}`).toEqual([]);
    }
    const s = await traffic!.stats();
    expect(s.alive, 'every connection still open').toBe(MANY);
    expect(s.corrupted).toBe(0);
  });

  it('the operator CLI prints the refusal and its fix, and exits 2', async () => {
    const cli = join(REPO_ROOT, 'dist', 'controller', 'cli.js');
    const r = await execCommand(process.execPath, [cli, 'migrate', '--from', 'a', '--to', 'b', '--pid', String(pid), '--endpoint', `tcp://${vip}:${PORT}`, '--lock-mode', 'nftables'], {
      env: { GODWIT_CONTROLLER: lab.controllerAddress },
      allowFailure: true,
    });
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/^FAILED_PRECONDITION: lock_mode NFTABLES .*use lock_mode EBPF, or set allow_unsafe_lock to accept the risk/m);
    expect((await processesNamed(lab, 'echo-server')).get('a')).toEqual([pid]);
  });

  it('with allow_unsafe_lock: either moves every connection, or ends FAILED with the cause and the workload running once on the source, unlocked', async () => {
    const hop = await migrateHop(lab.controller, traffic, {
      from: 'a',
      to: 'b',
      pid,
      endpoints: [parseEndpoint(`tcp://${vip}:${PORT}`)],
      lockMode: 'NFTABLES',
      allowUnsafeLock: true,
    });
    const running = await processesNamed(lab, 'echo-server');
    if (hop.phase === 'DONE') {
      expect(hop.alive).toBe(MANY);
      expect(hop.bytesLost).toBe(0);
      expect([...running.values()].flat()).toEqual([hop.pid]);
    } else {
      const m = await lab.controller.getMigration(hop.migrationId);
      expect(m.phase).toBe('FAILED');
      expect(m.failedPhase).toBe('DUMP');
      expect(m.error).toMatch(/criu dump failed/);
      // The dump never finished: the original process still runs on the source, and only there.
      expect([...running.values()].flat()).toEqual([pid]);
      expect(running.get('a')).toEqual([pid]);
      expect(await addressesOn(lab, 'a')).toContain(vip);
      expect(await addressesOn(lab, 'b')).not.toContain(vip);
    }
    for (const h of ['a', 'b']) {
      expect(await criuLockOn(lab, h), `no CRIU rule or table left on ${h}`).toEqual({ iptablesRules: 0, nftTables: [] });
      expect(await lockEntries(lab, h), `no XDP lock entry on ${h}`).toEqual([]);
    }
    expect(hop.corrupted).toBe(0);
  });
});
