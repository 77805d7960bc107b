/**
 * Fleet propagation with a real nats-server: the controller's store and registry, and agents'
 * SteeringSync, in this process; each agent's kernel is replaced by an in-memory data plane
 * (test/support/memory-steering.ts). The same code runs in the agent and controller processes
 * (test/integration/steering-api.test.ts drives those).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHeartbeat } from '../../agent/heartbeat.js';
import type { SteeringTable } from '../../agent/steering.js';
import { SteeringSync } from '../../agent/steering-sync.js';
import { HostRegistry } from '../../controller/registry.js';
import { SteeringStore } from '../../controller/steering-store.js';
import { applyOp, type RuleTable, type SteeringOp } from '../../controller/steering-table.js';
import { Bus } from '../../lib/bus.js';
import { createLogger } from '../../lib/log.js';
import { STEERING_BUCKET, STEERING_KV, SUBJECTS } from '../../lib/subjects.js';
import { INSECURE, useSecurity } from '../../lib/tls.js';
import { MemorySteering } from '../support/memory-steering.js';
import { startNatsServer, type NatsServer } from '../support/nats-server.js';

// Propagation only, on a plain nats-server it restarts; NATS users and permissions are
// test/integration/attack-nats.test.ts's.
useSecurity(INSECURE);
const log = createLogger('test').child({ level: 'silent' });
log.level = 'silent';

interface FakeAgent {
  name: string;
  dp: MemorySteering;
  sync: SteeringSync;
  bus: Bus;
  stop(): Promise<void>;
}

async function startAgent(nats: NatsServer, name: string, dp = new MemorySteering()): Promise<FakeAgent> {
  const bus = await Bus.connect({ servers: nats.url, name: `test-agent-${name}` });
  const sync = new SteeringSync({ host: name, dataplane: dp, kv: await bus.kv<SteeringTable>(STEERING_BUCKET, STEERING_KV), ack: (a) => bus.publish(SUBJECTS.steeringAck(name), a), log });
  await sync.start();
  const stopBeat = startHeartbeat(
    bus,
    { host: name, grpcAddress: '127.0.0.1:1', criuVersion: 'none', kernel: 'test', startedAtMs: Date.now(), dataAddress: `198.18.77.${name.length}` },
    () => ({ steeringGeneration: sync.generation() }),
  );
  return {
    name,
    dp,
    sync,
    bus,
    async stop() {
      stopBeat();
      sync.stop();
      await bus.close();
    },
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, check: () => boolean, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(20);
  }
}

describe('steering propagation over NATS KV', () => {
  let nats: NatsServer;
  let bus: Bus;
  let store: SteeringStore;
  const registry = new HostRegistry();
  const agents: FakeAgent[] = [];
  let port = 1000;

  /** One change through the store, as the controller makes it. */
  const change = (op: SteeringOp, s = store) =>
    s.mutate(async (t) => {
      const r = applyOp(t, op, { hosts: registry.addresses() });
      return { table: r.table, changed: r.changed, result: r.service };
    });
  const newService = (s = store) => change({ op: 'create-service', service: { proto: 'tcp', vip: '198.18.77.200', port: port++ } }, s);

  beforeAll(async () => {
    nats = await startNatsServer();
    bus = await Bus.connect({ servers: nats.url, name: 'test-controller' });
    store = new SteeringStore(await bus.kv<RuleTable>(STEERING_BUCKET, STEERING_KV));
    await store.start();
    registry.start(bus);
    for (const n of ['a', 'b', 'c']) agents.push(await startAgent(nats, n));
    await until('every agent registered', () => registry.list().filter((h) => h.steeringGeneration !== undefined).length === 3);
  });

  afterAll(async () => {
    for (const a of agents) await a.stop().catch(() => undefined);
    registry.stop();
    store?.stop();
    await bus?.close().catch(() => undefined);
    await nats?.stop();
  });

  it('every agent applies each generation and acks it; the controller sees every host at it', async () => {
    const r = await newService();
    expect(r.table.generation).toBe(1);
    const c = await registry.waitForGeneration(1, 10_000, r.acceptedAtMs);
    expect(c).toMatchObject({ converged: true, lagging: [] });
    for (const a of agents) {
      expect(a.dp.table.generation).toBe(1);
      expect(a.dp.table.services.map((s) => s.vipPort)).toEqual([1000]);
    }
    expect(registry.list().map((h) => [h.heartbeat.host, h.steeringGeneration])).toEqual([
      ['a', 1],
      ['b', 1],
      ['c', 1],
    ]);
  });

  it('a burst of changes ends with every agent at the last generation, never going back', async () => {
    const results = await Promise.all(Array.from({ length: 20 }, () => newService()));
    const last = Math.max(...results.map((r) => r.table.generation));
    expect(results.map((r) => r.table.generation).sort((x, y) => x - y)).toEqual(Array.from({ length: 20 }, (_, i) => i + 2));
    expect((await registry.waitForGeneration(last, 10_000)).converged).toBe(true);
    for (const a of agents) {
      expect(a.dp.table.generation).toBe(last);
      expect(a.dp.table.services).toHaveLength(21);
      const applied = a.dp.applied;
      expect([...applied].sort((x, y) => x - y), 'generations applied in increasing order').toEqual(applied);
    }
  });

  it('an agent that starts later catches up to the latest generation by itself', async () => {
    const late = await startAgent(nats, 'late');
    agents.push(late);
    const g = store.table().generation;
    await until('the late agent holds the latest generation', () => late.dp.table.generation === g);
    expect(late.dp.applied, 'only the latest table is applied, not the history').toEqual([g]);
    expect((await registry.waitForGeneration(g, 10_000)).converged).toBe(true);
  });

  it('a host whose data plane fails is named as lagging, and catches up once it works again', async () => {
    const bad = agents[1];
    bad.dp.failWith = new Error('map update refused');
    const r = await newService();
    const c = await registry.waitForGeneration(r.table.generation, 1_500, r.acceptedAtMs);
    expect(c.converged).toBe(false);
    expect(c.lagging).toEqual(['b']);
    bad.dp.failWith = undefined;
    expect((await registry.waitForGeneration(r.table.generation, 10_000)).converged, 'the agent retried by itself').toBe(true);
  });

  it('two controllers writing at once never interleave: every change lands, each on its own generation', async () => {
    const bus2 = await Bus.connect({ servers: nats.url, name: 'test-controller-2' });
    const store2 = new SteeringStore(await bus2.kv<RuleTable>(STEERING_BUCKET, STEERING_KV));
    await store2.start();
    try {
      const before = store.table().generation;
      const rs = await Promise.all([...Array.from({ length: 8 }, () => newService()), ...Array.from({ length: 8 }, () => newService(store2))]);
      expect(new Set(rs.map((r) => r.table.generation)).size).toBe(16);
      const g = before + 16;
      await until('both stores see the last generation', () => store.table().generation === g && store2.table().generation === g);
      expect(store.table().services).toHaveLength(store2.table().services.length);
      expect((await registry.waitForGeneration(g, 10_000)).converged).toBe(true);
      for (const a of agents) expect(a.dp.table.services).toEqual(store.table().services);
    } finally {
      store2.stop();
      await bus2.close();
    }
  });

  it('after a NATS restart agents reconnect and follow the table again', async () => {
    await nats.restart();
    // The client reconnects on its own (Bus keeps trying); then a change must reach everyone.
    let r: Awaited<ReturnType<typeof newService>> | undefined;
    const deadline = Date.now() + 15_000;
    while (!r) {
      r = await newService().catch(async (err: unknown) => {
        if (Date.now() > deadline) throw err;
        await sleep(200);
        return undefined;
      });
    }
    const c = await registry.waitForGeneration(r.table.generation, 15_000, r.acceptedAtMs);
    expect(c).toMatchObject({ converged: true });
    for (const a of agents) expect(a.dp.table.generation).toBe(r.table.generation);
  });
});
