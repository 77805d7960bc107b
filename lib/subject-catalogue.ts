/**
 * Every subject of lib/subjects.ts, with who publishes it, its payload schema and an example:
 * the table docs/asyncapi.json is generated from (lib/asyncapi.ts, `npm run asyncapi`). The
 * mapped type makes a subject added to SUBJECTS without an entry here a compile error, and
 * test/unit/asyncapi.test.ts checks the document against this table and the code.
 */
import type { z } from 'zod';
import { CordonRecordSchema, DrainStateSchema, HeartbeatSchema, PhaseEventSchema, RuleTableSchema, SteeringAckSchema, StreamCancelSchema } from './event-schemas.js';
import { STEERING_KV, SUBJECTS } from './subjects.js';

/** A subject godwit publishes JSON on (not a request it answers). */
export interface EventChannel {
  kind: 'event';
  /** AsyncAPI channel address: the subject with {parameters}. */
  address: string;
  parameters: Record<string, string>;
  /** What the subject is for; the first sentence is the summary. */
  description: string;
  publisher: 'controller' | 'agent' | 'client' | 'NATS JetStream (KV republish)';
  messageName: string;
  payload: z.ZodType;
  example: unknown;
}

/** The request subjects of the NATS request API, one per gRPC method (lib/asyncapi.ts lists them from the service definitions). */
export interface ApiChannels {
  kind: 'api';
}

/** A wildcard subscribers use for a family of subjects above. */
export interface WildcardOf {
  kind: 'wildcard';
  of: keyof typeof EVENT_CHANNELS | 'api';
}

export const EXAMPLE_MIGRATION_ID = 'm-mg3k2x1a-4f9c1e';

const exampleMigration = {
  id: EXAMPLE_MIGRATION_ID,
  request: { sourceHost: 'a', targetHost: 'b', workload: { pid: 4242, endpoints: [{ proto: 'tcp', address: '198.18.1.200', port: 7000 }] }, lockMode: 'EBPF', lockLeaseMs: 120000, allowUnsafeLock: false, postCopy: false },
  phase: 'DUMP',
  lockVersion: '1764650000000000',
  timings: [
    { phase: 'PREPARE', startedAtMs: 1764650000010, durationMs: 41.2, ok: true, steps: [{ host: 'a', step: 'inspect', ms: 12.5 }] },
    { phase: 'LOCK', startedAtMs: 1764650000052, durationMs: 3.1, ok: true, steps: [{ host: 'a', step: 'lock entries', ms: 0.4 }, { host: 'b', step: 'lock entries', ms: 0.5 }] },
    { phase: 'STEER', startedAtMs: 1764650000055, durationMs: 1.8, ok: true },
  ],
  imageBytes: 0,
  steer: { generation: 7, issuedAtMs: 1764650000056, backendIds: [3] },
  warnings: [],
  createdAtMs: 1764650000000,
  updatedAtMs: 1764650000057,
};

/** The subjects godwit publishes events on. */
export const EVENT_CHANNELS = {
  migrationEvent: {
    kind: 'event',
    address: 'godwit.events.migration.{migrationId}.{phase}',
    parameters: { migrationId: 'the migration id (m-...)', phase: 'the phase, lower case (pending, prepare, lock, steer, dump, transfer, restore, unlock, cleanup, done, rollback, failed)' },
    description:
      'One event per phase change of a migration: a phase STARTED, SUCCEEDED or FAILED, with the migration record as it stands. Kept in the JetStream stream GODWIT_EVENTS (subjects godwit.events.>) for automation that was not listening.',
    publisher: 'controller',
    messageName: 'MigrationPhaseEvent',
    payload: PhaseEventSchema,
    example: { migrationId: EXAMPLE_MIGRATION_ID, phase: 'DUMP', kind: 'STARTED', atMs: 1764650000057, durationMs: 0, detail: '', migration: exampleMigration },
  },
  heartbeat: {
    kind: 'event',
    address: 'godwit.hosts.{host}.heartbeat',
    parameters: { host: 'the host name (lib/subjects.ts HOST_NAME)' },
    description: "An agent's heartbeat, once a second: the controller's fleet registry is built from these (a host is ready while they come).",
    publisher: 'agent',
    messageName: 'Heartbeat',
    payload: HeartbeatSchema,
    example: { host: 'a', grpcAddress: '198.18.0.11:50051', criuVersion: '4.2', kernel: '6.8.0-49-generic', startedAtMs: 1764649990000, atMs: 1764650000000, dataAddress: '198.18.0.11', steeringGeneration: 7 },
  },
  steeringAck: {
    kind: 'event',
    address: 'godwit.hosts.{host}.steering.ack',
    parameters: { host: 'the host name' },
    description: "An agent's \"my data plane now holds steering generation G\", sent as soon as it does (the controller's UNLOCK waits for these).",
    publisher: 'agent',
    messageName: 'SteeringAck',
    payload: SteeringAckSchema,
    example: { host: 'b', generation: 7, atMs: 1764650000061.25, applyMs: 0.8 },
  },
  steeringTable: {
    kind: 'event',
    address: STEERING_KV.republish.subject,
    parameters: {},
    description:
      'The steering rule table, each generation the controller stores in the KV bucket godwit_steering (key "table"), republished by JetStream; the header Nats-Sequence is its revision. Agents follow it.',
    publisher: 'NATS JetStream (KV republish)',
    messageName: 'RuleTable',
    payload: RuleTableSchema,
    example: {
      generation: 7,
      lastServiceId: 1,
      lastBackendId: 3,
      services: [{ id: 1, proto: 'tcp', vip: '198.18.2.10', vipPort: 80, backends: [{ id: 3, address: '198.18.1.200', port: 7000, weight: 1, host: 'b', hostAddress: '198.18.0.12', draining: false }] }],
      addresses: [{ address: '198.18.1.200', host: 'b', hostAddress: '198.18.0.12' }],
    },
  },
  drainEvent: {
    kind: 'event',
    address: 'godwit.events.drain.{drainId}',
    parameters: { drainId: 'the drain id' },
    description: "A drain's record after each change: the host, each workload's state and target, how many moved and failed. The same record GetDrain and WatchDrain answer; kept in GODWIT_EVENTS with the migrations' events.",
    publisher: 'controller',
    messageName: 'DrainState',
    payload: DrainStateSchema,
    example: {
      id: 'd-mg3k2x1a-7c2e10',
      host: 'a',
      state: 'RUNNING',
      workloads: [
        { name: 'web', targetHost: 'b', state: 'MOVED', migrationId: EXAMPLE_MIGRATION_ID, error: '', freezeMs: 812.4 },
        { name: 'cache', targetHost: '', state: 'WAITING', migrationId: '', error: '', freezeMs: 0 },
      ],
      maxPerHost: 2,
      maxInFlight: 4,
      targets: [],
      createdAtMs: 1764650000000,
      updatedAtMs: 1764650003100,
      moved: 1,
      failed: 0,
    },
  },
  cordonEvent: {
    kind: 'event',
    address: 'godwit.events.host.{host}.cordon',
    parameters: { host: 'the host name' },
    description: 'A host cordoned (nothing is placed or moved there) or uncordoned, by an operator or by a drain.',
    publisher: 'controller',
    messageName: 'CordonRecord',
    payload: CordonRecordSchema,
    example: { host: 'a', cordoned: true, reason: 'drain d-mg3k2x1a-7c2e10', atMs: 1764650000000 },
  },
  apiStreamCancel: {
    kind: 'event',
    address: SUBJECTS.apiStreamCancel,
    parameters: {},
    description: 'A client of the NATS request API stops a server-streaming call early (WatchMigration...): the inbox is the reply subject it named. The controller stops sending there.',
    publisher: 'client',
    messageName: 'StreamCancel',
    payload: StreamCancelSchema,
    example: { inbox: '_INBOX.Zp3dHq6yQw1m2n3o4p5q6r' },
  },
} as const satisfies Record<string, EventChannel>;

/** Every key of SUBJECTS, and where the catalogue has it. */
export const SUBJECT_CATALOGUE: { [K in keyof typeof SUBJECTS]: EventChannel | ApiChannels | WildcardOf } = {
  heartbeat: EVENT_CHANNELS.heartbeat,
  allHeartbeats: { kind: 'wildcard', of: 'heartbeat' },
  migrationEvent: EVENT_CHANNELS.migrationEvent,
  allEvents: { kind: 'wildcard', of: 'migrationEvent' },
  steeringAck: EVENT_CHANNELS.steeringAck,
  allSteeringAcks: { kind: 'wildcard', of: 'steeringAck' },
  drainEvent: EVENT_CHANNELS.drainEvent,
  cordonEvent: EVENT_CHANNELS.cordonEvent,
  apiRequest: { kind: 'api' },
  apiStreamCancel: EVENT_CHANNELS.apiStreamCancel,
  allApi: { kind: 'wildcard', of: 'api' },
};
