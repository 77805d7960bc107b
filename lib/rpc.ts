import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ProtoGrpcType as AgentProto } from '../proto/gen/agent.js';
import type { ProtoGrpcType as ControllerProto } from '../proto/gen/controller.js';
import type { ProtoGrpcType as SteeringProto } from '../proto/gen/steering.js';
import type { AgentClient } from '../proto/gen/godwit/v1/Agent.js';
import type { ControllerClient } from '../proto/gen/godwit/v1/Controller.js';
import type { SteeringClient } from '../proto/gen/godwit/v1/Steering.js';
import { authorizationInterceptor } from './authz.js';
import { GodwitError } from './errors.js';
import { describeIdentity } from './identity.js';
import { createLogger, type Logger } from './log.js';
import { channelCredentials, channelSecurityOptions, serverCredentials } from './tls.js';

/** The repository root, found from this file whether it runs from lib/ (tsx, vitest) or dist/lib/. */
export const REPO_ROOT = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'proto', 'godwit', 'v1'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find proto/godwit/v1 above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
  return dir;
})();

/** Must match the flags proto-loader-gen-types is run with (package.json "gen:proto"). */
export const LOADER_OPTIONS: protoLoader.Options = {
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [join(REPO_ROOT, 'proto')],
};

/**
 * Each proto file's package definition: the services' methods with their (de)serializers, and
 * the descriptors that server reflection and the NATS request API read.
 */
export const PROTO_PACKAGES = {
  agent: protoLoader.loadSync('godwit/v1/agent.proto', LOADER_OPTIONS),
  controller: protoLoader.loadSync('godwit/v1/controller.proto', LOADER_OPTIONS),
  steering: protoLoader.loadSync('godwit/v1/steering.proto', LOADER_OPTIONS),
} as const;

const load = <T>(pkg: protoLoader.PackageDefinition): T => grpc.loadPackageDefinition(pkg) as unknown as T;

const agentProto = load<AgentProto>(PROTO_PACKAGES.agent);
const controllerProto = load<ControllerProto>(PROTO_PACKAGES.controller);
const steeringProto = load<SteeringProto>(PROTO_PACKAGES.steering);

/** Marks a request whose bytes did not decode; refuseUndecodable answers it. */
const UNDECODABLE = Symbol('undecodable request');

/**
 * The service with each method's request decoding made total: bytes that are not a valid
 * message become a marked value instead of an exception, which grpc-js would answer with
 * INTERNAL. A client that sent them made the mistake, so refuseUndecodable answers
 * INVALID_ARGUMENT before any handler sees the request.
 */
function decodingGuarded<T extends grpc.ServiceDefinition>(def: T): T {
  const out: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, m] of Object.entries(def) as [string, grpc.MethodDefinition<unknown, unknown>][]) {
    out[name] = {
      ...m,
      requestDeserialize: (bytes: Buffer) => {
        try {
          return m.requestDeserialize(bytes);
        } catch (err) {
          return { [UNDECODABLE]: err instanceof Error ? err.message : String(err) };
        }
      },
    };
  }
  return out as T;
}

export const AgentService = decodingGuarded(agentProto.godwit.v1.Agent.service);
export const ControllerService = decodingGuarded(controllerProto.godwit.v1.Controller.service);
export const SteeringService = decodingGuarded(steeringProto.godwit.v1.Steering.service);

/** Answers a request (or a streamed message) that did not decode with INVALID_ARGUMENT. */
const refuseUndecodable: grpc.ServerInterceptor = (method, call) =>
  new grpc.ServerInterceptingCall(call, {
    start: (next) =>
      next({
        onReceiveMessage: (message: unknown, pass: (m: unknown) => void) => {
          if (typeof message !== 'object' || message === null || !(UNDECODABLE in message)) return pass(message);
          call.sendStatus({
            code: grpc.status.INVALID_ARGUMENT,
            details: `${method.path}: the request is not a valid protobuf message (${String((message as Record<symbol, unknown>)[UNDECODABLE])}); encode it as proto/godwit/v1 says`,
          });
        },
      }),
  });

/** The largest message a godwit server or client takes; gRPC answers a larger one RESOURCE_EXHAUSTED. */
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

/**
 * Keepalive so that a dead peer is noticed during long phases, not after the OS gives up. A
 * short reconnect backoff so that a peer that comes back is reached within seconds: grpc-js
 * backs off up to 120 s by default, and a channel that had failed for a while then fails every
 * call at once with its last error, long after the agent it names has restarted (a retried
 * rollback ended NEEDS_ATTENTION again that way, its host wait spent on the backoff).
 */
const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  'grpc.initial_reconnect_backoff_ms': 500,
  'grpc.max_reconnect_backoff_ms': 2_000,
  'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
};

// Credentials and their channel options come from lib/tls.ts: the process's chosen security.
export function agentClient(address: string): AgentClient {
  return new agentProto.godwit.v1.Agent(address, channelCredentials('agent'), { ...CHANNEL_OPTIONS, ...channelSecurityOptions() });
}

export function controllerClient(address: string): ControllerClient {
  return new controllerProto.godwit.v1.Controller(address, channelCredentials('controller'), { ...CHANNEL_OPTIONS, ...channelSecurityOptions() });
}

export function steeringClient(address: string): SteeringClient {
  return new steeringProto.godwit.v1.Steering(address, channelCredentials('controller'), { ...CHANNEL_OPTIONS, ...channelSecurityOptions() });
}

/**
 * A gRPC server for godwit's services. Every call passes the authorization table
 * (lib/authz.ts) first, when its metadata arrives, then undecodable requests are refused the
 * same way everywhere. Every godwit server is made here, so a service added to one later is
 * covered (and refused until its methods are in the table).
 */
export function newServer(options: grpc.ServerOptions = {}, log: Logger = createLogger('rpc')): grpc.Server {
  return new grpc.Server({
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    ...options,
    interceptors: [
      authorizationInterceptor((path, d, peer) => log.warn({ rpc: path, peer: describeIdentity(peer), code: grpc.status[d.code] }, 'call refused')),
      refuseUndecodable,
      ...(options.interceptors ?? []),
    ],
  });
}

/**
 * A client of any service on a godwit gRPC server (health, reflection), over the same channel
 * credentials and options as the godwit clients above.
 */
export function serviceClient(ctor: grpc.ServiceClientConstructor, address: string, expect: 'controller' | 'agent'): grpc.Client {
  return new ctor(address, channelCredentials(expect), { ...CHANNEL_OPTIONS, ...channelSecurityOptions() });
}

/**
 * Calls a unary method and returns its answer as a promise. `method` is named as a key of the
 * client so that request and response types follow from the generated client.
 */
export function unary<C extends grpc.Client, Req, Res>(
  client: C,
  method: (
    this: C,
    req: Req,
    md: grpc.Metadata,
    opts: grpc.CallOptions,
    cb: (err: grpc.ServiceError | null, res?: Res) => void,
  ) => grpc.ClientUnaryCall,
  req: Req,
  timeoutMs: number,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method.call(client, req, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) =>
      err ? reject(err) : resolve(res as Res),
    );
  });
}

/**
 * The longest status message a client gets. Messages quote what was wrong, and a request can
 * carry megabytes in one field; the message travels in an HTTP/2 trailer, and a trailer larger
 * than the peer's header limit never arrives: the client would wait out its deadline instead.
 */
const MAX_DETAILS_CHARS = 2048;

function details(text: string): string {
  return text.length <= MAX_DETAILS_CHARS ? text : `${text.slice(0, MAX_DETAILS_CHARS)}... (${text.length - MAX_DETAILS_CHARS} more characters)`;
}

/** Turns a thrown error into the status a client sees: GodwitErrors carry theirs; the rest are INTERNAL. */
export function toServiceError(err: unknown): Partial<grpc.StatusObject> {
  if (err instanceof GodwitError) return { code: err.code, details: details(err.message) };
  if (isServiceError(err)) return { code: err.code, details: details(err.details) };
  return { code: grpc.status.INTERNAL, details: details(err instanceof Error ? err.message : String(err)) };
}

/**
 * Ends a server stream with the status `err` maps to. An 'error' event is how grpc-js sends a
 * server stream's status; destroy() would end the stream with none, and the client would wait
 * out its deadline.
 */
export function endStreamWithError(call: grpc.ServerWritableStream<unknown, unknown>, err: unknown): void {
  call.emit('error', Object.assign(new Error(), toServiceError(err)));
}

export function isServiceError(err: unknown): err is grpc.ServiceError {
  return typeof err === 'object' && err !== null && 'code' in err && 'details' in err && 'metadata' in err;
}

/** Adapts an async function to a unary handler: answers with its result, or with its error's status. */
export function handleUnary<Req, Res>(
  log: Logger,
  name: string,
  fn: (req: Req) => Promise<Res>,
): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    fn(call.request).then(
      (res) => callback(null, res),
      (err) => {
        const se = toServiceError(err);
        log.warn({ rpc: name, code: grpc.status[se.code ?? 2], err: se.details }, 'rpc failed');
        callback(se);
      },
    );
  };
}

/** Binds a server to each address ("host:port" or "unix:/path") with the process's credentials (lib/tls.ts); resolves with the bound TCP port. */
export async function bindServer(server: grpc.Server, addresses: string[]): Promise<number> {
  let port = 0;
  for (const addr of addresses) {
    port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(addr, serverCredentials(), (err, p) => (err ? reject(err) : resolve(p))),
    );
  }
  return port;
}

export { grpc };
