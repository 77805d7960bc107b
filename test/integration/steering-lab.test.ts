/**
 * Packet steering on the path users run, with real traffic: the Steering gRPC API on the
 * controller -> the rule table in NATS KV -> every agent -> its kernel's steering maps, in one
 * routed lab (hosts a and b on subnets of their own behind a router that spreads the VIP block
 * over both by ECMP, and a client behind the same router). Echo backends run on both hosts; the
 * traffic checker (lab/traffic.ts) connects to the VIP and verifies every echoed byte, so a
 * working connection is itself proof that the client's peer is the VIP.
 *
 * The tests run in order on one lab and one service; each starts traffic of its own and drains
 * it at the end (every live connection got back all it sent).
 */
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Service__Output } from '../../proto/gen/godwit/v1/Service.js';
import type { ServiceKey } from '../../proto/gen/godwit/v1/ServiceKey.js';
import type { SteeringChange__Output } from '../../proto/gen/godwit/v1/SteeringChange.js';
import { agentAsController } from '../support/lab-agent.js';
import { SteeringApi } from '../../controller/steering-client.js';
import { execCommand } from '../../lib/exec.js';
import { isServiceError } from '../../lib/rpc.js';
import { labDown, labUp, startLabWorkload, type Lab } from '../../lab/lab.js';
import { findFreeLabIndex, inNetns, type LabHost } from '../../lab/topology.js';
import { startTraffic, type TrafficHandle, type TrafficStats } from '../../lab/traffic.js';
import { startWorkload, stopWorkload } from '../../lab/workload.js';

const HOSTS = ['a', 'b'] as const;
type HostName = (typeof HOSTS)[number];
const VIP_PORT = 80;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** An echo backend: where it runs and the workload endpoint it listens on. */
interface Backend {
  name: string;
  host: HostName;
  address: string;
  port: number;
}

describe('steering in the routed lab: API -> KV -> every agent -> kernel, under real traffic', () => {
  let lab: Lab;
  let labIndex = 0;
  let api: SteeringApi;
  let web: ServiceKey;
  let vip: string;
  const traffic: TrafficHandle[] = [];
  const workloads: number[] = [];
  const backends: Record<'a1' | 'b1' | 'b2', Backend> = {} as never;

  /** The whole set-up, kept so that afterAll can wait for one that a hook timeout cut short. */
  let setUp: Promise<void> | undefined;

  beforeAll(() => {
    setUp = (async () => {
      // The index is chosen here, not by labUp, so that afterAll can remove a lab whose start
      // failed half-way.
      labIndex = await findFreeLabIndex();
      lab = await labUp({ hosts: [...HOSTS], fabric: 'routed', index: labIndex });
      api = new SteeringApi(lab.controllerAddress);
      vip = lab.topology.vip(0);
      web = { protocol: 'TCP', vip, port: VIP_PORT };
      // Workload addresses owned by their hosts (on eth0, routed to them by the router).
      const a1 = await startLabWorkload(lab, 'a', 7001, 0);
      workloads.push(a1.pid);
      const b1 = await startLabWorkload(lab, 'b', 7001, 1);
      workloads.push(b1.pid);
      // The third backend shares b1's address, on another port.
      const b2 = await startWorkload(lab.host('b'), b1.endpoint.address, 7002);
      workloads.push(b2.pid);
      backends.a1 = { name: 'a1', host: 'a', address: a1.endpoint.address, port: 7001 };
      backends.b1 = { name: 'b1', host: 'b', address: b1.endpoint.address, port: 7001 };
      backends.b2 = { name: 'b2', host: 'b', address: b1.endpoint.address, port: 7002 };
    })();
    return setUp;
  }, 300_000);

  afterAll(async () => {
    // A set-up that timed out goes on in the background: let it finish (or fail) first.
    await setUp?.catch(() => undefined);
    for (const t of traffic) await t.stop().catch(() => undefined);
    for (const pid of workloads) await stopWorkload(pid).catch(() => undefined);
    api?.close();
    if (lab) await lab.down();
    else if (labIndex) await labDown(labIndex);
  }, 60_000);

  // ---- helpers -------------------------------------------------------------------------------

  function run(host: Pick<LabHost, 'netnsPath'>, cmd: string, args: string[]) {
    const [file, a] = inNetns(host, cmd, args);
    return execCommand(file, a);
  }

  /** Established TCP connections in a namespace as [local, peer] pairs, filtered by an ss expression. */
  async function established(host: Pick<LabHost, 'netnsPath'>, filter: string[]): Promise<[string, string][]> {
    const r = await run(host, 'ss', ['-Htn', 'state', 'established', ...filter]);
    return r.stdout
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter((f) => f.length >= 4)
      .map((f) => [f[f.length - 2], f[f.length - 1]]);
  }

  /**
   * Client endpoints ("addr:port") of the connections a backend's echo server holds that the
   * client holds too (DNAT leaves the client's end as it is): a connection the client has closed
   * or lost may linger at the server, and is not counted.
   */
  async function acceptedBy(b: Backend): Promise<Set<string>> {
    const conns = await established(lab.host(b.host), ['src', `${b.address}:${b.port}`]);
    const client = await clientEndsToVip();
    return new Set(conns.map(([, peer]) => peer).filter((p) => client.has(p)));
  }

  /** The client's own ends ("addr:port") of its connections to the VIP. */
  async function clientEndsToVip(): Promise<Set<string>> {
    const conns = await established(lab.topology.client, ['dst', `${vip}:${VIP_PORT}`]);
    return new Set(conns.map(([local]) => local));
  }

  function begin(connections: number, seed: number): TrafficHandle {
    const t = startTraffic(lab.topology.client, { address: vip, port: VIP_PORT }, { connections, seed });
    traffic.push(t);
    return t;
  }

  /** Polls until `done` holds; the deadline only bounds a hang, nothing asserts on time. */
  async function until<T>(what: string, read: () => Promise<T>, done: (v: T) => boolean, timeoutMs = 30_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await read();
      if (done(v)) return v;
      if (Date.now() > deadline) throw new Error(`${what}: still ${JSON.stringify(v)} after ${timeoutMs} ms`);
      await sleep(100);
    }
  }

  /** Every connection has had bytes echoed past `bytesEach` (traffic is flowing). */
  const flowing = (t: TrafficHandle, atLeast: number) => until('traffic flowing', () => t.stats(), (s) => s.verifiedBytes >= atLeast);

  function expectIntact(s: TrafficStats, what: string): void {
    expect({ closed: s.closed, corrupted: s.corrupted, bytesLost: s.bytesLost, errors: s.errors }, what).toEqual({ closed: 0, corrupted: 0, bytesLost: 0, errors: [] });
  }

  /** Stops sending and checks that every live connection got back everything it sent. */
  async function drainIntact(t: TrafficHandle, what: string, connections: number): Promise<void> {
    const r = await t.drain(30_000);
    expect(r.drained, `${what}: every live connection got its bytes back`).toBe(true);
    expect(r.alive, what).toBe(connections);
    expectIntact(r, what);
    await t.stop();
  }

  const service = async (): Promise<Service__Output> => {
    const s = (await api.listServices()).services.find((x) => x.vip === vip && x.port === VIP_PORT);
    if (!s) throw new Error(`service ${vip}:${VIP_PORT} is not listed`);
    return s;
  };
  const backendOf = (s: Service__Output, b: Backend) => s.backends.find((x) => x.address === b.address && x.port === b.port);
  const generation = async () => Number((await api.listServices()).generation);

  async function hostGenerations(): Promise<Record<string, number>> {
    const r = await lab.controller.listHosts();
    return Object.fromEntries(r.hosts.filter((h) => (HOSTS as readonly string[]).includes(h.name)).map((h) => [h.name, Number(h.steeringGeneration)]));
  }

  /** Like hostGenerations, -1 for a host that is not ready. */
  async function readyGenerations(): Promise<Record<string, number>> {
    const r = await lab.controller.listHosts();
    return Object.fromEntries(r.hosts.filter((h) => (HOSTS as readonly string[]).includes(h.name)).map((h) => [h.name, h.ready && h.steering ? Number(h.steeringGeneration) : -1]));
  }

  /** Each host's applied generation as its own agent reads it from its kernel maps. */
  async function kernelGeneration(host: HostName): Promise<number> {
    const agent = agentAsController(lab, host, lab.agentAddress(host));
    try {
      return Number((await agent.steeringState()).appliedGeneration);
    } finally {
      agent.close();
    }
  }
  async function kernelGenerations(): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    for (const h of HOSTS) out[h] = await kernelGeneration(h);
    return out;
  }
  const everywhere = (g: number) => Object.fromEntries(HOSTS.map((h) => [h, g]));

  /** A change accepted, and acked by every host before it returned. */
  function expectConverged(c: SteeringChange__Output): number {
    expect({ waited: c.waited, converged: c.converged, laggingHosts: c.laggingHosts }).toEqual({ waited: true, converged: true, laggingHosts: [] });
    return Number(c.generation);
  }

  const wait = { wait: true, timeoutMs: 20_000 };
  const key = (b: Backend) => ({ address: b.address, port: b.port });
  const add = async (b: Backend, weight = 1) =>
    expectConverged(await api.updateService({ service: web, addBackend: { backend: key(b), host: b.host, weight }, wait }));

  // ---- tests ---------------------------------------------------------------------------------

  it('spreads 200 connections to the VIP over a backend on each host: every byte checked, the VIP as peer, counters equal what each backend accepted', async () => {
    const g0 = await generation();
    expect(expectConverged(await api.createService({ service: web, wait }))).toBe(g0 + 1);
    await add(backends.a1);
    expect(await add(backends.b1)).toBe(g0 + 3);
    expect(await hostGenerations()).toEqual(everywhere(g0 + 3));
    expect(await kernelGenerations()).toEqual(everywhere(g0 + 3));

    const t = begin(200, 1);
    await t.ready;
    await flowing(t, 200 * 64 * 5);
    expectIntact(await t.stats(), 'while sending');

    // The client's peer is the VIP on every connection it holds.
    const ends = await clientEndsToVip();
    expect(ends.size).toBe(200);
    const clientConns = await established(lab.topology.client, []);
    expect(new Set(clientConns.map(([, peer]) => peer))).toEqual(new Set([`${vip}:${VIP_PORT}`]));

    // Each backend accepted some; together they accepted exactly the client's connections.
    const onA1 = await acceptedBy(backends.a1);
    const onB1 = await acceptedBy(backends.b1);
    expect(onA1.size, 'backend on a got flows').toBeGreaterThan(0);
    expect(onB1.size, 'backend on b got flows').toBeGreaterThan(0);
    expect(new Set([...onA1, ...onB1])).toEqual(ends);
    expect(onA1.size + onB1.size).toBe(200);

    // Counters, summed over both hosts by the controller: read once the client stopped sending
    // and got every byte back (each host reads its counter maps one after another, so under
    // traffic a service's sum and its backends' are read a few packets apart).
    const report = await t.drain(30_000);
    expect(report.drained).toBe(true);
    expectIntact(report, '200 connections');
    expect(report.alive).toBe(200);
    let s = await service();
    for (let i = 0; i < 100; i++) {
      const again = await service();
      if (JSON.stringify(again) === JSON.stringify(s)) break;
      s = again;
      await sleep(100);
    }
    const [ca1, cb1] = [backendOf(s, backends.a1)!.counters!, backendOf(s, backends.b1)!.counters!];
    expect(Number(ca1.flows)).toBe(onA1.size);
    expect(Number(cb1.flows)).toBe(onB1.size);
    expect(Number(s.counters!.flows)).toBe(200);
    for (const [c, n] of [[ca1, onA1.size], [cb1, onB1.size]] as const) {
      // At least a SYN, an ACK and some data per flow; each counted byte is an IPv4 packet's length (>= 40).
      expect(Number(c.packets)).toBeGreaterThanOrEqual(3 * n);
      expect(Number(c.bytes)).toBeGreaterThanOrEqual(40 * Number(c.packets));
    }
    // Every byte the client sent to the VIP (all of it echoed) passed a steering program first,
    // with >= 40 header bytes per packet; the service's counters are its backends' sums.
    expect(report.verifiedBytes).toBe(report.sentBytes);
    expect(Number(ca1.bytes) + Number(cb1.bytes)).toBeGreaterThanOrEqual(report.sentBytes + 40 * (Number(ca1.packets) + Number(cb1.packets)));
    expect(Number(s.counters!.packets)).toBe(Number(ca1.packets) + Number(cb1.packets));
    expect(Number(s.counters!.bytes)).toBe(Number(ca1.bytes) + Number(cb1.bytes));
    await t.stop();
  }, 120_000);

  it('under traffic: adding and draining a backend breaks no connection; removing one ends exactly its connections', async () => {
    const t = begin(120, 2);
    await t.ready;
    await flowing(t, 120 * 64 * 3);
    const a1Before = await acceptedBy(backends.a1);
    const b1Before = await acceptedBy(backends.b1);

    // Add b2 (on b, another port): established flows keep their backend, new ones reach b2.
    await add(backends.b2);
    const afterAdd = begin(60, 3);
    await afterAdd.ready;
    await flowing(afterAdd, 60 * 64 * 3);
    expect((await acceptedBy(backends.b2)).size, 'new flows reach the added backend').toBeGreaterThan(0);
    expectIntact(await t.stats(), 'after add');
    for (const peer of a1Before) expect((await acceptedBy(backends.a1)).has(peer), `a1 keeps ${peer}`).toBe(true);

    // Drain b1: its flows go on, new flows avoid it.
    expectConverged(await api.updateService({ service: web, drainBackend: { backend: key(backends.b1) }, wait }));
    expect(backendOf(await service(), backends.b1)!.state).toBe('DRAINING');
    const b1Drained = await acceptedBy(backends.b1);
    const afterDrain = begin(40, 4);
    await afterDrain.ready;
    await flowing(afterDrain, 40 * 64 * 3);
    expect(await acceptedBy(backends.b1), 'no new flow reaches the draining backend').toEqual(b1Drained);
    for (const peer of b1Before) expect(b1Drained.has(peer), `b1 keeps ${peer}`).toBe(true);
    for (const h of [t, afterAdd]) expectIntact(await h.stats(), 'after drain');

    // Remove b1: exactly the connections it held end; every other one keeps working.
    const clientBefore = await clientEndsToVip();
    const onB1 = b1Drained;
    expect(onB1.size, 'the removed backend holds connections').toBeGreaterThan(0);
    const closedBefore = (await Promise.all([t, afterAdd, afterDrain].map((h) => h.stats()))).reduce((n, s) => n + s.closed, 0);
    expect(closedBefore).toBe(0);
    expectConverged(await api.updateService({ service: web, removeBackend: { backend: key(backends.b1) }, wait }));
    expect(backendOf(await service(), backends.b1)).toBeUndefined();
    const closed = async () => (await Promise.all([t, afterAdd, afterDrain].map((h) => h.stats()))).reduce((n, s) => n + s.closed, 0);
    await until('connections of the removed backend end', closed, (n) => n >= onB1.size, 60_000).catch(async (e: Error) => {
      // Say which of the removed backend's connections the client still holds, and their TCP state.
      const still = await clientEndsToVip();
      const left = [...onB1].filter((x) => still.has(x));
      const info = (await run(lab.topology.client, 'ss', ['-Htni', 'state', 'established', 'dst', `${vip}:${VIP_PORT}`])).stdout;
      throw new Error(`${e.message}; ${left.length} of the ${onB1.size} still open: ${left.slice(0, 5).join(' ')}\n${info.slice(0, 3000)}`);
    });
    const clientAfter = await clientEndsToVip();
    const ended = new Set([...clientBefore].filter((e) => !clientAfter.has(e)));
    expect(ended, 'the client lost exactly the removed backend\'s connections').toEqual(onB1);
    // Whatever still runs gets every byte back: no other connection broke.
    const reports = [];
    for (const h of [t, afterAdd, afterDrain]) {
      const r = await h.drain(30_000);
      expect(r.drained).toBe(true);
      expect(r.corrupted).toBe(0);
      reports.push(r);
      await h.stop();
    }
    expect(reports.reduce((n, r) => n + r.closed, 0), 'closed connections').toBe(onB1.size);
    expect(reports.reduce((n, r) => n + r.alive, 0)).toBe(220 - onB1.size);
  }, 180_000);

  it('many rapid weight changes under traffic: no connection breaks, new connections open throughout, every host ends at the latest generation', async () => {
    const t = begin(100, 5);
    await t.ready;
    await flowing(t, 100 * 64 * 3);
    const g0 = await generation();
    const CHANGES = 30;
    let opening: TrafficHandle | undefined;
    let last = g0;
    for (let i = 1; i <= CHANGES; i++) {
      const b = i % 2 ? backends.a1 : backends.b2;
      const c = await api.updateService({ service: web, setWeight: { backend: key(b), weight: 1 + (i % 7) } });
      last = Number(c.generation);
      expect(last).toBe(g0 + i);
      // New connections are made while generations change under them.
      if (i === 5) opening = begin(60, 6);
    }
    await opening!.ready;
    const held = await until('every host holds the latest generation', hostGenerations, (h) => HOSTS.every((n) => h[n] === last));
    expect(held).toEqual(everywhere(last));
    expect(await kernelGenerations()).toEqual(everywhere(last));
    await flowing(opening!, 60 * 64 * 3);
    await drainIntact(t, 'established before the changes', 100);
    await drainIntact(opening!, 'opened during the changes', 60);
  }, 180_000);

  it('an agent restart (SIGKILL, then start) keeps every established flow through the VIP, and the restarted agent holds the latest generation', async () => {
    const t = begin(100, 7);
    await t.ready;
    await flowing(t, 100 * 64 * 3);
    const g = await generation();
    for (const host of HOSTS) {
      const before = await t.stats();
      await lab.restartAgent(host);
      // The new agent process reads the generation its kernel maps hold (it reloaded over the pins).
      expect(await until(`agent ${host} answers`, () => kernelGeneration(host).catch(() => -1), (v) => v >= 0)).toBe(g);
      await flowing(t, before.verifiedBytes + 100 * 64 * 3);
      expectIntact(await t.stats(), `after restarting agent ${host}`);
    }
    // Both restarted agents follow the table again: a change reaches every host. (A wait counts
    // ready hosts only, and an agent SIGKILLed a moment ago may not be ready again yet: it
    // catches up by itself once it is, which ListHosts shows.)
    const c = await api.updateService({ service: web, setWeight: { backend: key(backends.a1), weight: 3 }, wait });
    expect(Number(c.generation)).toBe(g + 1);
    await until('every host ready again and holding the latest generation', readyGenerations, (h) => HOSTS.every((n) => h[n] === g + 1));
    expect(await kernelGenerations()).toEqual(everywhere(g + 1));
    await drainIntact(t, 'through both agent restarts', 100);
  }, 180_000);

  it('bad input (an existing VIP:port, a VIP equal to a host\'s address) is refused and leaves every host\'s maps and the traffic as they were', async () => {
    const t = begin(60, 8);
    await t.ready;
    await flowing(t, 60 * 64 * 3);
    const g = await generation();
    const hosts = await hostGenerations();
    const kernels = await kernelGenerations();
    expect(kernels).toEqual(everywhere(g));
    const before = JSON.stringify((await service()).backends.map((b) => [b.id, b.address, b.port, b.weight, b.state, b.host]));

    const refused = async (call: () => Promise<unknown>) =>
      call().then(
        () => {
          throw new Error('accepted');
        },
        (e: unknown) => e,
      );
    const exists = await refused(() => api.createService({ service: web, wait }));
    expect(isServiceError(exists) && status[exists.code]).toBe('ALREADY_EXISTS');
    const hostVip = await refused(() => api.createService({ service: { ...web, vip: lab.host('a').address }, wait }));
    expect(isServiceError(hostVip) && status[hostVip.code]).toBe('INVALID_ARGUMENT');
    expect(isServiceError(hostVip) && hostVip.details).toMatch(/is the address of host "a"/);

    expect(await generation(), 'no generation spent').toBe(g);
    expect(await hostGenerations()).toEqual(hosts);
    expect(await kernelGenerations(), 'no host wrote its maps').toEqual(kernels);
    expect(JSON.stringify((await service()).backends.map((b) => [b.id, b.address, b.port, b.weight, b.state, b.host]))).toBe(before);
    // The next accepted change is the very next generation: nothing was applied in between.
    const next = await api.updateService({ service: web, setWeight: { backend: key(backends.b2), weight: 2 }, wait });
    expect(expectConverged(next)).toBe(g + 1);
    expectIntact(await t.stats(), 'after the refused requests');
    await drainIntact(t, 'bad input', 60);
  }, 120_000);
});
