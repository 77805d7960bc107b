/**
 * The agent's gRPC service: the only thing that changes a host. Each call is keyed by migration
 * id, recorded in MigrationRecords, and safe to repeat.
 */
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { release } from 'node:os';
import type * as grpc from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import type { AgentClient, AgentHandlers } from '../proto/gen/godwit/v1/Agent.js';
import type { ImageChunk__Output } from '../proto/gen/godwit/v1/ImageChunk.js';
import type { PipelinedStep } from '../proto/gen/godwit/v1/PipelinedStep.js';
import type { ReceiveImageResponse } from '../proto/gen/godwit/v1/ReceiveImageResponse.js';
import type { SendImageResponse } from '../proto/gen/godwit/v1/SendImageResponse.js';
import type { UnlockResponse } from '../proto/gen/godwit/v1/UnlockResponse.js';
import { HostOperationError, InvalidArgumentError, MigrationNotFoundError, PreconditionError, ProcessNotFoundError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import { agentClient, handleUnary, toServiceError } from '../lib/rpc.js';
import type { Endpoint__Output } from '../proto/gen/godwit/v1/Endpoint.js';
import type { Endpoint } from '../lib/endpoint.js';
import { LEASE_MS, endpointsFromWire, versionFromWire, workloadFromWire, workloadSocketToWire, type WorkloadSpec } from '../lib/wire.js';
import { appendHeldFile, concatHeld, readHeldFile, removeHeldFile } from './held-packets.js';
import { imagePermit } from './image-permit.js';
import { ImageStream, imageTotals, receiveImage } from './images.js';
import { lockScope } from './lock-scope.js';
import type { LockModeName, LockStrategy } from './lock-strategy.js';
import { MigrationRecords, type AgentMigrationRecord } from './migration-record.js';
import { FencingGate } from './fencing.js';
import { criuOutcome, restoredPidFile } from './interrupted-steps.js';
import { MigrationSteps } from './step-records.js';
import type { HostPlatform, LazyProcess, PostCopy } from './platform.js';
import { exportIntoImage, forgetHere, importFromImage } from './steering-handoff.js';
import { steeringStateHandler } from './steering-state.js';
import { StepTimer } from './step-timer.js';
import { HOST_BOUND_SOCKETS_REPORTED, hostBoundSockets, tcpConnectionCount } from '../lib/workload-sockets.js';
import { fileToWire, filesFromWire, treeFactsToWire } from '../lib/facts-wire.js';
import { CriuLogKeeper } from './criu-logs.js';
import { WorkloadRunner } from './run-workload.js';
import { carryOutput, outputFileOf, placeOutput } from './workload-output.js';

export interface AgentServiceOptions {
  host: string;
  platform: HostPlatform;
  stateDir: string;
  log: Logger;
  /** Longest a lock may be held when the request names no lease. */
  defaultLeaseMs?: number;
  /**
   * Where `godwit run` workloads' output files live: the same path on every host (the file
   * travels with the image and is put back at its path), default /var/lib/godwit/workloads.
   */
  workloadDir?: string;
}

export const DEFAULT_WORKLOAD_DIR = '/var/lib/godwit/workloads';

const MIGRATION_ID = /^[A-Za-z0-9_-]{1,64}$/;
const TRANSFER_TIMEOUT_MS = 10 * 60_000;
/** Post-copy: longest Release waits for the target to have fetched every page. */
const LAZY_PAGES_TIMEOUT_MS = 10 * 60_000;

export class AgentService {
  private readonly records: MigrationRecords;
  private readonly log: Logger;
  /**
   * Post-copy CRIU processes that outlive their RPC, by migration: the source's page server (the
   * lazy dump), the target's lazy-pages daemon. The page server also outlives its agent: the
   * record keeps its PID and start time, and an agent started again follows it (pageServer()).
   */
  private readonly lazy = new Map<string, LazyProcess>();
  private readonly runner: WorkloadRunner;
  private readonly criuLogs: CriuLogKeeper;
  private readonly workloadDir: string;
  private readonly peers = new Map<string, AgentClient>();
  /** This host's forwarded-packet counter being read since Lock, by migration id (Release waits for it). */
  private readonly forwardingNoted = new Map<string, Promise<void>>();
  /** Target: the workload's addresses being brought up since Lock, by migration id. */
  private readonly addressesUp = new Map<string, Promise<void>>();
  /** Refuses commands from a superseded leader (agent/fencing.ts). */
  private readonly fence: FencingGate;
  /** One step at a time per migration (agent/step-records.ts). */
  private readonly steps = new MigrationSteps();

  constructor(private readonly opts: AgentServiceOptions) {
    this.records = new MigrationRecords(opts.stateDir);
    this.fence = new FencingGate(opts.stateDir, opts.host);
    this.log = opts.log;
    this.workloadDir = opts.workloadDir ?? DEFAULT_WORKLOAD_DIR;
    this.runner = new WorkloadRunner({ platform: opts.platform, workloadDir: this.workloadDir, log: opts.log });
    this.criuLogs = new CriuLogKeeper(opts.stateDir);
  }

  imageDir(migrationId: string): string {
    return join(this.opts.stateDir, 'images', migrationId);
  }

  handlers(): AgentHandlers {
    const p = this.opts.platform;
    const h = this.opts.host;
    const log = this.log;
    return {
      Probe: handleUnary(log, 'Probe', async () => {
        const probe = await p.probe();
        return { host: h, kernel: release(), ...probe };
      }),

      InspectWorkload: handleUnary(log, 'InspectWorkload', async (req) => {
        const w = workloadFromWire(req.workload);
        const info = await this.inspect(w);
        // One read of the tree's sockets answers both: what CRIU's own locks count, and what
        // cannot move (the controller refuses the migration on those, preflight.ts).
        const sockets = await p.workloadSockets(w.pid);
        const hostBound = hostBoundSockets(sockets, w.endpoints);
        // The rest of what preflight judges; a workload's output file travels with the image.
        const facts = await p.treeFacts(w.pid, [`${this.workloadDir}/`]);
        return {
          command: info.command,
          processes: info.processes,
          tcpConnections: tcpConnectionCount(sockets),
          hostBoundSockets: hostBound.slice(0, HOST_BOUND_SOCKETS_REPORTED).map(workloadSocketToWire),
          hostBoundSocketCount: hostBound.length,
          ...treeFactsToWire(facts),
        };
      }),

      Lock: this.command('Lock', async (req) => {
        const id = migrationId(req.migrationId);
        const endpoints = requiredEndpoints(req.endpoints);
        const version = versionFromWire(req.version);
        const mode = lockModeFromWire(req.lockMode);
        const leaseMs = req.leaseMs || this.opts.defaultLeaseMs || 120_000;
        if (leaseMs < LEASE_MS.min || leaseMs > LEASE_MS.max) throw new InvalidArgumentError('lease_ms', `lease_ms must be between ${LEASE_MS.min} and ${LEASE_MS.max}, got ${leaseMs}`);
        const strategy = p.lockStrategy(mode);
        const started = performance.now();
        const steps = new StepTimer();
        if (strategy.holdsEndpoints) {
          await steps.time('lock entries', () => this.hostStep('lock', () => p.netlock.lock(lockScope(endpoints), version, leaseMs)));
          this.records.update(id, (r) => {
            r.lockMode = mode;
            r.locked = lockScope(endpoints);
            r.lockVersion = version.toString();
          });
          // Only behind the lock: what reaches the address from now on is held, never reset.
          // After this answer has gone: starting `ip` blocks this agent for a few milliseconds.
          if (req.bringUpAddresses) this.addressesUp.set(id, new Promise((r) => setImmediate(r)).then(() => this.bringUpAddresses(id, endpoints)));
        } else {
          await steps.time(`check ${mode} lock`, () => this.hostStep(`lock (${mode})`, () => strategy.lock()));
          this.records.update(id, (r) => {
            r.lockMode = mode;
          });
        }
        // Read off the critical path: only Release needs it, long after the freeze.
        this.forwardingNoted.set(id, this.noteForwarding(id));
        return { durationMs: performance.now() - started, steps: steps.wire(h) };
      }),

      Unlock: this.command('Unlock', async (req) => {
        return this.unlockHere(migrationId(req.migrationId), requiredEndpoints(req.endpoints), versionFromWire(req.version));
      }),

      Checkpoint: this.command('Checkpoint', async (req) => {
        const id = migrationId(req.migrationId);
        const w = workloadFromWire(req.workload);
        const mode = lockModeFromWire(req.lockMode);
        const dir = this.imageDir(id);
        const record = await this.settleInterrupted(id, this.records.get(id));
        const steps = new StepTimer();
        // Pipelined: the image goes on to the target in this same call.
        const withTransfer = async <T extends object>(dumped: T) =>
          req.sendTo ? { ...dumped, transfer: await this.pipelined(() => this.sendImageTo(id, req.sendTo, req.steerBackendIds, req.imageToken), (sent) => ({ sent })) } : dumped;
        if (!record.dumped) {
          await steps.time('inspect', () => this.inspect(w));
          await steps.time('image folder', async () => {
            // A retried checkpoint's earlier CRIU log is kept before the folder goes.
            await this.criuLogs.keep(id, dir);
            await rm(dir, { recursive: true, force: true });
            await mkdir(dir, { recursive: true });
          });
          const output = await outputFileOf(w.pid, this.workloadDir);
          const dump = req.postCopy ? () => this.dumpLazily(id, w, mode, dir, steps) : () => this.dump(id, w, mode, dir, steps);
          const result: { durationMs: number; connections: number; pageServer?: string } = await dump().catch(async (err: unknown) => {
            await this.criuLogs.keep(id, dir);
            throw err;
          });
          // Nothing writes the workload's output file now: its copy goes with the image.
          if (output) await steps.time('output file into the image', () => this.hostStep('output file into the image', () => carryOutput(dir, output)));
          // Pipelined: the image's size is what the transfer counts, so nothing is read for it here.
          const totals = req.sendTo ? { bytes: 0, files: 0 } : await steps.time('image totals', () => imageTotals(dir));
          return withTransfer({ durationMs: result.durationMs, imageBytes: totals.bytes, imageFiles: totals.files, frozenMs: 0, tcpConnections: result.connections, pageServer: result.pageServer ?? '', steps: steps.wire(h) });
        }
        const totals = imageTotals(dir);
        const connections = record.lockResidue ? this.strategyOf(record.lockMode).connections(record.lockResidue) : 0;
        return withTransfer({ durationMs: 0, imageBytes: totals.bytes, imageFiles: totals.files, frozenMs: 0, tcpConnections: connections, steps: [], pageServer: record.postCopy?.pageServer ?? '' });
      }),

      SendImage: this.command('SendImage', async (req) => {
        if (!req.peerAddress) throw new InvalidArgumentError('peer_address', 'peer_address is required: the target agent\'s gRPC address');
        return this.sendImageTo(migrationId(req.migrationId), req.peerAddress, req.steerBackendIds, req.imageToken);
      }),

      ReceiveImage: (call: grpc.ServerReadableStream<ImageChunk__Output, ReceiveImageResponse>, callback) => {
        // The stream's first message names the migration; nothing is written before the
        // controller's token for it (from this very source, to this host) has been checked.
        const permit = imagePermit(call, h);
        receiveImage(call, (id) => {
          permit(migrationId(id));
          return this.imageDir(id);
        }).then(
          ({ migrationId: id, totals, steps }) => {
            this.records.update(id, (r) => {
              r.imageReceived = true;
            });
            callback(null, { ...totals, steps: steps.wire(h) });
          },
          (err: unknown) => {
            const se = toServiceError(err);
            log.warn({ rpc: 'ReceiveImage', code: se.code, err: se.details }, 'rpc failed');
            callback(se);
          },
        );
      },

      Restore: this.command('Restore', async (req) => {
        const id = migrationId(req.migrationId);
        const w = workloadFromWire(req.workload);
        const mode = lockModeFromWire(req.lockMode);
        const record = await this.settleInterrupted(id, this.records.get(id));
        // Pipelined: the target unlocks in this same call once restored.
        const withUnlock = async <T extends object>(restored: T) =>
          req.unlock ? { ...restored, unlocked: await this.pipelined(() => this.unlockHere(id, w.endpoints, versionFromWire(req.lockVersion)), (unlocked) => ({ unlocked })) } : restored;
        if (record.restoredPid && (await p.processInfo(record.restoredPid))) {
          return withUnlock({ durationMs: 0, pid: record.restoredPid, criuMs: 0, lockInstallMs: 0, lockRules: 0, steeringEntries: 0, steps: [] });
        }
        if (!record.imageReceived) throw new PreconditionError(`migration ${id} has no image on host "${h}"; transfer it first`);
        const started = performance.now();
        const steps = new StepTimer();
        // Recorded first: an import that half-works is still removed by Abort.
        this.records.update(id, (r) => {
          r.steerSelector = workloadSelector(w.endpoints, req.steerBackendIds);
          r.steerImported = true;
        });
        const steeringEntries = await steps.time('steering import', () => this.hostStep('steering import', () => importFromImage(this.handoffEnds(), this.imageDir(id), id)));
        const lazyFrom = req.postCopy ? this.postCopyFor(mode, req.pageServer) : undefined;
        await steps.time('output file from the image', () => this.hostStep('output file from the image', () => placeOutput(this.imageDir(id))));
        const restored = await this.restoreHere(id, w, mode, steps, lazyFrom).catch(async (err: unknown) => {
          await this.criuLogs.keep(id, this.imageDir(id));
          throw err;
        });
        return withUnlock({ durationMs: performance.now() - started, pid: restored.pid, criuMs: restored.criuMs, lockInstallMs: restored.lockInstallMs, lockRules: restored.lockRules, steeringEntries, steps: steps.wire(h) });
      }),

      Release: this.command('Release', async (req) => {
        const id = migrationId(req.migrationId);
        const endpoints = requiredEndpoints(req.endpoints);
        // Release takes addresses down: only for a migration this host took part in.
        if (!this.records.has(id)) throw new MigrationNotFoundError(id);
        const version = versionFromWire(req.version);
        const started = performance.now();
        const steps = new StepTimer();
        const record = this.records.get(id);
        // Address down first: while it is still locked, nothing this host sends can reset a peer.
        await steps.time('address down', async () => {
          for (const a of unique(endpoints.map((e) => e.address))) await p.network.removeAddress(a);
        });
        const strategy = this.strategyOf(record.lockMode);
        if (record.locked.length > 0 || strategy.holdsEndpoints) {
          const scope = lockScope(endpoints);
          await this.unlock(scope, version, steps);
          await steps.time('held packets: discard', () => this.discardHeld(id, scope, 'stopped on the source after the image left'));
        }
        if (record.lockResidue) {
          // What the dump left here: the workload runs on the target now.
          const residue = record.lockResidue;
          const r = await steps.time(`${strategy.mode} lock removal`, () => this.hostStep(`release (${strategy.mode} lock)`, () => strategy.removeResidue(residue)));
          log.info({ migrationId: id, mode: strategy.mode, removed: r.removed }, "removed the dump's lock");
        }
        // The workload runs on the target with its reverse NAT and counters; this host forwards its
        // packets there by the table, and keeps the flow entries of the flows the fabric still brings here.
        await steps.time('steering: forget', () => forgetHere(this.handoffEnds(), record.steerSelector, id));
        await this.forwardingNoted.get(id);
        this.forwardingNoted.delete(id);
        const forwardedPackets = await this.forwardedSince(this.records.get(id).forwardedAtLock);
        const lazyPagesMs = record.postCopy ? await steps.time('post-copy: every page fetched', () => this.lazyPagesServed(id, record.postCopy!.readyAtMs)) : 0;
        await steps.time('image removal', () => rm(this.imageDir(id), { recursive: true, force: true }));
        this.records.update(id, (r) => {
          r.locked = [];
          r.lockResidue = undefined;
          r.released = true;
          r.ended = true;
        });
        return { durationMs: performance.now() - started, forwardedPackets: forwardedPackets.toString(), steps: steps.wire(h), lazyPagesMs, lazyBytes: record.postCopy?.lazyBytes ?? 0 };
      }),

      Abort: this.command('Abort', async (req) => {
        const id = migrationId(req.migrationId);
        const started = performance.now();
        const { actions, pid } = await this.abort(id);
        return { durationMs: performance.now() - started, actions, pid: pid ?? 0 };
      }),

      SteeringState: steeringStateHandler(h, p.steering, log),

      RunWorkload: handleUnary(log, 'RunWorkload', async (req) => {
        const r = await this.fence.admit(req.fencingToken, () =>
          this.runner.run({ name: req.name, user: req.user, endpoints: endpointsFromWire(req.endpoints), command: req.command, cwd: req.cwd }),
        );
        return { pid: r.pid, outputPath: r.outputPath };
      }),

      WorkloadOutput: handleUnary(log, 'WorkloadOutput', async (req) => {
        const r = await this.runner.output(req.name, Number(req.maxBytes));
        return { output: r.output, size: String(r.size), path: r.path };
      }),

      MigrationLogs: handleUnary(log, 'MigrationLogs', async (req) => {
        const id = migrationId(req.migrationId);
        return { logs: await this.criuLogs.read(id, this.imageDir(id)) };
      }),

      CheckFiles: handleUnary(log, 'CheckFiles', async (req) => {
        const mismatches = await p.checkFiles(filesFromWire(req.files));
        return { mismatches: mismatches.map((m) => ({ file: fileToWire(m.file), problem: m.problem })) };
      }),

      DiscardImage: this.command('DiscardImage', async (req) => this.discardImage(migrationId(req.migrationId))),
    };
  }

  /**
   * A command from the controller: the fencing token checked, then run after any earlier step
   * of the same migration on this agent (a dead controller's call may still be running here).
   */
  private command<Req extends { migrationId: string; fencingToken: string }, Res>(name: string, fn: (req: Req) => Promise<Res>): grpc.handleUnaryCall<Req, Res> {
    return handleUnary(this.log, name, async (req: Req) => {
      const id = migrationId(req.migrationId);
      return this.fence.admit(req.fencingToken, () => this.steps.run(id, () => fn(req)));
    });
  }

  /**
   * A dump or restore this agent started and never saw end (it was killed mid-step; CRIU ran
   * on): its outcome, read from CRIU's log, written into the record as if the agent had seen it.
   * A finished dump counts as this migration's dump (never taken twice); a finished restore's
   * process is this migration's restored workload (never restored twice, and Abort kills it).
   */
  private async settleInterrupted(id: string, r: AgentMigrationRecord): Promise<AgentMigrationRecord> {
    const dir = this.imageDir(id);
    if (r.dumpStarted && !r.dumped) {
      const outcome = await criuOutcome(dir, 'dump');
      const started = r.dumpStarted;
      this.log.warn({ migrationId: id, outcome }, 'a dump this agent started before it restarted');
      r = this.records.update(id, (x) => {
        if (outcome === 'succeeded') x.dumped = started;
        else x.dumpStarted = undefined;
      });
    }
    if (r.restoreStarted && !r.restoredPid) {
      const outcome = await criuOutcome(dir, 'restore');
      const pid = outcome === 'succeeded' ? await restoredPidFile(dir) : undefined;
      const alive = pid !== undefined && (await this.opts.platform.processInfo(pid)) !== undefined;
      this.log.warn({ migrationId: id, outcome, pid, alive }, 'a restore this agent started before it restarted');
      r = this.records.update(id, (x) => {
        if (alive) x.restoredPid = pid;
        x.restoreStarted = false;
      });
    }
    return r;
  }

  /** After DONE: the migration's image folder goes (CRIU's logs of failures are kept apart). */
  private async discardImage(id: string): Promise<{ removed: boolean; bytes: string }> {
    const dir = this.imageDir(id);
    let bytes = 0;
    let removed = false;
    try {
      bytes = imageTotals(dir).bytes;
      removed = true;
    } catch {
      // no folder: already removed
    }
    await rm(dir, { recursive: true, force: true });
    if (this.records.has(id)) this.records.update(id, (r) => (r.ended = true));
    this.log.info({ migrationId: id, removed, bytes }, 'image discarded');
    return { removed, bytes: String(bytes) };
  }

  /**
   * At start: image folders of migrations whose part here has ended (the agent died before it
   * removed them), and folders no record knows of (a transfer cut off before anything was recorded).
   * A folder kept as a workload's last copy (a failed abort) stays. Returns the folders removed.
   */
  async sweepImages(): Promise<string[]> {
    const root = join(this.opts.stateDir, 'images');
    const names = await readdir(root).catch(() => [] as string[]);
    const removed: string[] = [];
    for (const id of names) {
      if (!MIGRATION_ID.test(id)) continue;
      const known = this.records.has(id);
      const r = known ? this.records.get(id) : undefined;
      if (r && !r.ended) continue;
      await rm(join(root, id), { recursive: true, force: true });
      removed.push(id);
    }
    if (removed.length > 0) this.log.info({ removed }, 'image folders of ended migrations removed at start');
    return removed;
  }

  /** The process must exist, run in this host's network namespace, and its addresses be here. */
  private async inspect(w: WorkloadSpec) {
    const p = this.opts.platform;
    const info = await p.processInfo(w.pid);
    if (!info) throw new ProcessNotFoundError(this.opts.host, w.pid);
    if (!info.onThisHost)
      throw new PreconditionError(`process ${w.pid} (${info.command}) does not run on host "${this.opts.host}" (it is in another network namespace)`);
    const have = await p.network.addresses();
    for (const e of w.endpoints) {
      if (!have.includes(e.address))
        throw new PreconditionError(
          `endpoint address ${e.address} is not on host "${this.opts.host}" (its addresses: ${have.join(', ')}); a workload can only move an address its source host owns`,
        );
    }
    return info;
  }

  /**
   * The checkpoint, with the lock mode's part in it (lock-strategy.ts): what the dump leaves of the
   * lock here is recorded for Release (or for the restore in Abort, which needs it).
   */
  private async dump(id: string, w: WorkloadSpec, mode: LockModeName, dir: string, steps: StepTimer): Promise<{ durationMs: number; connections: number }> {
    const strategy = this.opts.platform.lockStrategy(mode);
    this.records.update(id, (r) => {
      r.dumpStarted = { pid: w.pid, endpoints: w.endpoints };
    });
    const dumped = await steps.time('criu dump', () => this.hostStep('checkpoint', () => strategy.dump(w.pid, w.endpoints, dir))).catch((err: unknown) => {
      // This agent saw the dump end: nothing is left for a restart (or Abort) to settle from
      // CRIU's log, which a CRIU that crashed never finishes.
      this.records.update(id, (r) => {
        r.dumpStarted = undefined;
      });
      throw err;
    });
    this.records.update(id, (r) => {
      r.dumped = { pid: w.pid, endpoints: w.endpoints };
      r.lockMode = mode;
      r.lockResidue = dumped.residue;
    });
    return { durationMs: dumped.durationMs, connections: dumped.connections };
  }

  /**
   * Before restore, what the lock mode needs here (recorded first: if it half-works, Abort still
   * removes what is there); then the address up, announced while the restore runs (the lock holds
   * packets off until unlock).
   */
  private async restoreHere(
    id: string,
    w: WorkloadSpec,
    mode: LockModeName,
    steps: StepTimer,
    /** Post-copy: the memory comes from this page server. */
    lazyFrom?: { postCopy: PostCopy; pageServer: string },
  ): Promise<{ pid: number; criuMs: number; lockInstallMs: number; lockRules: number }> {
    const p = this.opts.platform;
    const strategy = p.lockStrategy(mode);
    const before = await steps.time(`before restore (${mode} lock)`, () => this.hostStep(`before restore (${mode} lock)`, () =>
      strategy.beforeRestore(id, this.imageDir(id), (residue) =>
        this.records.update(id, (r) => {
          r.lockMode = mode;
          r.lockResidue = residue;
        }),
      ),
    ));
    const t0 = performance.now();
    // Brought up at Lock (in the background) when the controller asked; a failure there is retried here.
    await this.addressesUp.get(id);
    this.addressesUp.delete(id);
    await this.addAddresses(id, w.endpoints);
    steps.add('address up', performance.now() - t0);
    this.records.update(id, (r) => {
      r.restoreStarted = true;
    });
    const restore = lazyFrom ? () => this.restoreLazily(id, lazyFrom.postCopy, lazyFrom.pageServer) : () => strategy.restore(this.imageDir(id));
    const restoring = steps.time(lazyFrom ? 'criu lazy-pages + restore' : 'criu restore', () => this.hostStep('restore', restore));
    // Announced while CRIU restores (the lock holds what the announcement brings); started after
    // CRIU's process, as starting a process blocks this agent for a few milliseconds.
    const announced = Promise.all(unique(w.endpoints.map((e) => e.address)).map((a) => p.network.announce(a)));
    const restored = await restoring.catch(async (err: unknown) => {
      await announced.catch(() => undefined);
      // Seen to end here (CRIU removes what it restored when it fails): nothing to settle later.
      this.records.update(id, (r) => {
        r.restoreStarted = false;
      });
      throw err;
    });
    await steps.time('announce (after restore)', () => announced);
    this.records.update(id, (r) => {
      r.restoredPid = restored.pid;
    });
    return { pid: restored.pid, criuMs: restored.durationMs, lockInstallMs: before.installMs, lockRules: before.rules };
  }

  /** Post-copy on this host for a request: EBPF lock only, and the platform must have it. */
  private postCopyFor(mode: LockModeName, pageServer: string | undefined): { postCopy: PostCopy; pageServer: string } {
    const postCopy = this.opts.platform.postCopy;
    if (mode !== 'EBPF') throw new InvalidArgumentError('post_copy', `post_copy needs lock_mode EBPF (CRIU's lazy dump here runs with --network-lock skip), not ${mode}`);
    if (!postCopy) throw new PreconditionError(`host "${this.opts.host}" has no post-copy (no page server address)`);
    if (pageServer !== undefined && !pageServer) throw new InvalidArgumentError('page_server', 'page_server is required with post_copy: the source\'s CheckpointResponse.page_server');
    return { postCopy, pageServer: pageServer ?? '' };
  }

  /** Source, post-copy: the lazy dump; its page server runs on until the target has every page. */
  private async dumpLazily(id: string, w: WorkloadSpec, mode: LockModeName, dir: string, steps: StepTimer): Promise<{ durationMs: number; connections: number; pageServer: string }> {
    const { postCopy } = this.postCopyFor(mode, undefined);
    const dumped = await steps.time('criu dump --lazy-pages', () => this.hostStep('checkpoint (post-copy)', () => postCopy.dump(w.pid, dir)));
    this.lazy.set(id, dumped.server);
    dumped.server.ended.then(
      (code) => this.log.info({ migrationId: id, exit: code }, 'post-copy page server ended'),
      () => undefined,
    );
    this.records.update(id, (r) => {
      r.dumped = { pid: w.pid, endpoints: w.endpoints };
      r.lockMode = mode;
      r.postCopy = { pageServer: dumped.pageServer, lazyBytes: dumped.lazyBytes, readyAtMs: Date.now(), ...(dumped.serverId ? { server: dumped.serverId } : {}) };
    });
    this.log.info({ migrationId: id, pageServer: dumped.pageServer, lazyBytes: dumped.lazyBytes, ms: dumped.durationMs }, 'dumped for post-copy');
    return { durationMs: dumped.durationMs, connections: 0, pageServer: dumped.pageServer };
  }

  /** Target, post-copy: daemon, then the lazy restore; the daemon fetches the rest afterwards. */
  private async restoreLazily(id: string, postCopy: PostCopy, pageServer: string): Promise<{ pid: number; durationMs: number }> {
    const r = await postCopy.restore(this.imageDir(id), pageServer);
    this.lazy.set(id, r.daemon);
    r.daemon.ended.then(
      (code) => {
        if (code === 0) this.log.info({ migrationId: id }, 'post-copy: every page arrived');
        else this.log.error({ migrationId: id, exit: code }, 'post-copy: the lazy-pages daemon failed; the workload may fault on pages it never got');
      },
      () => undefined,
    );
    return { pid: r.pid, durationMs: r.durationMs };
  }

  /**
   * Source, Release: waits until the page server ended (the target has every page; CRIU has
   * ended the dumped tasks). Returns ms since the dump was ready.
   */
  private async lazyPagesServed(id: string, readyAtMs: number): Promise<number> {
    const server = this.pageServer(id);
    if (!server) {
      this.log.warn({ migrationId: id }, 'post-copy page server unknown to this agent (restarted?); not waiting for it');
      return 0;
    }
    let timer: NodeJS.Timeout | undefined;
    const code = await Promise.race([
      server.ended,
      new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), LAZY_PAGES_TIMEOUT_MS))),
    ]).finally(() => clearTimeout(timer));
    if (code === 'timeout') throw new HostOperationError(this.opts.host, 'release', `the target had not fetched every page after ${LAZY_PAGES_TIMEOUT_MS} ms; the page server keeps serving`);
    this.lazy.delete(id);
    if (code !== 0) throw new HostOperationError(this.opts.host, 'release', `the post-copy page server ended with ${code === null ? 'a kill' : `exit ${code}`} (see ${join(this.imageDir(id), 'dump.log')})`);
    return Date.now() - readyAtMs;
  }

  /**
   * The post-copy page server of a migration: the one this agent started, or one an earlier life
   * of this agent started and that still serves (found by its recorded PID and start time). How
   * an adopted one ended is read from CRIU's log, as no exit status comes to a non-parent.
   */
  private pageServer(id: string): LazyProcess | undefined {
    const known = this.lazy.get(id);
    if (known) return known;
    const s = this.records.has(id) ? this.records.get(id).postCopy?.server : undefined;
    const adopted = s && this.opts.platform.postCopy?.findServer(s, this.imageDir(id));
    if (!adopted) return undefined;
    this.log.warn({ migrationId: id, pid: s.pid }, 'post-copy: found the page server an earlier run of this agent started; following it');
    this.lazy.set(id, adopted);
    return adopted;
  }

  /** Source rollback of a post-copy dump: pages back into the image, then CRIU ends the frozen tasks. */
  private async reclaimLazyPages(id: string, pc: NonNullable<ReturnType<MigrationRecords['get']>['postCopy']>): Promise<string> {
    const postCopy = this.opts.platform.postCopy;
    const server = this.pageServer(id);
    if (pc.reclaimed) return 'memory already fetched back from the page server';
    if (!postCopy || !server?.running)
      throw new HostOperationError(this.opts.host, 'rollback', 'the post-copy page server is gone, so the memory the image left out is lost with it');
    const bytes = await this.hostStep('fetching the memory back from the page server', () => postCopy.reclaim(this.imageDir(id), pc.pageServer));
    const code = await server.ended;
    this.lazy.delete(id);
    if (code !== 0) throw new HostOperationError(this.opts.host, 'rollback', `CRIU's lazy dump ended with ${code === null ? 'a kill' : `exit ${code}`} after the memory was fetched back`);
    this.records.update(id, (x) => {
      if (x.postCopy) x.postCopy.reclaimed = true;
    });
    return `fetched ${bytes} bytes of memory back from the page server`;
  }

  private async unlock(endpoints: WorkloadSpec['endpoints'], version: bigint, steps = new StepTimer()): Promise<bigint> {
    const p = this.opts.platform;
    const wanted = new Set(endpoints.map((e) => `${e.proto}/${e.address}/${e.port}`));
    const entries = await steps.time('lock counters', () => p.netlock.list());
    const dropped = entries
      .filter((e) => wanted.has(`${e.endpoint.proto}/${e.endpoint.address}/${e.endpoint.port}`))
      .reduce((sum, e) => sum + e.drops, 0n);
    await steps.time('unlock entries', () => this.hostStep('unlock', () => p.netlock.unlock(endpoints, version)));
    return dropped;
  }

  /**
   * EBPF lock, right after unlock on the host where the workload now runs: delivers the packets
   * the locks stopped, first those that came with the image (stopped on the source), then those
   * stopped here. Best effort: what does not go, its peers retransmit, as without holding.
   */
  private async deliverHeld(id: string, endpoints: WorkloadSpec['endpoints'], steps = new StepTimer()): Promise<number> {
    const p = this.opts.platform;
    const dir = this.imageDir(id);
    try {
      const t0 = performance.now();
      const fromImage = await steps.time('held packets: read image', () => readHeldFile(dir));
      const held = concatHeld(fromImage, await steps.time('held packets: drain', () => p.held.take(endpoints)));
      const t1 = performance.now();
      const delivered = await steps.time('held packets: deliver', () => p.held.deliver(held));
      await steps.time('held packets: remove file', () => removeHeldFile(dir));
      this.log.info({ migrationId: id, delivered, fromImage: fromImage.count, takeMs: t1 - t0, deliverMs: performance.now() - t1 }, 'held packets delivered');
      return delivered;
    } catch (err) {
      this.log.warn({ migrationId: id, err: String(err) }, 'held packets not delivered; their peers retransmit');
      return 0;
    }
  }

  /** Takes and forgets held packets that have nowhere to go from this host. */
  private discardHeld(id: string, endpoints: WorkloadSpec['endpoints'], why: string): void {
    try {
      const n = this.opts.platform.held.take(endpoints).count;
      if (n > 0) this.log.info({ migrationId: id, discarded: n, why }, 'held packets discarded; their peers retransmit');
    } catch (err) {
      this.log.warn({ migrationId: id, err: String(err) }, 'held packets could not be read');
    }
  }

  /**
   * Undo this host's part of a migration, in the order that keeps the workload running once:
   * kill a copy restored here by this migration (target), bring back a workload dumped here
   * (source), then drop the addresses it added and the lock entries it set.
   */
  private async abort(id: string): Promise<{ actions: string[]; pid?: number }> {
    const p = this.opts.platform;
    // An address still being brought up since Lock is recorded when that ends: wait, then remove it.
    await this.addressesUp.get(id);
    this.addressesUp.delete(id);
    const r = await this.settleInterrupted(id, this.records.get(id));
    const actions: string[] = [];
    let pid: number | undefined;
    // What CRIU said goes nowhere with the image folder (a failed restore's log, on the target).
    await this.criuLogs.keep(id, this.imageDir(id));
    // A workload that cannot be brought back is lost either way: the locks still go (its peers
    // then get resets instead of retransmitting into a lock), and the error is reported last.
    let lost: unknown;
    // Post-copy, target: the daemon first, so it never closes the source's session as if complete.
    const daemon = !r.dumped ? this.lazy.get(id) : undefined;
    if (daemon?.running) {
      daemon.kill();
      actions.push('stopped the lazy-pages daemon');
    }
    if (r.restoredPid && !r.dumped && (await p.processInfo(r.restoredPid))) {
      process.kill(r.restoredPid, 'SIGKILL');
      actions.push(`killed restored pid ${r.restoredPid}`);
      this.records.update(id, (x) => (x.restoredPid = undefined));
    }
    for (const a of r.addedAddresses) {
      await p.network.removeAddress(a);
      actions.push(`removed address ${a}`);
    }
    if (r.steerImported && !r.dumped) {
      const n = await forgetHere(this.handoffEnds(), r.steerSelector, id);
      actions.push(`removed ${n} imported steering entr${n === 1 ? 'y' : 'ies'}`);
      this.records.update(id, (x) => (x.steerImported = false));
    }
    if (r.dumped && r.postCopy && !r.restoredPid) {
      // The dumped tasks are still here, frozen, their memory in CRIU's page server: fetch it back
      // into the image and let CRIU end them; the restore below then brings the workload back.
      try {
        actions.push(await this.reclaimLazyPages(id, r.postCopy));
      } catch (err) {
        lost = err;
      }
    }
    if (r.dumped && !lost) {
      const alive = r.restoredPid ? await p.processInfo(r.restoredPid) : await p.processInfo(r.dumped.pid);
      if (alive) {
        pid = alive.pid;
        actions.push(`workload already running as pid ${alive.pid}`);
      } else {
        // A lock the dump left here (its residue) is still here, as this restore needs it.
        try {
          const restored = await this.hostStep('restore on source', () => this.strategyOf(r.lockMode).restore(this.imageDir(id))).catch(async (err: unknown) => {
            await this.criuLogs.keep(id, this.imageDir(id));
            throw err;
          });
          pid = restored.pid;
          this.records.update(id, (x) => (x.restoredPid = restored.pid));
          actions.push(`restored workload from its image as pid ${restored.pid}`);
        } catch (err) {
          lost = err;
        }
      }
      if (!lost) {
        // Peers may have learned the target's MAC from its announcement: claim the address back.
        for (const a of unique(r.dumped.endpoints.map((e) => e.address))) await p.network.announce(a);
        actions.push('announced addresses');
      }
    }
    if (r.locked.length > 0 && r.lockVersion) {
      await p.netlock.unlock(r.locked, BigInt(r.lockVersion));
      actions.push(`unlocked ${r.locked.length} endpoint(s)`);
      if (r.dumped && !lost) {
        const n = await this.deliverHeld(id, r.locked);
        if (n > 0) actions.push(`delivered ${n} held packet(s)`);
      } else {
        this.discardHeld(id, r.locked, 'the workload does not run here');
      }
    }
    // The lock mode's residue: on the target what was made for a restore that did not finish; on
    // the source what the restore above did not remove. After the restore, never before it: on the
    // source it holds the dumped connections' peers off until their sockets exist again.
    if (r.lockResidue) {
      const residue = r.lockResidue;
      const removed = await this.hostStep(`removing the ${r.lockMode} lock`, () => this.strategyOf(r.lockMode).removeResidue(residue));
      if (removed.removed > 0) actions.push(`removed ${removed.description}`);
    }
    // The image is kept only where it is the workload's last copy (a restore on the source failed).
    if (!lost) await rm(this.imageDir(id), { recursive: true, force: true });
    this.records.update(id, (x) => {
      x.locked = [];
      x.lockResidue = undefined;
      x.addedAddresses = [];
      x.aborted = true;
      x.ended = !lost;
    });
    if (lost) {
      this.log.error({ migrationId: id, actions, err: String(lost) }, 'abort could not bring the workload back; locks removed, image kept');
      if (lost instanceof Error) lost.message += ` (locks removed; the image stays in ${this.imageDir(id)})`;
      throw lost;
    }
    this.log.info({ migrationId: id, actions }, 'aborted');
    return { actions, pid };
  }

  /**
   * The source's image, sent to the target agent: first what the lock stopped here so far (for
   * the target to deliver) and the workload's steering state, as they are now that it is dumped.
   */
  private async sendImageTo(id: string, peerAddress: string, backendIds: number[], imageToken: string): Promise<SendImageResponse> {
    const p = this.opts.platform;
    const record = this.records.get(id);
    if (!record.dumped) throw new PreconditionError(`migration ${id} has no checkpoint on host "${this.opts.host}" to send`);
    const stream = new ImageStream(this.peer(peerAddress), id, this.imageDir(id), TRANSFER_TIMEOUT_MS, imageToken);
    const dumped = record.dumped;
    const started = performance.now();
    const steps = new StepTimer();
    try {
      if (this.strategyOf(record.lockMode).holdsEndpoints) {
        const held = await steps.time('held packets: drain', () => p.held.take(lockScope(dumped.endpoints)));
        await steps.time('held packets: into image', () => appendHeldFile(this.imageDir(id), held));
        this.log.info({ migrationId: id, held: held.count, ms: performance.now() - started }, 'held packets added to the image');
      }
      const selector = workloadSelector(dumped.endpoints, backendIds);
      const steeringEntries = await steps.time('steering export', () => this.hostStep('steering export', () => exportIntoImage(this.handoffEnds(), this.imageDir(id), selector)));
      this.records.update(id, (r) => {
        r.steerSelector = selector;
      });
      const t = await steps.time('send image', () => stream.finish());
      steps.addFrom(t.peerSteps);
      this.log.info({ migrationId: id, files: t.files, bytes: t.bytes }, 'image sent');
      return { durationMs: performance.now() - started, bytes: t.bytes, files: t.files, steeringEntries, steps: steps.wire(this.opts.host) };
    } catch (err) {
      stream.cancel();
      throw err;
    }
  }

  /**
   * Traffic through again on the host where the workload now runs: lock entries off, then the
   * packets they held delivered; what CRIU's restore left of its own lock removed.
   */
  private async unlockHere(id: string, endpoints: WorkloadSpec['endpoints'], version: bigint): Promise<UnlockResponse> {
    const started = performance.now();
    const steps = new StepTimer();
    const record = this.records.get(id);
    let dropped = 0n;
    let leftovers = 0;
    let delivered = 0;
    const strategy = this.strategyOf(record.lockMode);
    if (record.locked.length > 0 || strategy.holdsEndpoints) {
      const scope = lockScope(endpoints);
      dropped = await this.unlock(scope, version, steps);
      delivered = await this.deliverHeld(id, scope, steps);
    }
    if (record.lockResidue) {
      // The restore removed the lock made for it; whatever it left is removed now.
      const residue = record.lockResidue;
      leftovers = (await steps.time(`${strategy.mode} lock leftovers`, () => this.hostStep(`unlock (${strategy.mode} lock leftovers)`, () => strategy.removeResidue(residue)))).removed;
      if (leftovers > 0) this.log.warn({ migrationId: id, leftovers, mode: strategy.mode }, 'the restore left part of its lock; removed');
    }
    this.records.update(id, (r) => {
      r.locked = [];
      r.lockResidue = undefined;
    });
    return { durationMs: performance.now() - started, droppedPackets: dropped.toString(), lockLeftovers: leftovers, deliveredPackets: delivered, steps: steps.wire(this.opts.host) };
  }

  /**
   * A step carried out after a call's own (pipelined freeze): its answer, or its failure as data;
   * the call's own work stands either way, and the controller records each as its own phase.
   */
  private async pipelined<T>(run: () => Promise<T>, answer: (r: T) => Partial<PipelinedStep>): Promise<PipelinedStep> {
    try {
      return { ok: true, error: '', code: 0, ...answer(await run()) };
    } catch (err) {
      const se = toServiceError(err);
      this.log.warn({ err: se.details }, 'pipelined step failed');
      return { ok: false, error: se.details ?? String(err), code: se.code ?? status.UNKNOWN };
    }
  }

  /** The workload's addresses up on this host; each one added is recorded, so Abort removes it. */
  private async addAddresses(id: string, endpoints: WorkloadSpec['endpoints']): Promise<void> {
    const have = await this.opts.platform.network.addresses();
    for (const a of unique(endpoints.map((e) => e.address))) {
      if (have.includes(a)) continue;
      // Recorded before it is added: an agent killed in between finds it in the record after
      // its restart, and Abort removes it (removing an address that never came up is a no-op).
      this.records.update(id, (r) => {
        r.addedAddresses = unique([...r.addedAddresses, a]);
      });
      await this.opts.platform.network.addAddress(a);
    }
  }

  /** Target, at Lock: the workload's addresses up behind the lock, in the background. */
  private async bringUpAddresses(id: string, endpoints: WorkloadSpec['endpoints']): Promise<void> {
    try {
      await this.addAddresses(id, endpoints);
    } catch (err) {
      // Restore brings them up again and fails there if it still cannot.
      this.log.warn({ migrationId: id, err: String(err) }, 'could not bring the workload\'s addresses up at lock');
    }
  }

  /**
   * A channel to a peer agent, kept: a new one per transfer would put a TCP and HTTP/2 handshake
   * inside every freeze. grpc-js reconnects a kept channel by itself.
   */
  private peer(address: string): AgentClient {
    let c = this.peers.get(address);
    if (!c) {
      c = agentClient(address);
      this.peers.set(address, c);
    }
    return c;
  }

  /** Closes the channels to peer agents (at shutdown). */
  close(): void {
    for (const c of this.peers.values()) c.close();
    this.peers.clear();
  }

  private handoffEnds() {
    return { steering: this.opts.platform.steering, log: this.log, readFile: this.opts.platform.readImageFile };
  }

  /** Remembers this host's forwarded-packet counter at the migration's Lock (once: a retried Lock keeps the first). */
  private async noteForwarding(id: string): Promise<void> {
    const steering = this.opts.platform.steering;
    if (!steering || this.records.get(id).forwardedAtLock !== undefined) return;
    try {
      const f = await steering.forwarding();
      this.records.update(id, (r) => {
        r.forwardedAtLock = f.forwarded.toString();
      });
    } catch (err) {
      this.log.warn({ migrationId: id, err: String(err) }, 'could not read the forwarding counter');
    }
  }

  /** Packets forwarded by this host's data plane since `atLock` (0 when unknown). */
  private async forwardedSince(atLock: string | undefined): Promise<bigint> {
    const steering = this.opts.platform.steering;
    if (!steering || atLock === undefined) return 0n;
    try {
      const now = (await steering.forwarding()).forwarded;
      const since = now - BigInt(atLock);
      return since > 0n ? since : 0n;
    } catch {
      return 0n;
    }
  }

  /** The strategy of a recorded lock mode (absent: EBPF). */
  private strategyOf(mode: LockModeName | undefined): LockStrategy {
    return this.opts.platform.lockStrategy(mode ?? 'EBPF');
  }

  /**
   * Runs a host step, turning its failure into a HostOperationError naming host and step. A
   * PreconditionError goes on as it is: the host is not in the state the step needs.
   */
  private async hostStep<T>(operation: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof HostOperationError || err instanceof PreconditionError) throw err;
      throw new HostOperationError(this.opts.host, operation, err instanceof Error ? err.message : String(err));
    }
  }
}

/** The wire's lock mode; unset means EBPF. */
function lockModeFromWire(mode: string | number | null | undefined): LockModeName {
  if (mode === undefined || mode === null || mode === 'LOCK_MODE_UNSPECIFIED' || mode === 0 || mode === 'EBPF') return 'EBPF';
  if (mode === 'IPTABLES' || mode === 'NFTABLES') return mode;
  throw new InvalidArgumentError('lock_mode', `lock_mode ${String(mode)} is not one of EBPF, IPTABLES, NFTABLES`);
}


/** The endpoints a lock step works on: at least one (a workload owns at least one), each valid. */
function requiredEndpoints(list: Endpoint__Output[]): Endpoint[] {
  if (list.length === 0) throw new InvalidArgumentError('endpoints', 'endpoints is empty: name the endpoints of the migration\'s workload');
  return endpointsFromWire(list);
}

function migrationId(id: string): string {
  if (!MIGRATION_ID.test(id)) throw new InvalidArgumentError('migration_id', `migration_id "${id}" must be 1-64 of [A-Za-z0-9_-]`);
  return id;
}

/** The workload's steering state: its endpoints' addresses and its backends (as the controller named them). */
function workloadSelector(endpoints: WorkloadSpec['endpoints'], backendIds: number[] | undefined): { addresses: string[]; backendIds: number[] } {
  return { addresses: unique(endpoints.map((e) => e.address)), backendIds: backendIds ?? [] };
}

function unique<T>(xs: T[]): T[] {
  return [...new Set(xs)];
}
