/**
 * The automation surface against a real lab (namespaces, nats-server, controller and agents as
 * processes, CRIU): a migration started, watched and finished only through NATS requests, its
 * errors equal to gRPC's; the metrics scraped over HTTP; gRPC health and reflection.
 */
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isStatusFrame, type ApiFrame, type ApiStatus } from '../../lib/api-frames.js';
import { Bus } from '../../lib/bus.js';
import { NatsApiClient } from '../../lib/nats-api-client.js';
import { formatEndpoint, type Endpoint } from '../../lib/endpoint.js';
import { isServiceError } from '../../lib/rpc.js';
import { EVENT_CHANNELS } from '../../lib/subject-catalogue.js';
import { STEERING_KV, SUBJECTS } from '../../lib/subjects.js';
import { endpointToWire } from '../../lib/wire.js';
import { labUp, startLabWorkload, type Lab } from '../../lab/lab.js';
import { startTraffic, type TrafficHandle } from '../../lab/traffic.js';
import type { Migration__Output } from '../../proto/gen/godwit/v1/Migration.js';
import type { MigrationEvent__Output } from '../../proto/gen/godwit/v1/MigrationEvent.js';
import { godwitCli } from '../support/godwit-cli.js';
import { healthStatus, reflectedFileFor, reflectedServices } from '../support/grpc-probes.js';

const PORT = 7000;
const CONNECTIONS = 20;

describe('automation surface', () => {
  let lab: Lab;
  let bus: Bus;
  let traffic: TrafficHandle;
  let pid = 0;
  let endpoint: Endpoint;
  let migrationId = '';
  /** Everything godwit published while the tests ran, by subject. */
  const captured: { subject: string; payload: unknown }[] = [];

  beforeAll(async () => {
    lab = await labUp({ hosts: ['a', 'b'] });
    ({ pid, endpoint } = await startLabWorkload(lab, 'a', PORT));
    bus = await Bus.connect({ servers: lab.natsUrl, name: 'automation-test' });
    for (const s of [SUBJECTS.allEvents, SUBJECTS.allHeartbeats, SUBJECTS.allSteeringAcks, STEERING_KV.republish.subject])
      bus.subscribe(s, (payload, subject) => captured.push({ subject, payload }));
    await bus.flush();
    traffic = startTraffic(lab.topology.client, { address: endpoint.address, port: PORT }, { connections: CONNECTIONS });
    await traffic.ready;
  });

  afterAll(async () => {
    await traffic?.stop();
    await bus?.close().catch(() => undefined);
    await lab?.down();
  });

  /** A unary call over NATS: the result, or the status as an ApiStatusError. */
  function natsCall<T>(method: string, body: unknown): Promise<T> {
    return new NatsApiClient(bus).call<T>(method, body);
  }

  /** Every frame of a server-streaming call over NATS, up to and including its status. */
  async function natsStream<T>(method: string, body: unknown): Promise<{ results: T[]; status: ApiStatus }> {
    const results: T[] = [];
    for await (const f of bus.requestStream<ApiFrame<T>>(SUBJECTS.apiRequest(method), body, { last: isStatusFrame, idleMs: 120_000, cancelSubject: SUBJECTS.apiStreamCancel })) {
      if (isStatusFrame(f)) return { results, status: f.status };
      results.push(f.result);
    }
    throw new Error('the stream ended without a status frame');
  }

  /** The error of a promise that must fail, as code name and message. */
  async function failure(p: Promise<unknown>): Promise<{ code: string; message: string }> {
    const err = await p.then(
      () => undefined,
      (e: unknown) => e,
    );
    if (!isServiceError(err)) throw new Error(`expected a status error, got ${String(err)}`);
    return { code: status[err.code], message: err.details };
  }

  it('starts, watches and finishes a migration through NATS requests only', async () => {
    // snake_case as in the .proto (lowerCamelCase is accepted too, as proto3 JSON has it).
    const m = await natsCall<Migration__Output>('Migrate', { source_host: 'a', target_host: 'b', workload: { pid, endpoints: [endpointToWire(endpoint)] } });
    expect(m.id).toMatch(/^m-/);
    expect(m.request?.targetHost).toBe('b');
    migrationId = m.id;
    const watched = await natsStream<MigrationEvent__Output>('WatchMigration', { id: m.id });
    expect(watched.status).toEqual({ code: 0, name: 'OK', message: '' });
    expect(watched.results[0].kind).toBe('SNAPSHOT');
    const last = watched.results.at(-1)!;
    expect(last.migration?.phase, last.migration?.error).toBe('DONE');
    // Messages as gRPC's client reads them: enums by name, 64-bit integers as strings.
    expect(typeof last.migration?.imageBytes).toBe('string');
    const phases = watched.results.filter((e) => e.kind === 'SUCCEEDED').map((e) => e.phase);
    expect(phases).toEqual(expect.arrayContaining(['LOCK', 'DUMP', 'RESTORE', 'UNLOCK', 'DONE']));
    const done = await natsCall<Migration__Output>('GetMigration', { id: m.id });
    expect(done.phase).toBe('DONE');
    expect(done.restoredPid).toBeGreaterThan(1);
    pid = done.restoredPid;
    const listed = await natsCall<{ migrations: Migration__Output[] }>('ListMigrations', {});
    expect(listed.migrations.map((x) => x.id)).toContain(m.id);
    // The same record as gRPC gives.
    expect(await lab.controller.getMigration(m.id)).toEqual(done);
    const stats = await traffic.stats();
    expect(stats.alive).toBe(CONNECTIONS);
    expect(stats.bytesLost).toBe(0);
  });

  it('publishes events that fit the catalogue (docs/asyncapi.json) schema of their subject', () => {
    const seen = new Set<string>();
    for (const { subject, payload } of captured) {
      const [key, channel] = Object.entries(EVENT_CHANNELS).find(([, c]) => new RegExp(`^${c.address.replace(/\./g, '\\.').replace(/\{[^}]+\}/g, '[^.]+')}$`).test(subject)) ?? [];
      expect(channel, `${subject} is in the catalogue`).toBeDefined();
      const r = channel!.payload.safeParse(payload);
      expect(r.success, `${subject}: ${r.error?.message}`).toBe(true);
      seen.add(key!);
    }
    expect([...seen].sort()).toEqual(['heartbeat', 'migrationEvent', 'steeringAck', 'steeringTable']);
  });

  it('answers errors with the same status code and message as gRPC', async () => {
    const cases: { method: string; body: Record<string, unknown>; grpc: () => Promise<unknown>; code: string }[] = [
      { method: 'GetMigration', body: { id: 'm-nope' }, grpc: () => lab.controller.getMigration('m-nope'), code: 'NOT_FOUND' },
      { method: 'GetMigration', body: {}, grpc: () => lab.controller.getMigration(''), code: 'INVALID_ARGUMENT' },
      {
        method: 'Migrate',
        body: { sourceHost: 'b', targetHost: 'b', workload: { pid, endpoints: [endpointToWire(endpoint)] } },
        grpc: () => lab.controller.migrate({ sourceHost: 'b', targetHost: 'b', workload: { pid, endpoints: [endpointToWire(endpoint)] } }),
        code: 'INVALID_ARGUMENT',
      },
      {
        method: 'Migrate',
        body: { sourceHost: 'b', targetHost: 'nowhere', workload: { pid, endpoints: [endpointToWire(endpoint)] } },
        grpc: () => lab.controller.migrate({ sourceHost: 'b', targetHost: 'nowhere', workload: { pid, endpoints: [endpointToWire(endpoint)] } }),
        code: 'NOT_FOUND',
      },
    ];
    for (const c of cases) {
      const viaGrpc = await failure(c.grpc());
      const viaNats = await failure(natsCall(c.method, c.body));
      expect(viaGrpc.code).toBe(c.code);
      expect(viaNats).toEqual(viaGrpc);
    }
    // A stream's error comes as its status frame, as gRPC's stream ends with it.
    const grpcWatch = await failure((async () => {
      for await (const _ of lab.controller.watch('m-nope')) void _;
    })());
    const natsWatch = await natsStream('WatchMigration', { id: 'm-nope' });
    expect(natsWatch.results).toEqual([]);
    expect({ code: natsWatch.status.name, message: natsWatch.status.message }).toEqual(grpcWatch);
    // What only JSON can get wrong is INVALID_ARGUMENT too: a field the message does not have.
    const typo = await failure(natsCall('GetMigration', { idd: migrationId }));
    expect(typo.code).toBe('INVALID_ARGUMENT');
    expect(typo.message).toMatch(/GetMigrationRequest has no field "idd"/);
  });

  it('serves metrics over HTTP that show the migration', async () => {
    const scrape = async (url: string) => parseMetrics(await (await fetch(url)).text());
    const controller = await scrape(lab.metricsUrl('controller'));
    expect(controller('godwit_migrations_total', { result: 'DONE' })).toBe(1);
    expect(controller('godwit_migration_freeze_seconds_count', {})).toBe(1);
    expect(controller('godwit_migration_phase_seconds_count', { phase: 'DUMP', result: 'ok' })).toBe(1);
    expect(controller('godwit_steering_generation', { host: 'b' })).toBeGreaterThan(0);
    expect(controller('godwit_host_ready', { host: 'a' })).toBe(1);
    const source = await scrape(lab.metricsUrl({ agent: 'a' }));
    expect(source('godwit_agent_step_seconds_count', { host: 'a', step: 'criu dump' })).toBe(1);
    expect(source('godwit_lock_entries', { host: 'a' })).toBeGreaterThanOrEqual(0);
    expect(source('godwit_held_packets_taken_total', { host: 'a' })).toBeGreaterThanOrEqual(0);
    const target = await scrape(lab.metricsUrl({ agent: 'b' }));
    expect(target('godwit_agent_step_seconds_count', { host: 'b', step: 'criu restore' })).toBe(1);
    expect(target('godwit_held_packets_delivered_total', { host: 'b' })).toBeGreaterThanOrEqual(0);
    expect(target('godwit_steering_generation', { host: 'b' })).toBeGreaterThan(0);
    expect(target('godwit_nats_reconnects_total', { host: 'b' })).toBe(0);
  });

  it('answers gRPC health checks SERVING on the controller and every agent', async () => {
    for (const [addr, role] of [[lab.controllerAddress, 'controller'], [lab.agentAddress('a'), 'agent'], [lab.agentAddress('b'), 'agent']] as const) expect(await healthStatus(addr, role)).toBe('SERVING');
    expect(await healthStatus(lab.controllerAddress, 'controller', 'godwit.v1.Controller')).toBe('SERVING');
    expect(await healthStatus(lab.agentAddress('a'), 'agent', 'godwit.v1.Agent')).toBe('SERVING');
    const unknown = await failure(healthStatus(lab.controllerAddress, 'controller', 'no.such.Service'));
    expect(unknown.code).toBe('NOT_FOUND');
  });

  it('lists its services through server reflection', async () => {
    const controller = await reflectedServices(lab.controllerAddress, 'controller');
    expect(controller).toEqual(expect.arrayContaining(['godwit.v1.Controller', 'godwit.v1.Steering', 'grpc.health.v1.Health']));
    expect(await reflectedServices(lab.agentAddress('b'), 'agent')).toEqual(expect.arrayContaining(['godwit.v1.Agent', 'grpc.health.v1.Health']));
    expect(await reflectedFileFor(lab.controllerAddress, 'controller', 'godwit.v1.Controller')).toBeGreaterThan(0);
  });

  it('the CLI follows migrate --wait phase by phase (plain lines off a terminal) and moves it back', async () => {
    const r = await godwitCli(lab, ['migrate', '--from', 'b', '--to', 'a', '--pid', String(pid), '--endpoint', formatEndpoint(endpoint), '--wait']);
    expect(r.exitCode, r.stderr).toBe(0);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toEqual(expect.arrayContaining([expect.stringMatching(/^LOCK +ok +\d+ ms$/), expect.stringMatching(/^RESTORE +ok +\d+ ms$/), expect.stringMatching(/^CLEANUP +ok +\d+ ms$/)]));
    expect(r.stdout).toMatch(/b -> a .* DONE/);
    const stats = await traffic.stats();
    expect(stats.alive).toBe(CONNECTIONS);
    expect(stats.bytesLost).toBe(0);
  });
});

/** The Prometheus text format as a lookup: a sample's value by name and labels (undefined if absent). */
function parseMetrics(text: string): (name: string, labels: Record<string, string>) => number | undefined {
  const samples = text
    .split('\n')
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => {
      const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(l);
      if (!m) throw new Error(`not a Prometheus sample line: ${l}`);
      const labels = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
      return { name: m[1], labels, value: Number(m[3]) };
    });
  return (name, labels) =>
    samples.find((s) => s.name === name && Object.keys(labels).length === Object.keys(s.labels).length && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
}
