/**
 * A lock never outlives its migration: entries carry a lease that the XDP program and the agent
 * enforce by themselves, and the pinned map keeps held entries across an agent restart.
 */
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lockScope } from '../../agent/lock-scope.js';
import { agentAsController } from '../support/lab-agent.js';
import type { SteeringTable } from '../../agent/steering.js';
import { Bus } from '../../lib/bus.js';
import { STEERING_BUCKET, STEERING_KV, STEERING_TABLE_KEY } from '../../lib/subjects.js';
import { formatEndpoint, parseEndpoint, type Endpoint } from '../../lib/endpoint.js';
import { execCommand } from '../../lib/exec.js';
import { endpointToWire } from '../../lib/wire.js';
import { labUp, type Lab } from '../../lab/lab.js';
import { inNetns } from '../../lab/topology.js';
import { startWorkload } from '../../lab/workload.js';
import { lockEntries } from '../support/lab-state.js';

const PORT = 7000;
const LEASE_MS = 2_000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Endpoints in one order: the lock lists them in its map's order. */
const sorted = (es: Endpoint[]) => [...es].sort((x, y) => formatEndpoint(x).localeCompare(formatEndpoint(y)));

/** From the client's namespace: does a TCP connect get any answer (accepted or refused) within 1 s? */
async function answers(lab: Lab, e: Endpoint): Promise<'connected' | 'refused' | 'silent'> {
  const script = `const s=require('net').connect(${e.port},'${e.address}');s.on('connect',()=>{console.log('connected');process.exit(0)});s.on('error',(x)=>{console.log(x.code==='ECONNREFUSED'?'refused':'error '+x.code);process.exit(0)});setTimeout(()=>{console.log('silent');process.exit(0)},1000)`;
  const [file, args] = inNetns(lab.topology.client, process.execPath, ['-e', script]);
  const r = await execCommand(file, args);
  return r.stdout.trim() as 'connected' | 'refused' | 'silent';
}

async function waitUntil(what: string, timeoutMs: number, check: () => Promise<boolean>) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(200);
  }
  throw new Error(`timed out waiting until ${what}`);
}

describe('lock leases', () => {
  let lab: Lab;
  let endpoint: Endpoint;

  beforeAll(async () => {
    lab = await labUp({ hosts: ['a', 'b'] });
    endpoint = parseEndpoint(`tcp://${lab.topology.workloadAddress(0)}:${PORT}`);
    await execCommand('ip', ['-n', lab.host('a').netns, 'addr', 'add', `${endpoint.address}/32`, 'dev', 'eth0']);
  });

  afterAll(async () => {
    await lab?.down();
  });

  it('a held lock survives an agent crash and restart, and is released by the new agent', async () => {
    const w = await startWorkload(lab.host('a'), endpoint.address, PORT);
    const agent = agentAsController(lab, 'a', lab.agentAddress('a'));
    try {
      await agent.lock('restart-test', [endpoint], '100', 60_000);
      expect(await answers(lab, endpoint)).toBe('silent');
      await lab.restartAgent('a');
      const held = await lockEntries(lab, 'a');
      expect(sorted(held.map((e) => e.endpoint))).toEqual(sorted(lockScope([endpoint])));
      expect(held.find((e) => e.endpoint.port === endpoint.port)?.drops).toBeGreaterThan(0n);
      expect(await answers(lab, endpoint), 'still locked after the restart').toBe('silent');
      await agent.unlock('restart-test', [endpoint], '100');
      expect(await lockEntries(lab, 'a')).toEqual([]);
      expect(await answers(lab, endpoint)).toBe('connected');
    } finally {
      agent.close();
      process.kill(w.pid, 'SIGKILL');
    }
  });

  it('when the controller dies mid-migration, the lock goes away by itself when its lease ends', async () => {
    const w = await startWorkload(lab.host('a'), endpoint.address, PORT);
    const bus = await Bus.connect({ servers: lab.natsUrl, name: 'lease-test' });
    try {
      let locked!: () => void;
      const lockTaken = new Promise<void>((r) => (locked = r));
      // Kill the controller the moment both hosts hold the lock.
      const stop = bus.subscribe<{ phase: string; kind: string }>('godwit.events.migration.>', (e) => {
        if (e.phase === 'LOCK' && e.kind === 'SUCCEEDED') locked();
      });
      const m = await lab.controller.migrate({
        sourceHost: 'a',
        targetHost: 'b',
        workload: { pid: w.pid, endpoints: [endpointToWire(endpoint)] },
        lockLeaseMs: LEASE_MS,
      });
      await lockTaken;
      await lab.crash('controller');
      stop();
      // Right after the crash both hosts still hold the lock: only the lease can end it now.
      // The workload's endpoint and every port of its address (agent/lock-scope.ts).
      expect(sorted((await lockEntries(lab, 'a')).map((e) => e.endpoint))).toEqual(sorted(lockScope([endpoint])));
      expect(sorted((await lockEntries(lab, 'b')).map((e) => e.endpoint))).toEqual(sorted(lockScope([endpoint])));
      // Whatever the agents were doing finishes; nobody will unlock. The leases must.
      await waitUntil('no lock entry is left on either host', LEASE_MS + 5_000, async () =>
        (await lockEntries(lab, 'a')).length === 0 && (await lockEntries(lab, 'b')).length === 0,
      );
      expect(m.id).toMatch(/^m-/);
      // The lease ends the lock, not the migration's steering: if the controller got as far as
      // STEER, every host now sends the address to b, where nothing answers until a controller
      // that resumes the migration places it back on a (crash-safe orchestration, a later issue).
      // What the lease promises holds either way: no host holds the lock any more, so wherever
      // the address's packets go nothing waits on a lock that nobody will remove.
      // Whether the controller got as far as storing STEER's placement, as the table says.
      const table = await (await bus.kv<SteeringTable>(STEERING_BUCKET, STEERING_KV)).get(STEERING_TABLE_KEY);
      const steered = !!table?.value.addresses?.some((x) => x.address === endpoint.address && x.host === 'b');
      const reached = await answers(lab, endpoint);
      expect(steered ? ['connected', 'refused', 'silent'] : ['connected', 'refused']).toContain(reached);
    } finally {
      await bus.close().catch(() => undefined);
      try {
        process.kill(w.pid, 'SIGKILL');
      } catch {
        // dumped already
      }
    }
  });
});
