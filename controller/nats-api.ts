/**
 * The NATS request API: every method of the services the controller serves over gRPC is also a
 * NATS request subject, `godwit.api.v1.<Method>` (lib/subjects.ts), for automation that only
 * speaks NATS. Built over the service definitions, not method by method: a request's JSON body
 * becomes the very request object the gRPC server would hand the handler (checked against the
 * proto's fields, then through the method's own protobuf serializer and deserializer), the same
 * handler runs (one validation path), and its answer goes back as gRPC's client would see it.
 * Replies are lib/api-frames.ts frames.
 *
 * Server streaming (WatchMigration, any Watch*): the request names its reply inbox, as NATS
 * requests do; every message the handler writes is published there as a `result` frame, then
 * one `status` frame ends the stream. A client that stops early publishes `{ "inbox": ... }` on
 * `godwit.api.v1.stream.cancel`; otherwise the stream runs until the handler ends it (a watch
 * ends with its migration).
 */
import * as grpc from '@grpc/grpc-js';
import type { MessageTypeDefinition, PackageDefinition } from '@grpc/proto-loader';
import { EventEmitter } from 'node:events';
import { statusFrame, OK_FRAME } from '../lib/api-frames.js';
import type { Bus, BusRequest } from '../lib/bus.js';
import { InvalidArgumentError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import { toServiceError } from '../lib/rpc.js';
import { SUBJECTS } from '../lib/subjects.js';

/** A gRPC service as the controller serves it: its definition, its handlers, and the package its types live in. */
export interface ServedService {
  definition: grpc.ServiceDefinition;
  handlers: grpc.UntypedServiceImplementation;
  types: PackageDefinition;
}

/** Requests are shared among controllers subscribed in this queue group. */
const QUEUE = 'godwit-controller';

export class NatsApi {
  private readonly stops: (() => void)[] = [];
  /** Running streams by their reply inbox: what a cancel stops. */
  private readonly streams = new Map<string, () => void>();

  constructor(
    private readonly bus: Bus,
    private readonly log: Logger,
  ) {}

  /** Serves every method of `services`; throws if two services name a method alike (their subjects would clash). */
  start(services: readonly ServedService[]): string[] {
    const methods = new Map<string, ServedService>();
    for (const s of services)
      for (const name of Object.keys(s.definition)) {
        if (methods.has(name)) throw new Error(`two services define method ${name}: its NATS subject ${SUBJECTS.apiRequest(name)} would be ambiguous`);
        methods.set(name, s);
      }
    for (const [name, s] of methods) {
      const def = s.definition[name] as grpc.MethodDefinition<object, object>;
      const handler = s.handlers[name];
      if (!handler) throw new Error(`no handler for ${def.path}`);
      this.stops.push(this.bus.serve(SUBJECTS.apiRequest(name), (req) => this.answer(name, def, handler, s.types, req), QUEUE));
    }
    this.stops.push(
      this.bus.serve(SUBJECTS.apiStreamCancel, (req) => {
        const inbox = (req.body as { inbox?: unknown } | undefined)?.inbox;
        if (typeof inbox === 'string') this.streams.get(inbox)?.();
      }),
    );
    return [...methods.keys()];
  }

  stop(): void {
    for (const s of this.stops.splice(0)) s();
    for (const cancel of [...this.streams.values()]) cancel();
  }

  private answer(name: string, def: grpc.MethodDefinition<object, object>, handler: grpc.UntypedHandleCall, types: PackageDefinition, req: BusRequest): void {
    const log = this.log.child({ rpc: name, via: 'nats' });
    const errorFrame = (err: unknown) => {
      const se = statusOf(err);
      log.warn({ code: grpc.status[se.code], err: se.details }, 'rpc failed');
      return statusFrame(se.code, se.details);
    };
    // Answers as gRPC's client reads them: through the method's own serializer, with defaults.
    const asClientSees = (res: object) => def.responseDeserialize(Buffer.from(def.responseSerialize(res)));
    try {
      const request = decodeRequest(def, types, req);
      const base = { request, metadata: new grpc.Metadata(), cancelled: false, getPeer: () => `nats:${req.replySubject ?? ''}`, getPath: () => def.path, getDeadline: () => Infinity, sendMetadata: () => undefined };
      if (!def.requestStream && !def.responseStream) {
        const call = Object.assign(new EventEmitter(), base);
        (handler as grpc.handleUnaryCall<object, object>)(call as unknown as grpc.ServerUnaryCall<object, object>, (err, value) =>
          req.reply(err ? errorFrame(err) : { result: asClientSees(value ?? {}) }),
        );
      } else if (!def.requestStream && def.responseStream) {
        // A stream nobody can read (no reply subject) is not started.
        if (req.replySubject) this.stream(req.replySubject, req, Object.assign(new EventEmitter(), base), asClientSees, errorFrame, handler as grpc.handleServerStreamingCall<object, object>);
      } else {
        req.reply(statusFrame(grpc.status.UNIMPLEMENTED, `${def.path} streams requests; the NATS request API carries unary and server-streaming methods only`));
      }
    } catch (err) {
      req.reply(errorFrame(err));
    }
  }

  /** Runs a server-streaming handler with a call whose writes become frames on the requester's inbox. */
  private stream(
    inbox: string,
    req: BusRequest,
    base: EventEmitter & { cancelled: boolean },
    asClientSees: (res: object) => object,
    errorFrame: (err: unknown) => unknown,
    handler: grpc.handleServerStreamingCall<object, object>,
  ): void {
    let ended = false;
    const finish = (frame: unknown) => {
      if (ended) return;
      ended = true;
      this.streams.delete(inbox);
      if (frame !== undefined) req.reply(frame);
      call.emit('close');
    };
    const call = Object.assign(base, {
      write: (msg: object) => {
        if (!ended) req.reply({ result: asClientSees(msg) });
        return true;
      },
      end: () => finish(OK_FRAME),
      destroy: (err?: unknown) => finish(err ? errorFrame(err) : OK_FRAME),
    });
    // A handler ends a stream with a status by emitting 'error', as grpc-js's server stream takes it.
    call.on('error', (err: unknown) => finish(errorFrame(err)));
    this.streams.set(inbox, () => {
      if (ended) return;
      call.cancelled = true;
      call.emit('cancelled');
      finish(undefined);
    });
    handler(call as unknown as grpc.ServerWritableStream<object, object>);
  }
}

/**
 * The status a gRPC client would get for what a handler answered with: handlers pass a status
 * object ({ code, details }, lib/rpc.ts handleUnary) or an Error carrying one; what carries none
 * is reported as grpc-js reports it.
 */
function statusOf(err: unknown): { code: grpc.status; details: string } {
  if (typeof err === 'object' && err !== null && typeof (err as { code?: unknown }).code === 'number') {
    const e = err as { code: grpc.status; details?: string; message?: string };
    return { code: e.code, details: e.details ?? e.message ?? '' };
  }
  const se = toServiceError(err);
  return { code: se.code ?? grpc.status.UNKNOWN, details: se.details ?? '' };
}

/**
 * The request object gRPC would hand the handler: field names checked against the proto
 * (lowerCamelCase as in proto3 JSON, or the .proto's snake_case), then the method's own
 * serializer and deserializer (protobuf's fromObject: defaults, enums by name, 64-bit as strings).
 */
export function decodeRequest(def: grpc.MethodDefinition<object, object>, types: PackageDefinition, req: Pick<BusRequest, 'body' | 'malformed'>): object {
  if (req.malformed !== undefined) throw new InvalidArgumentError('body', `the request body is not JSON: ${req.malformed}`);
  const body = req.body ?? {};
  const typeName = requestTypeName(def, types);
  const normalized = typeName ? normalizeFields(types, typeName, body, '') : body;
  try {
    return def.requestDeserialize(Buffer.from(def.requestSerialize(normalized as object)));
  } catch (err) {
    throw new InvalidArgumentError('body', `the request body does not fit ${typeName ?? 'the request type'}: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** The full name of a method's request type ("godwit.v1.MigrateRequest"), from its service's descriptor. */
function requestTypeName(def: grpc.MethodDefinition<object, object>, types: PackageDefinition): string | undefined {
  const [, service, method] = def.path.split('/');
  const svc = types[service] as unknown as Record<string, { requestType?: MessageTypeDefinition<object, object> }> | undefined;
  const name = (svc?.[method]?.requestType?.type as { name?: string } | undefined)?.name;
  return name ? resolveType(types, name, service) : undefined;
}

interface FieldDescriptor {
  name: string;
  label: string;
  type: string;
  typeName: string;
}

function resolveType(types: PackageDefinition, name: string, near: string): string | undefined {
  const bare = name.replace(/^\./, '');
  if (types[bare]) return bare;
  if (types[`${near}.${bare}`]) return `${near}.${bare}`;
  const pkg = near.split('.').slice(0, -1).join('.');
  if (types[`${pkg}.${bare}`]) return `${pkg}.${bare}`;
  return Object.keys(types).find((k) => k.endsWith(`.${bare}`));
}

const camel = (key: string) => key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());

/**
 * Renames snake_case keys to the proto's lowerCamelCase and rejects keys the message does not
 * have (protobuf's fromObject would drop them silently: a misspelt field must not be ignored).
 */
function normalizeFields(types: PackageDefinition, typeName: string, value: unknown, path: string): unknown {
  const t = types[typeName] as MessageTypeDefinition<object, object> | undefined;
  const fields = (t?.type as { field?: FieldDescriptor[] } | undefined)?.field;
  if (!fields) return value;
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new InvalidArgumentError(path || 'body', `${path || 'the request body'} must be a JSON object (${typeName})`);
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(value)) {
    const field = fields.find((f) => f.name === camel(key));
    const at = path ? `${path}.${key}` : key;
    if (!field) throw new InvalidArgumentError(at, `${typeName} has no field "${key}" (fields: ${fields.map((f) => f.name).join(', ')})`);
    if (field.type === 'TYPE_MESSAGE' && v !== null && v !== undefined) {
      const sub = resolveType(types, field.typeName, typeName);
      out[field.name] =
        field.label === 'LABEL_REPEATED' && Array.isArray(v) ? v.map((x, i) => (sub ? normalizeFields(types, sub, x, `${at}[${i}]`) : x)) : sub ? normalizeFields(types, sub, v, at) : v;
    } else out[field.name] = v;
  }
  return out;
}
