/** The controller's gRPC API: validation, then the orchestrator. */
import { randomBytes } from 'node:crypto';
import type * as grpc from '@grpc/grpc-js';
import type { ControllerHandlers } from '../proto/gen/godwit/v1/Controller.js';
import type { MigrateRequest__Output } from '../proto/gen/godwit/v1/MigrateRequest.js';
import type { Migration } from '../proto/gen/godwit/v1/Migration.js';
import type { MigrationEvent } from '../proto/gen/godwit/v1/MigrationEvent.js';
import type { WatchMigrationRequest__Output } from '../proto/gen/godwit/v1/WatchMigrationRequest.js';
import { InvalidArgumentError, MigrationNotFoundError, PreconditionError, UnknownHostError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import { endStreamWithError, handleUnary } from '../lib/rpc.js';
import { HOST_NAME } from '../lib/subjects.js';
import { LEASE_MS, workloadFromWire, workloadToWire } from '../lib/wire.js';
import type { AgentPool } from './agent-client.js';
import type { MigrationCancels } from './cancel.js';
import type { CordonStore } from './cordon.js';
import type { FleetService } from './fleet-service.js';
import type { MigrationClaims } from './migration-claims.js';
import { freezeMs, isTerminal, newMigration, type LockMode, type MigrationRequestSpec, type MigrationState } from './migration-machine.js';
import type { MigrationStore } from './migration-store.js';
import type { Orchestrator, PhaseEvent } from './orchestrator.js';
import { checkHostsFit } from './preflight.js';
import type { HostRegistry } from './registry.js';
import type { WorkloadService } from './workload-service.js';

/** Long enough for a large image to dump, move and restore; short enough that a dead controller's lock goes soon. */
export const DEFAULT_LEASE_MS = 120_000;
const LOCK_MODES: readonly LockMode[] = ['EBPF', 'IPTABLES', 'NFTABLES'];

export interface ControllerServiceOptions {
  registry: HostRegistry;
  agents: AgentPool;
  orchestrator: Orchestrator;
  store: MigrationStore;
  log: Logger;
  workloads: WorkloadService;
  /** Fleet operations (controller/fleet-service.ts) and what Migrate checks of them. */
  fleet: FleetService;
  claims: MigrationClaims;
  cordons: CordonStore;
  cancels: MigrationCancels;
  /** The leader lease (controller/leader.ts); absent: this controller always leads (tests). */
  leader?: { requireLeader(): void; isLeader(): boolean };
}

export class ControllerService {
  private lastVersion = 0n;

  constructor(private readonly opts: ControllerServiceOptions) {}

  handlers(): ControllerHandlers {
    const { log, store } = this.opts;
    return {
      Migrate: handleUnary(log, 'Migrate', async (req) => (this.requireLeader(), toWire(await this.migrate(req)))),
      GetMigration: handleUnary(log, 'GetMigration', async (req) => toWire(this.find(req.id))),
      ListMigrations: handleUnary(log, 'ListMigrations', async () => ({ migrations: store.list().map(toWire) })),
      ListHosts: handleUnary(log, 'ListHosts', async () => ({ hosts: this.opts.fleet.listHosts() })),
      WatchMigration: (call) => void this.watchMigration(call),
      RetryMigration: handleUnary(log, 'RetryMigration', async (req) => (this.requireLeader(), toWire(await this.retry(req.id)))),
      RunWorkload: handleUnary(log, 'RunWorkload', async (req) => (this.requireLeader(), this.opts.workloads.run(req))),
      ListWorkloads: handleUnary(log, 'ListWorkloads', async () => ({ workloads: this.opts.workloads.list() })),
      GetLogs: handleUnary(log, 'GetLogs', async (req) => ({ files: await this.opts.workloads.logs(req.name, Number(req.maxBytes)) })),
      ...this.opts.fleet.handlers(),
    };
  }

  /**
   * The one check every write of this API makes first: a standby controller serves reads and
   * refuses writes with UNAVAILABLE naming the leader (NotLeaderError). Methods added later call it too.
   */
  requireLeader(): void {
    this.opts.leader?.requireLeader();
  }

  /** `drainId`: the drain that asks (controller/drain.ts), recorded on the migration. */
  async migrate(req: MigrateRequest__Output, drainId?: string): Promise<MigrationState> {
    const { registry, agents, orchestrator, workloads, claims, cordons, cancels } = this.opts;
    const spec = validateMigrate(workloads.resolve(req));
    spec.workloadName = workloads.nameOf(spec);
    const src = registry.ready(spec.sourceHost).heartbeat;
    const tgt = registry.ready(spec.targetHost).heartbeat;
    cordons.checkTarget(spec.targetHost);
    const busy = orchestrator.activeFor(spec.workload.pid, spec.sourceHost);
    if (busy) throw new PreconditionError(`process ${spec.workload.pid} on "${spec.sourceHost}" is already moving (migration ${busy.id}, phase ${busy.phase}); wait for it to end`);
    const id = newMigrationId();
    // Claimed before the first await: two requests for one workload cannot both pass preflight.
    const release = claims.claim({ sourceHost: spec.sourceHost, pid: spec.workload.pid, workloadName: spec.workloadName }, id);
    try {
      await checkHostsFit(spec, agents.get(src.host, src.grpcAddress), agents.get(tgt.host, tgt.grpcAddress));
      const state: MigrationState = { ...newMigration(id, spec, this.nextLockVersion(), Date.now()), ...(drainId ? { drainId } : {}) };
      if (spec.workloadName) workloads.follow(state, spec.workloadName);
      await orchestrator.start(state);
      void orchestrator.settled(id).finally(() => {
        release();
        cancels.forget(id);
      });
      return state;
    } catch (err) {
      release();
      throw err;
    }
  }

  /**
   * RetryMigration: a migration in NEEDS_ATTENTION rolled back again. Only once both hosts have
   * a ready agent: the rollback needs both (the target undoes first, so the workload never runs
   * twice), and asked without them it would only end in NEEDS_ATTENTION again.
   */
  private retry(id: string): Promise<MigrationState> {
    const m = this.find(id);
    if (m.phase !== 'NEEDS_ATTENTION')
      throw new PreconditionError(`migration ${m.id} is ${m.phase}: only a migration in NEEDS_ATTENTION can be retried`);
    for (const host of [m.request.targetHost, m.request.sourceHost]) {
      try {
        this.opts.registry.ready(host);
      } catch (err) {
        const why = err instanceof UnknownHostError ? `host "${host}" has no agent registered with this controller` : (err as Error).message;
        throw new PreconditionError(`${why}: bring its agent back before retrying migration ${m.id}`);
      }
    }
    return this.opts.orchestrator.retry(m);
  }

  private find(id: string): MigrationState {
    if (!id) throw new InvalidArgumentError('id', 'id is required');
    const m = this.opts.store.get(id);
    if (!m) throw new MigrationNotFoundError(id);
    return m;
  }

  /**
   * The current state first; then every event until the migration ends or the client goes. A
   * standby follows the leader's events on NATS, and reads the record from KV after it has
   * subscribed (its copy may be a second old), so that an end in between is not waited for forever.
   */
  private async watchMigration(call: grpc.ServerWritableStream<WatchMigrationRequest__Output, MigrationEvent>): Promise<void> {
    const { store, orchestrator } = this.opts;
    const standby = this.opts.leader ? !this.opts.leader.isLeader() : false;
    let stop: (() => void) | undefined;
    try {
      if (standby) await store.refresh(call.request.id);
      const id = this.find(call.request.id).id;
      // Events that come while the snapshot is read wait for it.
      const early: PhaseEvent[] = [];
      let live = false;
      const send = (e: PhaseEvent) => {
        call.write(eventToWire(e));
        if (isTerminal(e.migration.phase) && e.phase === e.migration.phase) {
          stop?.();
          call.end();
        }
      };
      stop = orchestrator.watch(id, (e) => (live ? send(e) : early.push(e)));
      call.on('cancelled', stop);
      call.on('close', stop);
      if (standby) await store.refresh(id);
      const m = this.find(id);
      call.write(eventToWire({ migrationId: m.id, phase: m.phase, kind: 'SNAPSHOT', atMs: Date.now(), durationMs: 0, detail: m.error ?? '', migration: m }));
      if (isTerminal(m.phase)) {
        stop();
        call.end();
        return;
      }
      live = true;
      for (const e of early) if (e.migration.updatedAtMs >= m.updatedAtMs) send(e);
    } catch (err) {
      stop?.();
      endStreamWithError(call, err);
    }
  }

  /** Strictly increasing and above any earlier controller's (time-based, in microseconds). */
  private nextLockVersion(): string {
    const now = BigInt(Date.now()) * 1000n;
    this.lastVersion = now > this.lastVersion ? now : this.lastVersion + 1n;
    return this.lastVersion.toString();
  }
}

export function validateMigrate(req: MigrateRequest__Output): MigrationRequestSpec {
  for (const [field, value] of [['source_host', req.sourceHost], ['target_host', req.targetHost]] as const) {
    if (!value) throw new InvalidArgumentError(field, `${field} is required`);
    if (!HOST_NAME.test(value)) throw new InvalidArgumentError(field, `${field} "${value}" is not a valid host name (${HOST_NAME})`);
  }
  if (req.sourceHost === req.targetHost)
    throw new InvalidArgumentError('target_host', `target_host must differ from source_host ("${req.sourceHost}"): a workload moves to another host`);
  const workload = workloadFromWire(req.workload);
  const keys = workload.endpoints.map((e) => `${e.proto}/${e.address}/${e.port}`);
  if (new Set(keys).size !== keys.length) throw new InvalidArgumentError('workload.endpoints', 'workload.endpoints lists an endpoint twice');
  const lockMode: LockMode = req.lockMode === 'LOCK_MODE_UNSPECIFIED' || !req.lockMode ? 'EBPF' : (req.lockMode as LockMode);
  if (!LOCK_MODES.includes(lockMode))
    throw new InvalidArgumentError('lock_mode', `lock_mode ${String(req.lockMode)} is not one of ${LOCK_MODES.join(', ')}`);
  const postCopy = req.postCopy === true;
  if (postCopy && lockMode !== 'EBPF')
    throw new InvalidArgumentError('post_copy', `post_copy needs lock_mode EBPF (CRIU's lazy dump runs with --network-lock skip), not ${lockMode}`);
  const lease = req.lockLeaseMs || DEFAULT_LEASE_MS;
  if (lease < LEASE_MS.min || lease > LEASE_MS.max)
    throw new InvalidArgumentError('lock_lease_ms', `lock_lease_ms must be between ${LEASE_MS.min} and ${LEASE_MS.max}, got ${lease}`);
  return { sourceHost: req.sourceHost, targetHost: req.targetHost, workload, lockMode, lockLeaseMs: lease, allowUnsafeLock: req.allowUnsafeLock === true, postCopy };
}

function newMigrationId(): string {
  return `m-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
}

export function toWire(m: MigrationState): Migration {
  return {
    id: m.id,
    request: {
      sourceHost: m.request.sourceHost,
      targetHost: m.request.targetHost,
      workload: workloadToWire(m.request.workload),
      lockMode: m.request.lockMode,
      lockLeaseMs: m.request.lockLeaseMs,
      allowUnsafeLock: m.request.allowUnsafeLock === true,
      postCopy: m.request.postCopy === true,
      workloadName: m.request.workloadName ?? '',
    },
    phase: m.phase,
    timings: m.timings.map((t) => ({ phase: t.phase, startedAtMs: t.startedAtMs, durationMs: t.durationMs, ok: t.ok, error: t.error ?? '', steps: t.steps ?? [] })),
    error: m.error ?? '',
    failedPhase: m.failedPhase ?? 'PHASE_UNSPECIFIED',
    restoredPid: m.restoredPid ?? 0,
    createdAtMs: m.createdAtMs,
    updatedAtMs: m.updatedAtMs,
    freezeMs: freezeMs(m) ?? 0,
    imageBytes: m.imageBytes,
    deliveredPackets: m.deliveredPackets ?? 0,
    warnings: m.warnings,
    steer: m.steer
      ? {
          generation: m.steer.generation,
          skipped: m.steer.skipped ?? '',
          convergeMs: m.steer.convergeMs ?? 0,
          converged: m.steer.converged ?? false,
          laggingHosts: m.steer.lagging ?? [],
          waitedMs: m.steer.waitedMs ?? 0,
          backendIds: m.steer.backendIds,
          revertedGeneration: m.steer.revertedGeneration ?? 0,
          insideFreeze: m.steer.insideFreeze ?? false,
        }
      : null,
    handedOff: m.handedOff ?? 0,
    forwarded: m.forwarded ?? 0,
    lazyPagesMs: m.lazyPagesMs ?? 0,
    cancelled: m.cancelled === true,
    drainId: m.drainId ?? '',
    attention: m.attention ?? '',
    controllers: m.controllers ?? [],
  };
}

function eventToWire(e: PhaseEvent): MigrationEvent {
  return { migrationId: e.migrationId, phase: e.phase, kind: e.kind, atMs: e.atMs, durationMs: e.durationMs, detail: e.detail, migration: toWire(e.migration) };
}
