/**
 * GodwitClient: the typed client of the controller's gRPC API for TypeScript programs
 * (`import { GodwitClient } from 'godwit/client'`), the CLI and the lab.
 *
 *   const godwit = new GodwitClient({ address: 'ctl:50050' });
 *   const m = await godwit.migrate({ workloadName: 'web', targetHost: 'b' });
 *   for await (const e of godwit.watchMigration(m.id)) console.log(e.phase, e.kind);
 *   await godwit.call('ListHosts', {});            // any unary method of Controller or Steering, by name
 *   godwit.close();
 *
 * Unary calls are promises with a deadline (options.deadlineMs, per call or for the client);
 * watches are async iterators (break to stop). A call that fails with UNAVAILABLE (the
 * controller is restarting, the network blinked) is retried with exponential backoff and
 * jitter until its deadline; a watch that loses its stream with UNAVAILABLE is opened again
 * (its first message, the current state, then comes again). Errors are grpc-js ServiceErrors:
 * `err.code` is a gRPC status, `err.details` says why.
 */
import * as grpc from '@grpc/grpc-js';
import type { ControllerClient } from '../proto/gen/godwit/v1/Controller.js';
import type { GetLogsResponse__Output } from '../proto/gen/godwit/v1/GetLogsResponse.js';
import type { ListHostsResponse__Output } from '../proto/gen/godwit/v1/ListHostsResponse.js';
import type { ListMigrationsResponse__Output } from '../proto/gen/godwit/v1/ListMigrationsResponse.js';
import type { ListWorkloadsResponse__Output } from '../proto/gen/godwit/v1/ListWorkloadsResponse.js';
import type { MigrateRequest } from '../proto/gen/godwit/v1/MigrateRequest.js';
import type { Migration__Output } from '../proto/gen/godwit/v1/Migration.js';
import type { MigrationEvent__Output } from '../proto/gen/godwit/v1/MigrationEvent.js';
import type { RunRequest } from '../proto/gen/godwit/v1/RunRequest.js';
import type { SteeringClient } from '../proto/gen/godwit/v1/Steering.js';
import type { WorkloadInfo__Output } from '../proto/gen/godwit/v1/WorkloadInfo.js';
import { ControllerService, SteeringService, controllerClient, isServiceError, steeringClient } from './rpc.js';

export type { Migration__Output as Migration } from '../proto/gen/godwit/v1/Migration.js';
export type { MigrationEvent__Output as MigrationEvent } from '../proto/gen/godwit/v1/MigrationEvent.js';

/** Every method the clients have, PascalCase as in the .proto (the generated clients also have camelCase aliases). */
type ProtoMethods<C> = { [K in keyof C & string]: K extends Capitalize<K> ? (K extends keyof grpc.Client ? never : K) : never }[keyof C & string];
// Overloaded methods: `infer` reads the last overload, (argument, callback) for unary methods and (argument, options?) for streams.
type UnaryOf<C, K extends keyof C> = C[K] extends (argument: infer Req, callback: grpc.requestCallback<infer Res>) => grpc.ClientUnaryCall ? { req: Req; res: Res } : never;
type StreamOf<C, K extends keyof C> = C[K] extends (argument: infer Req, options?: grpc.CallOptions) => grpc.ClientReadableStream<infer Res> ? { req: Req; res: Res } : never;

type Clients = { controller: ControllerClient; steering: SteeringClient };
type AnyMethod = ProtoMethods<ControllerClient> | ProtoMethods<SteeringClient>;
type Sig<M extends AnyMethod, F extends 'unary' | 'stream'> = M extends ProtoMethods<ControllerClient>
  ? F extends 'unary' ? UnaryOf<ControllerClient, M> : StreamOf<ControllerClient, M>
  : M extends ProtoMethods<SteeringClient>
    ? F extends 'unary' ? UnaryOf<SteeringClient, M> : StreamOf<SteeringClient, M>
    : never;

/** Methods answered with one message. */
export type UnaryMethod = { [M in AnyMethod]: Sig<M, 'unary'> extends never ? never : M }[AnyMethod];
/** Methods answered with a stream of messages (WatchMigration, WatchSteering, ...). */
export type StreamMethod = { [M in AnyMethod]: Sig<M, 'stream'> extends never ? never : M }[AnyMethod];
export type RequestOf<M extends AnyMethod> = M extends UnaryMethod ? Sig<M, 'unary'>['req'] : Sig<M, 'stream'>['req'];
export type ResponseOf<M extends AnyMethod> = M extends UnaryMethod ? Sig<M, 'unary'>['res'] : Sig<M, 'stream'>['res'];

export interface RetryPolicy {
  /** First wait after an UNAVAILABLE; each next one is `multiplier` times longer, up to maxBackoffMs. */
  initialBackoffMs: number;
  maxBackoffMs: number;
  multiplier: number;
  /** Attempts in all, the first included (the deadline still bounds them). */
  maxAttempts: number;
}

export interface GodwitClientOptions {
  /** The controller's gRPC address, host:port or unix:/path (default: $GODWIT_CONTROLLER, else 127.0.0.1:50050). */
  address?: string;
  /** A unary call's deadline, retries included (default 30 s). */
  deadlineMs?: number;
  /** Retries on UNAVAILABLE; false: none. */
  retry?: Partial<RetryPolicy> | false;
}

export interface CallOptions {
  /** This call's deadline, retries included (default: the client's). */
  deadlineMs?: number;
  retry?: Partial<RetryPolicy> | false;
}

export interface WatchOptions {
  /** The stream's deadline (default: none; a watch of a migration ends with it). */
  deadlineMs?: number;
  retry?: Partial<RetryPolicy> | false;
}

export const DEFAULT_CONTROLLER_ADDRESS = '127.0.0.1:50050';
const DEFAULT_DEADLINE_MS = 30_000;
export const DEFAULT_RETRY: RetryPolicy = { initialBackoffMs: 100, maxBackoffMs: 5_000, multiplier: 2, maxAttempts: 8 };
const TERMINAL = new Set(['DONE', 'FAILED', 'NEEDS_ATTENTION']);

/** Which service defines a method (the NATS request API keeps their names apart too). */
const SERVICE_OF: Record<string, keyof Clients> = Object.fromEntries([
  ...Object.keys(ControllerService).map((m) => [m, 'controller']),
  ...Object.keys(SteeringService).map((m) => [m, 'steering']),
]);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class GodwitClient {
  readonly address: string;
  private readonly clients: Clients;
  private readonly deadlineMs: number;
  private readonly retry: RetryPolicy | false;

  constructor(opts: GodwitClientOptions = {}) {
    this.address = opts.address ?? process.env.GODWIT_CONTROLLER ?? DEFAULT_CONTROLLER_ADDRESS;
    this.deadlineMs = opts.deadlineMs ?? DEFAULT_DEADLINE_MS;
    this.retry = opts.retry === false ? false : { ...DEFAULT_RETRY, ...opts.retry };
    // One channel for both services: steeringClient and controllerClient share grpc-js's subchannel pool.
    this.clients = { controller: controllerClient(this.address), steering: steeringClient(this.address) };
  }

  /** Any unary method of the Controller or Steering service by its .proto name. */
  async call<M extends UnaryMethod>(method: M, request: RequestOf<M>, opts: CallOptions = {}): Promise<ResponseOf<M>> {
    const deadline = Date.now() + (opts.deadlineMs ?? this.deadlineMs);
    const policy = this.policy(opts.retry);
    const client = this.clientFor(method);
    const fn = (client as unknown as Record<string, Function>)[method];
    for (let attempt = 1, backoff = policy ? policy.initialBackoffMs : 0; ; attempt++) {
      try {
        return await new Promise<ResponseOf<M>>((resolve, reject) =>
          fn.call(client, request, new grpc.Metadata(), { deadline }, (err: grpc.ServiceError | null, res: ResponseOf<M>) => (err ? reject(err) : resolve(res))),
        );
      } catch (err) {
        const wait = policy ? jittered(backoff) : 0;
        if (!policy || !retryable(err) || attempt >= policy.maxAttempts || Date.now() + wait >= deadline) throw err;
        await sleep(wait);
        backoff = Math.min(policy.maxBackoffMs, backoff * policy.multiplier);
      }
    }
  }

  /** Any server-streaming method by its .proto name, as an async iterator; breaking out cancels the stream. */
  async *stream<M extends StreamMethod>(method: M, request: RequestOf<M>, opts: WatchOptions = {}): AsyncGenerator<ResponseOf<M>> {
    const policy = this.policy(opts.retry);
    const client = this.clientFor(method);
    const fn = (client as unknown as Record<string, Function>)[method];
    const deadline = opts.deadlineMs ? Date.now() + opts.deadlineMs : Infinity;
    for (let attempt = 1, backoff = policy ? policy.initialBackoffMs : 0; ; attempt++) {
      const call = fn.call(client, request, { deadline }) as grpc.ClientReadableStream<ResponseOf<M>>;
      let received = false;
      try {
        for await (const message of call as AsyncIterable<ResponseOf<M>>) {
          received = true;
          yield message;
        }
        return;
      } catch (err) {
        const wait = policy ? jittered(backoff) : 0;
        if (!policy || !retryable(err) || attempt >= policy.maxAttempts || Date.now() + wait >= deadline) throw err;
        await sleep(wait);
        // A stream that delivered something was up: start its backoff again.
        backoff = received ? policy.initialBackoffMs : Math.min(policy.maxBackoffMs, backoff * policy.multiplier);
        if (received) attempt = 0;
      } finally {
        call.cancel();
      }
    }
  }

  migrate(request: MigrateRequest, opts?: CallOptions): Promise<Migration__Output> {
    return this.call('Migrate', request, opts);
  }

  /** A migration in NEEDS_ATTENTION rolled back again, once both its hosts have an agent again. */
  retryMigration(id: string, opts?: CallOptions): Promise<Migration__Output> {
    return this.call('RetryMigration', { id }, opts);
  }

  getMigration(id: string, opts?: CallOptions): Promise<Migration__Output> {
    return this.call('GetMigration', { id }, opts);
  }

  listMigrations(opts?: CallOptions): Promise<ListMigrationsResponse__Output> {
    return this.call('ListMigrations', {}, opts);
  }

  listHosts(opts?: CallOptions): Promise<ListHostsResponse__Output> {
    return this.call('ListHosts', {}, opts);
  }

  /** `godwit run`: the agent answers once the workload's TCP endpoints listen (or 10 s passed). */
  runWorkload(request: RunRequest, opts: CallOptions = {}): Promise<WorkloadInfo__Output> {
    return this.call('RunWorkload', request, { deadlineMs: 90_000, ...opts });
  }

  listWorkloads(opts?: CallOptions): Promise<ListWorkloadsResponse__Output> {
    return this.call('ListWorkloads', {}, opts);
  }

  /** A workload's output, or a migration's CRIU logs from both hosts. */
  getLogs(name: string, maxBytes = 0, opts?: CallOptions): Promise<GetLogsResponse__Output> {
    return this.call('GetLogs', { name, maxBytes }, opts);
  }

  /** The migration's events: a snapshot first, then each phase change, until it ends. */
  watchMigration(id: string, opts?: WatchOptions): AsyncGenerator<MigrationEvent__Output> {
    return this.stream('WatchMigration', { id }, opts);
  }

  /** Waits for the migration to end and returns its final state; `onEvent` sees each event. */
  async waitMigration(id: string, onEvent?: (e: MigrationEvent__Output) => void, opts?: WatchOptions): Promise<Migration__Output> {
    let last: Migration__Output | null = null;
    for await (const e of this.watchMigration(id, opts)) {
      onEvent?.(e);
      last = e.migration;
      if (last && TERMINAL.has(last.phase as string)) break;
    }
    // The stream may end without a terminal event if the controller went away: ask directly.
    return last && TERMINAL.has(last.phase as string) ? last : this.getMigration(id);
  }

  close(): void {
    this.clients.controller.close();
    this.clients.steering.close();
  }

  private clientFor(method: string): grpc.Client {
    const service = SERVICE_OF[method];
    if (!service) throw new Error(`no gRPC method ${method} in godwit.v1.Controller or godwit.v1.Steering`);
    return this.clients[service];
  }

  private policy(override: Partial<RetryPolicy> | false | undefined): RetryPolicy | false {
    if (override === false) return false;
    if (override === undefined) return this.retry;
    return { ...(this.retry || DEFAULT_RETRY), ...override };
  }
}

function retryable(err: unknown): boolean {
  return isServiceError(err) && err.code === grpc.status.UNAVAILABLE;
}

/** Full jitter: a random wait up to the backoff, so clients that failed together do not retry together. */
function jittered(ms: number): number {
  return Math.round(ms / 2 + (Math.random() * ms) / 2);
}
