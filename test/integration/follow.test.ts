/**
 * Redirect rules follow the workload, on the path users run, in the routed lab: hosts on subnets
 * of their own behind a router, so no gratuitous ARP can move an address and steering is the only
 * way a moved workload stays reachable. Three hosts; the workload starts on a, behind a service
 * VIP that the router spreads over every host (ECMP), with 200 connections through the VIP and
 * 40 connections straight to the workload's own address (which the router keeps delivering to a,
 * the host it was first announced from: after a move, a's data plane forwards them). Every byte
 * is checked by the clients.
 *
 * The tests run in order on one lab and one workload.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Migration__Output } from '../../proto/gen/godwit/v1/Migration.js';
import { agentAsController } from '../support/lab-agent.js';
import { SteeringApi } from '../../controller/steering-client.js';
import type { Endpoint } from '../../lib/endpoint.js';
import { migrateHop, type HopResult } from '../../lab/hop.js';
import { AGENT_PORT, labDown, labUp, startLabWorkload, type Lab } from '../../lab/lab.js';
import { findFreeLabIndex } from '../../lab/topology.js';
import { startTraffic, type TrafficHandle, type TrafficStats } from '../../lab/traffic.js';
import { startWorkload, stopWorkload } from '../../lab/workload.js';
import { drainOutbound, outboundReport, outboundWorkloadArgs, startOutboundServer, type OutboundServerHandle } from '../../lab/outbound.js';
import { addressesOn, lockEntries, processesNamed } from '../support/lab-state.js';

const HOSTS = ['a', 'b', 'c'];
const PORT = 7000;
const VIA_VIP = 200;
const DIRECT = 40;
/** The outbound workload: its own address and port, its control port, its server in the client namespace. */
const OUT_PORT = 7100;
const OUT_CONTROL = 7101;
const OUT_SERVER_PORT = 6380;
const OUTBOUND = 16;

describe('redirect rules follow the workload (routed fabric)', () => {
  let lab: Lab;
  let labIndex = 0;
  let api: SteeringApi;
  let endpoint: Endpoint;
  let vip: string;
  let pid = 0;
  let home = 'a';
  let viaVip: TrafficHandle;
  let direct: TrafficHandle;
  let setUp: Promise<void> | undefined;

  beforeAll(() => {
    setUp = (async () => {
      labIndex = await findFreeLabIndex();
      lab = await labUp({ hosts: HOSTS, fabric: 'routed', index: labIndex });
      api = new SteeringApi(lab.controllerAddress);
      ({ pid, endpoint } = await startLabWorkload(lab, 'a', PORT));
      vip = lab.topology.vip(0);
      const service = { protocol: 'TCP' as const, vip, port: PORT };
      await api.createService({ service });
      const c = await api.updateService({ service, addBackend: { backend: { address: endpoint.address, port: PORT }, weight: 1, host: 'a' }, wait: { wait: true, timeoutMs: 30_000 } });
      expect(c.converged).toBe(true);
      viaVip = startTraffic(lab.topology.client, { address: vip, port: PORT }, { connections: VIA_VIP, seed: 1 });
      direct = startTraffic(lab.topology.client, { address: endpoint.address, port: PORT }, { connections: DIRECT, seed: 2 });
      await Promise.all([viaVip.ready, direct.ready]);
    })();
    return setUp;
  }, 300_000);

  afterAll(async () => {
    await setUp?.catch(() => undefined);
    await viaVip?.stop().catch(() => undefined);
    await direct?.stop().catch(() => undefined);
    api?.close();
    if (lab) await lab.down();
    else if (labIndex) await labDown(labIndex);
  }, 300_000);

  function intact(s: TrafficStats, connections: number, what: string): void {
    expect({ alive: s.alive, closed: s.closed, corrupted: s.corrupted, bytesLost: s.bytesLost, bytesDuplicated: s.bytesDuplicated, errors: s.errors }, what).toEqual({
      alive: connections,
      closed: 0,
      corrupted: 0,
      bytesLost: 0,
      bytesDuplicated: 0,
      errors: [],
    });
  }

  /** The workload runs once, on `home`, its address only there, and no lock is left anywhere. */
  async function expectConsistent(): Promise<void> {
    const running = await processesNamed(lab, 'echo-server');
    expect([...running.values()].flat(), 'the workload runs exactly once').toEqual([pid]);
    expect(running.get(home)).toEqual([pid]);
    for (const h of HOSTS) {
      expect(await lockEntries(lab, h), `no lock left on ${h}`).toEqual([]);
      expect((await addressesOn(lab, h)).includes(endpoint.address), `address on ${h}`).toBe(h === home);
    }
  }

  /** Where the table says the workload's backend runs. */
  async function backendHost(): Promise<string> {
    const s = await api.getService({ protocol: 'TCP', vip, port: PORT });
    return s.backends.find((b) => b.address === endpoint.address)!.host;
  }

  async function hop(to: string): Promise<{ hop: HopResult; m: Migration__Output }> {
    const h = await migrateHop(lab.controller, viaVip, { from: home, to, pid, endpoints: [endpoint] });
    const m = await lab.controller.getMigration(h.migrationId);
    return { hop: h, m };
  }

  it('moves a -> b -> a through the VIP with every connection and byte intact; the rules, the state and the stragglers follow', async () => {
    for (const to of ['b', 'a']) {
      const from = home;
      const { hop: h, m } = await hop(to);
      expect(h.phase, h.error).toBe('DONE');
      // Kept first: a later test starts from where the workload is, whatever fails below.
      pid = h.pid;
      home = to;
      expect(m.timings.map((t) => t.phase)).toEqual(['PREPARE', 'LOCK', 'STEER', 'DUMP', 'TRANSFER', 'RESTORE', 'UNLOCK', 'CLEANUP']);
      // Every ready host acked the generation that placed the workload on the target.
      expect(Number(m.steer?.generation)).toBeGreaterThan(0);
      expect(m.steer?.converged).toBe(true);
      expect(m.steer?.laggingHosts).toEqual([]);
      expect(m.steer?.backendIds.length).toBe(1);
      // Its flows' state went with the image (reverse NAT on the backend's host at least: a's
      // ECMP share of the VIP's flows is DNATed there).
      expect(Number(m.handedOff), 'steering entries handed off').toBeGreaterThan(0);
      // The router still delivers the workload's own address to a: the direct connections'
      // packets reach a, and a's program forwards them (counted on the source while it is one).
      if (from === 'a') expect(Number(m.forwarded), 'packets a forwarded to b').toBeGreaterThan(0);
      expect(h.alive).toBe(VIA_VIP);
      expect(h.bytesLost).toBe(0);
      expect(h.corrupted).toBe(0);
      expect(await backendHost()).toBe(to);
      await expectConsistent();
    }
    intact(await viaVip.stats(), VIA_VIP, 'through the VIP');
    intact(await direct.stats(), DIRECT, 'straight to the workload address');
  });

  it('a workload\'s own outgoing connections move with it: their return traffic is steered, held and delivered, data flowing both ways', async () => {
    let server: OutboundServerHandle | undefined;
    let outPid = 0;
    try {
      server = startOutboundServer(lab.topology.client, { port: OUT_SERVER_PORT });
      await server.ready;
      const w = await startLabWorkload(
        lab,
        'a',
        OUT_PORT,
        2,
        outboundWorkloadArgs({ server: { address: server.address, port: OUT_SERVER_PORT }, connections: OUTBOUND, controlPort: OUT_CONTROL, source: lab.topology.workloadAddress(2) }),
      );
      outPid = w.pid;
      const control = { address: w.endpoint.address, controlPort: OUT_CONTROL };
      // The workload listens once its connections are up; the server may still be accepting.
      let before = await outboundReport(server, control);
      for (const deadline = Date.now() + 15_000; before.open < OUTBOUND && Date.now() < deadline; before = await outboundReport(server, control))
        await new Promise((r) => setTimeout(r, 100));
      expect(before.open).toBe(OUTBOUND);
      let at = 'a';
      for (const to of ['b', 'a']) {
        const h = await migrateHop(lab.controller, undefined, { from: at, to, pid: outPid, endpoints: [w.endpoint] });
        expect(h.phase, h.error).toBe('DONE');
        outPid = h.pid;
        at = to;
        const now = await outboundReport(server, control);
        expect({ open: now.open, resets: now.resets, corrupted: now.corrupted }, `after the move to ${to}`).toEqual({ open: OUTBOUND, resets: 0, corrupted: 0 });
      }
      const mid = await outboundReport(server, control);
      expect(mid.workloadVerifiedBytes, 'echoes keep reaching the workload after the moves').toBeGreaterThan(before.workloadVerifiedBytes);
      const drained = await drainOutbound(server, control, { timeoutMs: 30_000, resume: false });
      expect(drained.drained).toBe(true);
      expect({ bytesLost: drained.bytesLost, resets: drained.resets, corrupted: drained.corrupted, errors: drained.errors }).toEqual({ bytesLost: 0, resets: 0, corrupted: 0, errors: [] });
    } finally {
      if (outPid) await stopWorkload(outPid).catch(() => undefined);
      await server?.stop();
    }
  });

  it('an agent restart on the old host keeps forwarding what the fabric still brings there', async () => {
    const { hop: h } = await hop('b');
    expect(h.phase, h.error).toBe('DONE');
    pid = h.pid;
    home = 'b';
    const a = lab.host('a');
    const agentA = agentAsController(lab, 'a', `${a.address}:${AGENT_PORT}`);
    try {
      await lab.restartAgent('a');
      const before = (await direct.stats()).verifiedBytes;
      // The restarted agent reloads its programs on the pinned maps: a keeps forwarding to b.
      const deadline = Date.now() + 30_000;
      while ((await direct.stats()).verifiedBytes < before + 100_000 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
      expect((await direct.stats()).verifiedBytes).toBeGreaterThan(before + 100_000);
      const state = await agentA.steeringState();
      expect(Number(state.appliedGeneration)).toBeGreaterThan(0);
    } finally {
      agentA.close();
    }
    intact(await direct.stats(), DIRECT, 'straight to the workload address, across the restart');
    intact(await viaVip.stats(), VIA_VIP, 'through the VIP, across the restart');
    await expectConsistent();
  });

  it('a restore that fails puts the rules back on the source, removes what the target imported, and every flow goes on', async () => {
    const target = 'c';
    // Something already listens on the workload's port on c: CRIU cannot bind the restored
    // listening socket there, so the restore fails after the steering moved.
    const squatter = await startWorkload(lab.host(target), '0.0.0.0', PORT);
    try {
      const { hop: h, m } = await hop(target);
      if (m.restoredPid) pid = m.restoredPid;
      expect(h.phase).toBe('FAILED');
      expect(m.failedPhase).toBe('RESTORE');
      expect(Number(m.steer?.generation)).toBeGreaterThan(0);
      expect(Number(m.steer?.revertedGeneration)).toBeGreaterThan(Number(m.steer?.generation));
      pid = m.restoredPid;
      expect(await backendHost()).toBe(home);
      const running = await processesNamed(lab, 'echo-server');
      expect([...running.values()].flat().filter((p) => p !== squatter.pid)).toEqual([pid]);
      for (const x of HOSTS) expect(await lockEntries(lab, x), `no lock left on ${x}`).toEqual([]);
      expect(await addressesOn(lab, target)).not.toContain(endpoint.address);
      expect(h.alive).toBe(VIA_VIP);
      expect(h.bytesLost).toBe(0);
    } finally {
      await stopWorkload(squatter.pid);
    }
    await expectConsistent();
    const a = await viaVip.drain(30_000);
    expect(a.drained, JSON.stringify({ ...a, mismatches: undefined })).toBe(true);
    intact(a, VIA_VIP, 'through the VIP, after the rollback');
    const d = await direct.drain(60_000);
    expect(d.drained, JSON.stringify({ ...d, mismatches: undefined })).toBe(true);
    intact(d, DIRECT, 'straight to the workload address, after the rollback');
  });
});
