/**
 * CRIU's own network locks as godwit lock modes, end to end with real parts: a migration under
 * IPTABLES and one under NFTABLES (CRIU locks each connection at dump, the target installs the
 * same lock before restore, the source removes what the dump left), and a real restore failure
 * under each, rolled back. Every connection and every byte must survive, the workload must run
 * exactly once, and no rule, table or lock entry may be left on either host.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseEndpoint, type Endpoint } from '../../lib/endpoint.js';
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

  beforeAll(async () => {
    lab = await labUp({ hosts: ['a', 'b'] });
  });

  afterAll(async () => {
    await traffic?.stop();
    await lab?.down();
  });

  it('either moves every connection, or ends FAILED with the cause and the workload running once on the source, unlocked', async () => {
    const { pid, endpoint: moved } = await startLabWorkload(lab, 'a', PORT);
    const vip = moved.address;
    traffic = startTraffic(lab.topology.client, { address: vip, port: PORT }, { connections: MANY });
    await traffic.ready;
    const hop = await migrateHop(lab.controller, traffic, { from: 'a', to: 'b', pid, endpoints: [parseEndpoint(`tcp://${vip}:${PORT}`)], lockMode: 'NFTABLES' });
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
