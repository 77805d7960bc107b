/**
 * GodwitClient ('godwit/client') against a real gRPC server on loopback: promises for unary
 * calls, async iterators for streams, deadlines, and retries with backoff on UNAVAILABLE
 * (the server comes up while the client is already calling).
 */
import * as grpc from '@grpc/grpc-js';
import { createServer } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { GodwitClient } from '../../lib/client.js';
import { ControllerService, bindServer } from '../../lib/rpc.js';
import { INSECURE, useSecurity } from '../../lib/tls.js';

// Plain channels: what the client adds over TLS is tested by the lab tests, which run secure.
useSecurity(INSECURE);

const servers: grpc.Server[] = [];
const clients: GodwitClient[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.forceShutdown();
  for (const c of clients.splice(0)) c.close();
});

/** A free loopback port (bound, read, released). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** Serves ListHosts (one host) and WatchMigration (three events, then the end) on `port`. */
async function serve(port: number, listHosts: grpc.handleUnaryCall<unknown, unknown> = (_c, cb) => cb(null, { hosts: [{ name: 'a', ready: true }] })): Promise<void> {
  const server = new grpc.Server();
  server.addService(ControllerService, {
    ListHosts: listHosts,
    WatchMigration: (call: grpc.ServerWritableStream<{ id: string }, unknown>) => {
      for (const phase of ['PENDING', 'LOCK', 'DONE']) call.write({ migrationId: call.request.id, phase, kind: 'SUCCEEDED', migration: { id: call.request.id, phase } });
      call.end();
    },
  } as grpc.UntypedServiceImplementation);
  servers.push(server);
  await bindServer(server, [`127.0.0.1:${port}`]);
}

describe('GodwitClient', () => {
  it("is what programs import as 'godwit/client' (package.json exports)", async () => {
    const pkg = await import('godwit/client');
    expect(typeof pkg.GodwitClient).toBe('function');
    expect(pkg.GodwitClient.name).toBe('GodwitClient');
  });

  it('answers unary calls as promises and streams as async iterators', async () => {
    const port = await freePort();
    await serve(port);
    const c = new GodwitClient({ address: `127.0.0.1:${port}` });
    clients.push(c);
    expect((await c.listHosts()).hosts.map((h) => h.name)).toEqual(['a']);
    expect((await c.call('ListHosts', {})).hosts[0].ready).toBe(true);
    const phases: string[] = [];
    for await (const e of c.watchMigration('m-1')) phases.push(String(e.phase));
    expect(phases).toEqual(['PENDING', 'LOCK', 'DONE']);
    expect((await c.waitMigration('m-1')).phase).toBe('DONE');
  });

  it('retries UNAVAILABLE with backoff until the controller is up', async () => {
    const port = await freePort();
    const c = new GodwitClient({ address: `127.0.0.1:${port}`, retry: { initialBackoffMs: 50, maxAttempts: 100 } });
    clients.push(c);
    const answer = c.listHosts({ deadlineMs: 60_000 });
    // Nothing listens yet: the first attempts fail UNAVAILABLE and are retried.
    await new Promise((r) => setTimeout(r, 300));
    await serve(port);
    expect((await answer).hosts).toHaveLength(1);
  });

  it('gives up on UNAVAILABLE when retries are off, and keeps other codes as they are', async () => {
    const port = await freePort();
    const c = new GodwitClient({ address: `127.0.0.1:${port}`, retry: false });
    clients.push(c);
    await expect(c.listHosts()).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
    await serve(port, (_call, cb) => cb({ code: grpc.status.FAILED_PRECONDITION, details: 'not now' }));
    const retrying = new GodwitClient({ address: `127.0.0.1:${port}` });
    clients.push(retrying);
    await expect(retrying.listHosts()).rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION, details: 'not now' });
  });

  it('ends a call that outlives its deadline with DEADLINE_EXCEEDED', async () => {
    const port = await freePort();
    await serve(port, () => undefined); // never answers
    const c = new GodwitClient({ address: `127.0.0.1:${port}` });
    clients.push(c);
    await expect(c.listHosts({ deadlineMs: 200 })).rejects.toMatchObject({ code: grpc.status.DEADLINE_EXCEEDED });
  });
});
