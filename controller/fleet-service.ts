/**
 * The controller API's fleet operations: registering workloads started otherwise, cordoning
 * hosts, draining them, cancelling a migration. Validation here; the work in cordon.ts,
 * drain.ts, cancel.ts and workload-service.ts.
 */
import type * as grpc from '@grpc/grpc-js';
import type { ControllerHandlers } from '../proto/gen/godwit/v1/Controller.js';
import type { DrainRecord } from '../proto/gen/godwit/v1/DrainRecord.js';
import type { GetDrainRequest__Output } from '../proto/gen/godwit/v1/GetDrainRequest.js';
import type { Host } from '../proto/gen/godwit/v1/Host.js';
import { GodwitError, InvalidArgumentError, UnknownHostError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import { endStreamWithError, handleUnary } from '../lib/rpc.js';
import { HOST_NAME } from '../lib/subjects.js';
import { status } from '@grpc/grpc-js';
import type { MigrationCancels } from './cancel.js';
import type { CordonStore } from './cordon.js';
import type { DrainRunner } from './drain.js';
import { isDrainOver, type DrainState, type DrainStore } from './drain-store.js';
import type { MigrationStore } from './migration-store.js';
import type { HostRecord, HostRegistry } from './registry.js';
import { toWire } from './service.js';
import type { WorkloadRegistry } from './workload-registry.js';
import type { WorkloadService } from './workload-service.js';

export class DrainNotFoundError extends GodwitError {
  readonly code = status.NOT_FOUND;
  constructor(readonly drainId: string) {
    super(`no drain with id "${drainId}"`);
    this.name = 'DrainNotFoundError';
  }
}

/** An operator's words on why a host is cordoned: a line, shown in ListHosts. */
const MAX_REASON_CHARS = 512;

export type FleetHandlers = Pick<ControllerHandlers, 'RegisterWorkload' | 'CordonHost' | 'UncordonHost' | 'Drain' | 'GetDrain' | 'ListDrains' | 'WatchDrain' | 'CancelMigration'>;

export interface FleetServiceOptions {
  hosts: HostRegistry;
  cordons: CordonStore;
  drains: DrainStore;
  runner: DrainRunner;
  cancels: MigrationCancels;
  migrations: MigrationStore;
  workloadRegistry: WorkloadRegistry;
  workloads: WorkloadService;
  log: Logger;
  /** The leader lease (controller/leader.ts): a standby refuses writes; absent, this controller always leads. */
  leader?: { requireLeader(): void };
}

export class FleetService {
  constructor(private readonly opts: FleetServiceOptions) {}

  handlers(): FleetHandlers {
    const { log, workloads, cordons, runner, drains, cancels, migrations, leader } = this.opts;
    // A write: refused with UNAVAILABLE naming the leader on a standby, as the controller's own writes are.
    const write = <Req, Res>(name: string, fn: (req: Req) => Promise<Res>) =>
      handleUnary<Req, Res>(log, name, async (req) => (leader?.requireLeader(), fn(req)));
    return {
      RegisterWorkload: write('RegisterWorkload', async (req) => workloads.register(req)),
      CordonHost: write('CordonHost', async (req) => {
        const host = this.knownHost(req.host);
        if (req.reason.length > MAX_REASON_CHARS || /[\x00-\x1f]/.test(req.reason))
          throw new InvalidArgumentError('reason', `reason must be at most ${MAX_REASON_CHARS} printable characters on one line`);
        await cordons.set(host, true, req.reason || 'cordoned by an operator');
        return this.host(host);
      }),
      UncordonHost: write('UncordonHost', async (req) => {
        const host = this.knownHost(req.host);
        await cordons.set(host, false, '');
        return this.host(host);
      }),
      Drain: write('Drain', async (req) => drainToWire(await runner.start(req))),
      GetDrain: handleUnary(log, 'GetDrain', async (req) => drainToWire(this.findDrain(req.id))),
      ListDrains: handleUnary(log, 'ListDrains', async () => ({ drains: drains.list().map(drainToWire) })),
      WatchDrain: (call) => this.watchDrain(call),
      CancelMigration: write('CancelMigration', async (req) => {
        if (!req.id) throw new InvalidArgumentError('id', 'id is required');
        cancels.request(req.id, migrations.get(req.id));
        log.info({ migrationId: req.id }, 'migration cancel accepted');
        return toWire(migrations.get(req.id)!);
      }),
    };
  }

  /** Every host the controller has heard from, with its cordon and how many workloads it holds. */
  listHosts(): Host[] {
    return this.opts.hosts.list().map((h) => this.hostToWire(h));
  }

  private host(name: string): Host {
    return this.hostToWire(this.opts.hosts.list().find((h) => h.heartbeat.host === name)!);
  }

  private hostToWire(h: HostRecord & { ready: boolean }): Host {
    const name = h.heartbeat.host;
    const c = this.opts.cordons.get(name);
    return {
      name,
      grpcAddress: h.heartbeat.grpcAddress,
      ready: h.ready,
      lastHeartbeatMs: h.lastSeenMs,
      criuVersion: h.heartbeat.criuVersion,
      kernel: h.heartbeat.kernel,
      steeringGeneration: h.steeringGeneration ?? 0,
      steering: h.steeringGeneration !== undefined,
      dataAddress: h.heartbeat.dataAddress ?? '',
      cordoned: c !== undefined,
      cordonReason: c?.reason ?? '',
      workloads: this.opts.workloadRegistry.list().filter((w) => w.host === name).length,
    };
  }

  private knownHost(host: string): string {
    if (!host) throw new InvalidArgumentError('host', 'host is required');
    if (!HOST_NAME.test(host)) throw new InvalidArgumentError('host', `host "${host}" is not a valid host name (${HOST_NAME})`);
    const known = this.opts.hosts.list().map((h) => h.heartbeat.host);
    if (!known.includes(host)) throw new UnknownHostError(host, known);
    return host;
  }

  private findDrain(id: string): DrainState {
    if (!id) throw new InvalidArgumentError('id', 'id is required');
    const d = this.opts.drains.get(id);
    if (!d) throw new DrainNotFoundError(id);
    return d;
  }

  /** The record now; then after each change until the drain ends or the client goes. */
  private watchDrain(call: grpc.ServerWritableStream<GetDrainRequest__Output, DrainRecord>): void {
    let d: DrainState;
    try {
      d = this.findDrain(call.request.id);
    } catch (err) {
      endStreamWithError(call, err);
      return;
    }
    call.write(drainToWire(d));
    if (isDrainOver(d)) {
      call.end();
      return;
    }
    const stop = this.opts.drains.watch(d.id, (next) => {
      call.write(drainToWire(next));
      if (isDrainOver(next)) {
        stop();
        call.end();
      }
    });
    call.on('cancelled', stop);
    call.on('close', stop);
  }
}

export function drainToWire(d: DrainState): DrainRecord {
  return {
    id: d.id,
    host: d.host,
    state: d.state,
    workloads: d.workloads.map((w) => ({ name: w.name, targetHost: w.targetHost, state: w.state, migrationId: w.migrationId, error: w.error, freezeMs: w.freezeMs })),
    maxPerHost: d.maxPerHost,
    maxInFlight: d.maxInFlight,
    createdAtMs: d.createdAtMs,
    updatedAtMs: d.updatedAtMs,
    moved: d.moved,
    failed: d.failed,
  };
}
