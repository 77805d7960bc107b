/**
 * NATS users and subject permissions of a godwit fleet, for nats-server's configuration: one
 * user per identity, named by the godwit URI in its certificate (nats-server's
 * `verify_and_map` takes a client certificate's URI SAN as the user), so no passwords exist.
 *
 * - controller: everything godwit, JetStream and KV (it alone writes the buckets);
 * - agent <h>: publishes only under godwit.hosts.<h>. (heartbeat, steering acks), reads the
 *   steering table (stream info, direct get, the republished subject);
 * - clients (automation): publish requests on godwit.api.>, read events, heartbeats and KV;
 *   never publish events or write a bucket.
 * Subjects another module adds must be added here too: anything not allowed is refused.
 */
import { identityUri, type Identity } from './identity.js';
import { EVENTS_STREAM, STEERING_BUCKET, STEERING_KV, SUBJECTS } from './subjects.js';

export interface NatsPermissions {
  publish: { allow: string[] };
  subscribe: { allow: string[] };
}

/** The request API other modules serve on NATS (issue 14): clients may publish requests here. */
export const API_REQUESTS = 'godwit.api.>';

const stream = (name: string) => [
  `$JS.API.STREAM.INFO.${name}`,
  `$JS.API.STREAM.MSG.GET.${name}`,
  `$JS.API.DIRECT.GET.${name}`,
  `$JS.API.DIRECT.GET.${name}.>`,
];

export function natsPermissions(id: Identity): NatsPermissions {
  switch (id.role) {
    case 'controller': {
      const all = ['godwit.>', '$JS.>', '$KV.>', '_INBOX.>'];
      return { publish: { allow: all }, subscribe: { allow: all } };
    }
    case 'agent':
      return {
        publish: { allow: [`godwit.hosts.${id.host}.>`, '$JS.API.INFO', ...stream(`KV_${STEERING_BUCKET}`)] },
        subscribe: { allow: [STEERING_KV.republish.subject, '_INBOX.>'] },
      };
    case 'client':
      return {
        publish: {
          allow: [
            API_REQUESTS,
            '$JS.API.INFO',
            '$JS.API.STREAM.INFO.>',
            '$JS.API.STREAM.MSG.GET.>',
            '$JS.API.DIRECT.GET.>',
            // Reading the event stream with a consumer of its own.
            `$JS.API.CONSUMER.CREATE.${EVENTS_STREAM}`,
            `$JS.API.CONSUMER.CREATE.${EVENTS_STREAM}.>`,
            `$JS.API.CONSUMER.INFO.${EVENTS_STREAM}.>`,
            `$JS.API.CONSUMER.DELETE.${EVENTS_STREAM}.>`,
            `$JS.API.CONSUMER.MSG.NEXT.${EVENTS_STREAM}.>`,
            `$JS.ACK.${EVENTS_STREAM}.>`,
          ],
        },
        subscribe: { allow: [SUBJECTS.allEvents, SUBJECTS.allHeartbeats, SUBJECTS.allSteeringAcks, STEERING_KV.republish.subject, '_INBOX.>'] },
      };
    case 'nats':
      return { publish: { allow: [] }, subscribe: { allow: [] } };
  }
}

export interface NatsServerConfigOptions {
  host: string;
  port: number;
  storeDir: string;
  /** The server's own identity folder (certificate issued with --role nats and its addresses). */
  tls: { ca: string; cert: string; key: string };
  /** Every identity that may connect. */
  users: Identity[];
}

/**
 * A nats-server configuration (JSON, which nats-server reads as its config format; quoted
 * strings keep `$JS` from being taken for a variable): TLS required with a client certificate
 * from the fleet's CA, one user per identity with its permissions.
 */
export function natsServerConfig(o: NatsServerConfigOptions): string {
  return JSON.stringify(
    {
      host: o.host,
      port: o.port,
      jetstream: { store_dir: o.storeDir },
      tls: { cert_file: o.tls.cert, key_file: o.tls.key, ca_file: o.tls.ca, verify_and_map: true, timeout: 5 },
      authorization: { users: o.users.map((id) => ({ user: identityUri(id), permissions: natsPermissions(id) })) },
    },
    null,
    2,
  );
}
