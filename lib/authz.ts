/**
 * Who may call what: one table from gRPC method path to the callers allowed, enforced for every
 * server lib/rpc.ts makes (newServer) by one server interceptor, before any handler runs.
 * A method missing from the table is refused for everyone (default deny): a method added to a
 * proto is unreachable until it is listed here, with the callers it is meant for.
 *
 * Callers are the identities of lib/identity.ts, by role; clients by access level. The
 * read-only client may call Get/List/Watch methods only. The agent role reaches one method of
 * its peers (ReceiveImage), and that one also wants the controller's token for the migration
 * (lib/migration-token.ts, checked by the handler: it needs the stream's migration id).
 */
import * as grpc from '@grpc/grpc-js';
import { describeIdentity, type Identity } from './identity.js';
import { currentSecurity, peerIdentity, type Security } from './tls.js';

export type Caller = 'controller' | 'agent' | 'client-admin' | 'client-read';

const CONTROLLER: readonly Caller[] = ['controller'];
const AGENT: readonly Caller[] = ['agent'];
const ADMIN: readonly Caller[] = ['client-admin'];
const READ: readonly Caller[] = ['client-admin', 'client-read'];
const ANYONE: readonly Caller[] = ['controller', 'agent', 'client-admin', 'client-read'];

/** Method path (`/package.Service/Method`) -> who may call it. Add a method's entry with the method. */
export const METHOD_CALLERS: Readonly<Record<string, readonly Caller[]>> = {
  // The agent API: only the controller drives a host.
  '/godwit.v1.Agent/Probe': CONTROLLER,
  '/godwit.v1.Agent/InspectWorkload': CONTROLLER,
  '/godwit.v1.Agent/Lock': CONTROLLER,
  '/godwit.v1.Agent/Unlock': CONTROLLER,
  '/godwit.v1.Agent/Checkpoint': CONTROLLER,
  '/godwit.v1.Agent/SendImage': CONTROLLER,
  '/godwit.v1.Agent/Restore': CONTROLLER,
  '/godwit.v1.Agent/Release': CONTROLLER,
  '/godwit.v1.Agent/Abort': CONTROLLER,
  '/godwit.v1.Agent/SteeringState': CONTROLLER,
  '/godwit.v1.Agent/RunWorkload': CONTROLLER,
  '/godwit.v1.Agent/WorkloadOutput': CONTROLLER,
  '/godwit.v1.Agent/MigrationLogs': CONTROLLER,
  '/godwit.v1.Agent/CheckFiles': CONTROLLER,
  '/godwit.v1.Agent/DiscardImage': CONTROLLER,
  // Agent to agent: the source streams the image (plus the controller's token, checked in the handler).
  '/godwit.v1.Agent/ReceiveImage': AGENT,

  // The controller API: operators and automation.
  '/godwit.v1.Controller/Migrate': ADMIN,
  '/godwit.v1.Controller/GetMigration': READ,
  '/godwit.v1.Controller/ListMigrations': READ,
  '/godwit.v1.Controller/WatchMigration': READ,
  '/godwit.v1.Controller/ListHosts': READ,
  '/godwit.v1.Controller/RunWorkload': ADMIN,
  '/godwit.v1.Controller/ListWorkloads': READ,
  '/godwit.v1.Controller/GetLogs': READ,
  // Fleet operations.
  '/godwit.v1.Controller/RegisterWorkload': ADMIN,
  '/godwit.v1.Controller/CordonHost': ADMIN,
  '/godwit.v1.Controller/UncordonHost': ADMIN,
  '/godwit.v1.Controller/Drain': ADMIN,
  '/godwit.v1.Controller/CancelMigration': ADMIN,
  '/godwit.v1.Controller/RetryMigration': ADMIN,
  '/godwit.v1.Controller/GetDrain': READ,
  '/godwit.v1.Controller/ListDrains': READ,
  '/godwit.v1.Controller/WatchDrain': READ,
  '/godwit.v1.Steering/CreateService': ADMIN,
  '/godwit.v1.Steering/UpdateService': ADMIN,
  '/godwit.v1.Steering/DeleteService': ADMIN,
  '/godwit.v1.Steering/GetService': READ,
  '/godwit.v1.Steering/ListServices': READ,
  '/godwit.v1.Steering/WatchSteering': READ,

  // Standard services any fleet member may ask (they reveal no more than that the server is up and its schema).
  '/grpc.health.v1.Health/Check': ANYONE,
  '/grpc.health.v1.Health/Watch': ANYONE,
  '/grpc.health.v1.Health/List': ANYONE,
  '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo': ANYONE,
  '/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo': ANYONE,
};

export function callerOf(id: Identity | undefined): Caller | undefined {
  switch (id?.role) {
    case 'controller':
      return 'controller';
    case 'agent':
      return 'agent';
    case 'client':
      return id.access === 'admin' ? 'client-admin' : 'client-read';
    default:
      return undefined; // no certificate, or the NATS server's: calls nothing
  }
}

export type Decision = { ok: true } | { ok: false; code: grpc.status; details: string };

/** The decision for one call. On the insecure path there are no identities and everything is allowed. */
export function authorize(path: string, peer: Identity | undefined, security: Security = currentSecurity()): Decision {
  if (security.kind === 'insecure') return { ok: true };
  const caller = callerOf(peer);
  if (!caller) return { ok: false, code: grpc.status.UNAUTHENTICATED, details: `${path}: ${describeIdentity(peer)} has no godwit identity (a certificate from the fleet's CA with a godwit:// URI)` };
  const allowed = METHOD_CALLERS[path];
  if (!allowed) return { ok: false, code: grpc.status.PERMISSION_DENIED, details: `${path} is not in the authorization table (lib/authz.ts): refused for everyone` };
  if (!allowed.includes(caller)) return { ok: false, code: grpc.status.PERMISSION_DENIED, details: `${path} needs the role ${allowed.join(' or ')}; the caller is ${describeIdentity(peer)}` };
  return { ok: true };
}

/**
 * The server interceptor that applies the table: a refused call ends with its status as soon
 * as its metadata arrives, before the handler sees a message.
 */
export function authorizationInterceptor(onRefused?: (path: string, d: Extract<Decision, { ok: false }>, peer: Identity | undefined) => void): grpc.ServerInterceptor {
  return (method, call) =>
    new grpc.ServerInterceptingCall(call, {
      start: (next) => {
        next({
          onReceiveMetadata: (metadata, pass) => {
            const peer = peerIdentity(call);
            const d = authorize(method.path, peer);
            if (d.ok) return pass(metadata);
            onRefused?.(method.path, d, peer);
            call.sendStatus({ code: d.code, details: d.details, metadata: new grpc.Metadata() });
          },
        });
      },
    });
}
