/**
 * Every NATS subject and bucket godwit uses, in one place: automation subscribes to these.
 */
export const SUBJECTS = {
  /** An agent's heartbeat, once a second: `godwit.hosts.<host>.heartbeat`. */
  heartbeat: (host: string) => `godwit.hosts.${host}.heartbeat`,
  allHeartbeats: 'godwit.hosts.*.heartbeat',
  /** One event per phase change of a migration: `godwit.events.migration.<id>.<phase>`. */
  migrationEvent: (id: string, phase: string) => `godwit.events.migration.${id}.${phase.toLowerCase()}`,
  allEvents: 'godwit.events.>',
  /** An agent's "my data plane now holds steering generation G": `godwit.hosts.<host>.steering.ack`. */
  steeringAck: (host: string) => `godwit.hosts.${host}.steering.ack`,
  allSteeringAcks: 'godwit.hosts.*.steering.ack',
  /** A drain's record after each change (controller/drain.ts): `godwit.events.drain.<id>`. */
  drainEvent: (id: string) => `godwit.events.drain.${id}`,
  /** A host cordoned or uncordoned (controller/cordon.ts): `godwit.events.host.<host>.cordon`. */
  cordonEvent: (host: string) => `godwit.events.host.${host}.cordon`,
  /**
   * The NATS request API: a controller gRPC method as a request subject,
   * `godwit.api.v1.<Method>` (controller/nats-api.ts; docs: README, "NATS request API").
   */
  apiRequest: (method: string) => `godwit.api.v1.${method}`,
  /** Where a client stops a server-streaming request early: `{ "inbox": <its reply subject> }`. */
  apiStreamCancel: 'godwit.api.v1.stream.cancel',
  allApi: 'godwit.api.v1.>',
} as const;

/** JetStream stream that keeps the events for automation that was not listening at the time. */
export const EVENTS_STREAM = 'GODWIT_EVENTS';
/** JetStream KV bucket: one key per migration, its latest recorded state. */
export const MIGRATIONS_BUCKET = 'godwit_migrations';
/**
 * JetStream KV bucket holding the steering rule table under one key (STEERING_TABLE_KEY): the
 * controller writes it with compare-and-set, every agent watches it (docs: README, "Fleet
 * propagation").
 */
export const STEERING_BUCKET = 'godwit_steering';
export const STEERING_TABLE_KEY = 'table';
/** How every opener of STEERING_BUCKET opens it (Bus.kv): agents and controllers follow the table through this. */
export const STEERING_KV = { republish: { key: STEERING_TABLE_KEY, subject: 'godwit.steering.table' } } as const;

/** JetStream KV bucket: one key per `godwit run` workload, where it runs (controller/workload-registry.ts). */
export const WORKLOADS_BUCKET = 'godwit_workloads';
/** JetStream KV bucket: one key per host ever cordoned, whether it is now (controller/cordon.ts). */
export const CORDONS_BUCKET = 'godwit_cordons';
/** JetStream KV bucket: one key per drain, its latest record (controller/drain-store.ts). */
export const DRAINS_BUCKET = 'godwit_drains';

/** Host names become subject tokens and file names: keep them to a safe alphabet. */
export const HOST_NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;
