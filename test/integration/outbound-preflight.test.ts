/**
 * A workload that holds outgoing connections (a redis replica's link to its primary, say) moves
 * only if those connections leave from an address that moves with it. In the lab: the workload
 * on host a holds connections to a server in the client namespace, data checked both ways.
 * From the host's own address (no bind, the kernel's choice): Migrate refuses up front, naming the
 * connection and the fix, and nothing changes. Bound to the endpoint address: preflight passes.
 */
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Endpoint } from '../../lib/endpoint.js';
import { isServiceError } from '../../lib/rpc.js';
import { endpointToWire } from '../../lib/wire.js';
import { labUp, startLabWorkload, type Lab } from '../../lab/lab.js';
import { drainOutbound, outboundReport, outboundWorkloadArgs, startOutboundServer, type OutboundServerHandle } from '../../lab/outbound.js';
import { stopWorkload } from '../../lab/workload.js';
import { addressesOn, lockEntries, processesNamed } from '../support/lab-state.js';

const PORT = 7000;
const CONTROL_PORT = 7001;
const SERVER_PORT = 6379;
const CONNECTIONS = 8;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('a workload with outgoing connections', () => {
  let lab: Lab;
  let server: OutboundServerHandle;
  let pid = 0;
  let endpoint: Endpoint;

  beforeAll(async () => {
    lab = await labUp({ hosts: ['a', 'b'] });
    server = startOutboundServer(lab.topology.client, { port: SERVER_PORT });
    await server.ready;
  });

  afterAll(async () => {
    if (pid) await stopWorkload(pid).catch(() => undefined);
    await server?.stop();
    await lab?.down();
  });

  const workloadArgs = (source?: string) =>
    outboundWorkloadArgs({ server: { address: server.address, port: SERVER_PORT }, connections: CONNECTIONS, controlPort: CONTROL_PORT, source });
  const control = () => ({ address: endpoint.address, controlPort: CONTROL_PORT });
  const request = () => ({ sourceHost: 'a', targetHost: 'b', workload: { pid, endpoints: [endpointToWire(endpoint)] } });
  /** The report once every outgoing connection is open (on a loaded machine the last ones take a moment). */
  const allOpen = async () => {
    for (let i = 0; ; i++) {
      const r = await outboundReport(server, control());
      if (r.open >= CONNECTIONS || i >= 100) return r;
      await sleep(100);
    }
  };

  it('from the host\'s own address: Migrate refuses with FAILED_PRECONDITION naming the connection and the fix; nothing changes', async () => {
    // No --source: connect() picks host a's own address, as redis's replication link does.
    ({ pid, endpoint } = await startLabWorkload(lab, 'a', PORT, 0, workloadArgs()));
    const hostAddress = lab.host('a').address;
    const before = await allOpen();
    expect(before.open).toBe(CONNECTIONS);
    for (const c of before.perConnection) expect(c.remote.startsWith(`${hostAddress}:`), `connection ${c.index} leaves from ${c.remote}`).toBe(true);
    const migrations = (await lab.controller.listMigrations()).migrations.length;

    const err = await lab.controller.migrate(request()).then(
      () => undefined,
      (e: unknown) => e,
    );
    if (!isServiceError(err)) throw new Error(`expected a gRPC error, got ${JSON.stringify(err)}`);
    expect(status[err.code]).toBe('FAILED_PRECONDITION');
    const a = escape(hostAddress);
    expect(err.details).toMatch(new RegExp(`holds ${CONNECTIONS} sockets whose local address does not move with it`));
    expect(err.details).toMatch(new RegExp(`tcp ${a}:\\d+ -> ${escape(server.address)}:${SERVER_PORT}, `));
    expect(err.details).toMatch(/\(and 5 more\)/);
    expect(err.details).toContain(`its local address ${hostAddress} is host a's own and does not move with the workload`);
    expect(err.details).toContain(
      `bind the workload's outgoing connections to one of its endpoint addresses (for redis: bind-source-addr ${endpoint.address}; generally: bind() before connect()), or add that address as an endpoint`,
    );

    // Nothing changed: no migration recorded, no lock, the address and the process where they were.
    expect((await lab.controller.listMigrations()).migrations.length).toBe(migrations);
    const running = await processesNamed(lab, 'echo-server');
    expect(running.get('a')).toEqual([pid]);
    expect(running.get('b')).toEqual([]);
    for (const h of ['a', 'b']) expect(await lockEntries(lab, h), `no lock on ${h}`).toEqual([]);
    expect(await addressesOn(lab, 'a')).toContain(endpoint.address);
    expect(await addressesOn(lab, 'b')).not.toContain(endpoint.address);
    // ...and the connections keep flowing, every byte checked both ways.
    await sleep(500);
    const after = await outboundReport(server, control());
    expect(after.open).toBe(CONNECTIONS);
    expect(after.workloadVerifiedBytes).toBeGreaterThan(before.workloadVerifiedBytes);
    expect(after.resets).toBe(0);
    expect(after.corrupted).toBe(0);
    const drained = await drainOutbound(server, control());
    expect(drained.drained).toBe(true);
    expect(drained.bytesLost).toBe(0);
    expect(drained.errors).toEqual([]);

    await stopWorkload(pid);
    pid = 0;
  });

  it('bound to the endpoint address: preflight passes and Migrate is accepted', async () => {
    ({ pid, endpoint } = await startLabWorkload(lab, 'a', PORT, 1, workloadArgs(lab.topology.workloadAddress(1))));
    const before = await allOpen();
    expect(before.open).toBe(CONNECTIONS);
    for (const c of before.perConnection) expect(c.remote.startsWith(`${endpoint.address}:`), `connection ${c.index} leaves from ${c.remote}`).toBe(true);

    const accepted = await lab.controller.migrate(request());
    expect(accepted.id).toBeTruthy();
    // Let it finish (whatever the outcome) so that the lab comes down clean; whether the outgoing
    // connections survive the move is the routed fabric's test once steering follows them.
    const m = await lab.controller.wait(accepted.id);
    expect(['DONE', 'FAILED']).toContain(m.phase);
    if (m.phase === 'DONE') pid = m.restoredPid;
    else if (m.restoredPid > 1) pid = m.restoredPid;
    await sleep(1000);
    const after = await outboundReport(server, control()).catch((e: Error) => e.message);
    console.log(JSON.stringify({ phase: m.phase, error: m.error, failedPhase: m.failedPhase, freezeMs: m.freezeMs, outbound: typeof after === 'string' ? after : { ...after, perConnection: undefined } }));
  });
});
