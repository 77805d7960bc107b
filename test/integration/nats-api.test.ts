/**
 * The NATS request API's protocol against a real nats-server: JSON in, the handler's answer or
 * status out, streams ended by a status frame, an early stop reaching the handler as a gRPC
 * cancellation. The handlers here stand in for the controller's (the lab test runs the real ones).
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isStatusFrame, type ApiFrame } from '../../lib/api-frames.js';
import { Bus, BusRequestError } from '../../lib/bus.js';
import { createLogger } from '../../lib/log.js';
import { ControllerService, PROTO_PACKAGES } from '../../lib/rpc.js';
import { SUBJECTS } from '../../lib/subjects.js';
import { INSECURE, useSecurity } from '../../lib/tls.js';
import { NatsApi } from '../../controller/nats-api.js';
import { startNatsServer, type NatsServer } from '../support/nats-server.js';

describe('NATS request API protocol', () => {
  let nats: NatsServer;
  let server: Bus;
  let client: Bus;
  let api: NatsApi;
  const seen: unknown[] = [];
  let cancelled: () => void = () => undefined;
  const watchCancelled = new Promise<void>((r) => (cancelled = r));

  beforeAll(async () => {
    // A plain nats-server: the protocol is what is tested here (the lab test runs it secure).
    useSecurity(INSECURE);
    nats = await startNatsServer();
    server = await Bus.connect({ servers: nats.url, name: 'nats-api-server' });
    client = await Bus.connect({ servers: nats.url, name: 'nats-api-client' });
    api = new NatsApi(server, createLogger('nats-api-test'));
    const handlers: grpc.UntypedServiceImplementation = {
      GetMigration: (call: grpc.ServerUnaryCall<{ id: string }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        seen.push(call.request);
        if (call.request.id === 'gone') cb({ code: grpc.status.NOT_FOUND, details: 'no migration with id "gone"' });
        else cb(null, { id: call.request.id, phase: 'DONE', imageBytes: 12 });
      },
      Migrate: (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        seen.push(call.request);
        cb(null, { id: 'm-1' });
      },
      WatchMigration: (call: grpc.ServerWritableStream<{ id: string }, unknown>) => {
        if (call.request.id === 'forever') {
          const t = setInterval(() => call.write({ migrationId: 'forever', phase: 'LOCK', kind: 'STARTED' }), 20);
          call.on('cancelled', () => (clearInterval(t), cancelled()));
          return;
        }
        for (const phase of ['LOCK', 'DONE']) call.write({ migrationId: call.request.id, phase, kind: 'SUCCEEDED' });
        call.end();
      },
    };
    for (const m of Object.keys(ControllerService)) handlers[m] ??= (_c: unknown, cb: grpc.sendUnaryData<unknown>) => cb({ code: grpc.status.UNIMPLEMENTED, details: 'not here' });
    api.start([{ definition: ControllerService, handlers, types: PROTO_PACKAGES.controller }]);
    await server.flush();
  });

  afterAll(async () => {
    api?.stop();
    await client?.close().catch(() => undefined);
    await server?.close().catch(() => undefined);
    await nats?.stop();
  });

  const call = (method: string, body: unknown) => client.request<ApiFrame>(SUBJECTS.apiRequest(method), body, 10_000);

  it('hands the handler the request gRPC would, and answers as gRPC\'s client reads it', async () => {
    expect(await call('GetMigration', { id: 'm-7' })).toEqual({ result: expect.objectContaining({ id: 'm-7', phase: 'DONE', imageBytes: '12', error: '' }) });
    await call('Migrate', { source_host: 'a', targetHost: 'b', workload: { pid: 9, endpoints: [{ protocol: 'TCP', address: '10.0.0.1', port: 80 }] } });
    expect(seen.at(-1)).toMatchObject({ sourceHost: 'a', targetHost: 'b', workload: { pid: 9, endpoints: [{ protocol: 'TCP', address: '10.0.0.1', port: 80 }] }, lockMode: 'LOCK_MODE_UNSPECIFIED', postCopy: false });
  });

  it('answers failures with a status frame', async () => {
    expect(await call('GetMigration', { id: 'gone' })).toEqual({ status: { code: 5, name: 'NOT_FOUND', message: 'no migration with id "gone"' } });
    const unknown = await call('Migrate', { workload: { pid: 1, endpointz: [] } });
    expect(unknown).toMatchObject({ status: { name: 'INVALID_ARGUMENT', message: expect.stringMatching(/Workload has no field "endpointz"/) } });
    const wrongType = await call('Migrate', { workload: 7 });
    expect(wrongType).toMatchObject({ status: { name: 'INVALID_ARGUMENT' } });
  });

  it('rejects a body that is not a JSON object', async () => {
    expect(await call('GetMigration', [1, 2])).toMatchObject({ status: { name: 'INVALID_ARGUMENT', message: expect.stringMatching(/must be a JSON object/) } });
  });

  it('tells a caller of a method that does not exist that nothing serves it', async () => {
    await expect(call('NoSuchMethod', {})).rejects.toBeInstanceOf(BusRequestError);
  });

  it('streams result frames and ends with a status frame', async () => {
    const frames: ApiFrame[] = [];
    for await (const f of client.requestStream<ApiFrame>(SUBJECTS.apiRequest('WatchMigration'), { id: 'm-3' }, { last: isStatusFrame, idleMs: 10_000 })) frames.push(f);
    expect(frames).toEqual([
      { result: expect.objectContaining({ phase: 'LOCK' }) },
      { result: expect.objectContaining({ phase: 'DONE' }) },
      { status: { code: 0, name: 'OK', message: '' } },
    ]);
  });

  it('stops a stream the client leaves early: the handler sees a cancellation', async () => {
    let n = 0;
    for await (const f of client.requestStream<ApiFrame>(SUBJECTS.apiRequest('WatchMigration'), { id: 'forever' }, { last: isStatusFrame, idleMs: 10_000, cancelSubject: SUBJECTS.apiStreamCancel })) {
      expect(isStatusFrame(f)).toBe(false);
      if (++n === 3) break;
    }
    await watchCancelled;
  });
});
