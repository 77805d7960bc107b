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
} as const;

/** JetStream stream that keeps the events for automation that was not listening at the time. */
export const EVENTS_STREAM = 'GODWIT_EVENTS';
/** JetStream KV bucket: one key per migration, its latest recorded state. */
export const MIGRATIONS_BUCKET = 'godwit_migrations';

/** Host names become subject tokens and file names: keep them to a safe alphabet. */
export const HOST_NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;
