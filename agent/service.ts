/**
 * The agent's gRPC service: the only thing that changes a host. Each call is keyed by migration
 * id, recorded in MigrationRecords, and safe to repeat.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { release } from 'node:os';
import type * as grpc from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import type { AgentHandlers } from '../proto/gen/godwit/v1/Agent.js';
import type { ImageChunk__Output } from '../proto/gen/godwit/v1/ImageChunk.js';
import type { ReceiveImageResponse } from '../proto/gen/godwit/v1/ReceiveImageResponse.js';
import { HostOperationError, InvalidArgumentError, PreconditionError, ProcessNotFoundError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import { agentClient, handleUnary, toServiceError } from '../lib/rpc.js';
import { endpointsFromWire, versionFromWire, workloadFromWire, type WorkloadSpec } from '../lib/wire.js';
import { imageTotals, receiveImage, sendImage } from './images.js';
import { MigrationRecords } from './migration-record.js';
import type { HostPlatform } from './platform.js';

export interface AgentServiceOptions {
  host: string;
  platform: HostPlatform;
  stateDir: string;
  log: Logger;
  /** Longest a lock may be held when the request names no lease. */
  defaultLeaseMs?: number;
}

const MIGRATION_ID = /^[A-Za-z0-9_-]{1,64}$/;
const TRANSFER_TIMEOUT_MS = 10 * 60_000;

export class AgentService {
  private readonly records: MigrationRecords;
  private readonly log: Logger;

  constructor(private readonly opts: AgentServiceOptions) {
    this.records = new MigrationRecords(opts.stateDir);
    this.log = opts.log;
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
        return { command: info.command, processes: info.processes };
      }),

      Lock: handleUnary(log, 'Lock', async (req) => {
        const id = migrationId(req.migrationId);
        const endpoints = endpointsFromWire(req.endpoints);
        const version = versionFromWire(req.version);
        const leaseMs = req.leaseMs || this.opts.defaultLeaseMs || 120_000;
        const started = performance.now();
        await this.hostStep('lock', () => p.netlock.lock(endpoints, version, leaseMs));
        this.records.update(id, (r) => {
          r.locked = endpoints;
          r.lockVersion = version.toString();
        });
        return { durationMs: performance.now() - started };
      }),

      Unlock: handleUnary(log, 'Unlock', async (req) => {
        const id = migrationId(req.migrationId);
        const endpoints = endpointsFromWire(req.endpoints);
        const version = versionFromWire(req.version);
        const started = performance.now();
        const dropped = await this.unlock(endpoints, version);
        this.records.update(id, (r) => {
          r.locked = [];
        });
        return { durationMs: performance.now() - started, droppedPackets: dropped.toString() };
      }),

      Checkpoint: handleUnary(log, 'Checkpoint', async (req) => {
        const id = migrationId(req.migrationId);
        const w = workloadFromWire(req.workload);
        const dir = this.imageDir(id);
        if (!this.records.get(id).dumped) {
          await this.inspect(w);
          await rm(dir, { recursive: true, force: true });
          await mkdirp(dir);
          const result = await this.hostStep('checkpoint', () => p.checkpoint.dump(w.pid, dir));
          this.records.update(id, (r) => {
            r.dumped = { pid: w.pid, endpoints: w.endpoints };
          });
          const totals = await imageTotals(dir);
          return { durationMs: result.durationMs, imageBytes: totals.bytes, imageFiles: totals.files, frozenMs: 0 };
        }
        const totals = await imageTotals(dir);
        return { durationMs: 0, imageBytes: totals.bytes, imageFiles: totals.files, frozenMs: 0 };
      }),

      SendImage: handleUnary(log, 'SendImage', async (req) => {
        const id = migrationId(req.migrationId);
        if (!req.peerAddress) throw new InvalidArgumentError('peer_address', 'peer_address is required: the target agent\'s gRPC address');
        if (!this.records.get(id).dumped) throw new PreconditionError(`migration ${id} has no checkpoint on host "${h}" to send`);
        const started = performance.now();
        const client = agentClient(req.peerAddress);
        try {
          const t = await sendImage(client, id, this.imageDir(id), TRANSFER_TIMEOUT_MS);
          return { durationMs: performance.now() - started, bytes: t.bytes, files: t.files };
        } finally {
          client.close();
        }
      }),

      ReceiveImage: (call: grpc.ServerReadableStream<ImageChunk__Output, ReceiveImageResponse>, callback) => {
        receiveImage(call, (id) => this.imageDir(migrationId(id))).then(
          ({ migrationId: id, totals }) => {
            this.records.update(id, (r) => {
              r.imageReceived = true;
            });
            callback(null, totals);
          },
          (err: unknown) => {
            const code = typeof (err as { code?: unknown }).code === 'number' ? (err as { code: status }).code : undefined;
            log.warn({ rpc: 'ReceiveImage', err: String(err) }, 'rpc failed');
            callback(code !== undefined ? { code, details: (err as Error).message } : toServiceError(err));
          },
        );
      },

      Restore: handleUnary(log, 'Restore', async (req) => {
        const id = migrationId(req.migrationId);
        const w = workloadFromWire(req.workload);
        const record = this.records.get(id);
        if (record.restoredPid && (await p.processInfo(record.restoredPid))) {
          return { durationMs: 0, pid: record.restoredPid, criuMs: 0 };
        }
        if (!record.imageReceived) throw new PreconditionError(`migration ${id} has no image on host "${h}"; transfer it first`);
        const started = performance.now();
        const restored = await this.restoreHere(id, w);
        return { durationMs: performance.now() - started, pid: restored.pid, criuMs: restored.criuMs };
      }),

      Release: handleUnary(log, 'Release', async (req) => {
        const id = migrationId(req.migrationId);
        const endpoints = endpointsFromWire(req.endpoints);
        const version = versionFromWire(req.version);
        const started = performance.now();
        // Address down first: while it is still locked, nothing this host sends can reset a peer.
        for (const a of unique(endpoints.map((e) => e.address))) await p.network.removeAddress(a);
        await this.unlock(endpoints, version);
        await rm(this.imageDir(id), { recursive: true, force: true });
        this.records.update(id, (r) => {
          r.locked = [];
          r.released = true;
        });
        return { durationMs: performance.now() - started };
      }),

      Abort: handleUnary(log, 'Abort', async (req) => {
        const id = migrationId(req.migrationId);
        const started = performance.now();
        const { actions, pid } = await this.abort(id);
        return { durationMs: performance.now() - started, actions, pid: pid ?? 0 };
      }),
    };
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

  /** Address up, announced while CRIU restores (the lock holds packets off until unlock). */
  private async restoreHere(id: string, w: WorkloadSpec): Promise<{ pid: number; criuMs: number }> {
    const p = this.opts.platform;
    for (const a of unique(w.endpoints.map((e) => e.address))) {
      if (await p.network.addAddress(a))
        this.records.update(id, (r) => {
          r.addedAddresses = unique([...r.addedAddresses, a]);
        });
    }
    const announced = Promise.all(unique(w.endpoints.map((e) => e.address)).map((a) => p.network.announce(a)));
    const restored = await this.hostStep('restore', () => p.checkpoint.restore(this.imageDir(id)));
    await announced;
    this.records.update(id, (r) => {
      r.restoredPid = restored.pid;
    });
    return { pid: restored.pid, criuMs: restored.durationMs };
  }

  private async unlock(endpoints: WorkloadSpec['endpoints'], version: bigint): Promise<bigint> {
    const p = this.opts.platform;
    const wanted = new Set(endpoints.map((e) => `${e.proto}/${e.address}/${e.port}`));
    const entries = await p.netlock.list();
    const dropped = entries
      .filter((e) => wanted.has(`${e.endpoint.proto}/${e.endpoint.address}/${e.endpoint.port}`))
      .reduce((sum, e) => sum + e.drops, 0n);
    await this.hostStep('unlock', () => p.netlock.unlock(endpoints, version));
    return dropped;
  }

  /**
   * Undo this host's part of a migration, in the order that keeps the workload running once:
   * kill a copy restored here by this migration (target), bring back a workload dumped here
   * (source), then drop the addresses it added and the lock entries it set.
   */
  private async abort(id: string): Promise<{ actions: string[]; pid?: number }> {
    const p = this.opts.platform;
    const r = this.records.get(id);
    const actions: string[] = [];
    let pid: number | undefined;
    if (r.restoredPid && !r.dumped && (await p.processInfo(r.restoredPid))) {
      process.kill(r.restoredPid, 'SIGKILL');
      actions.push(`killed restored pid ${r.restoredPid}`);
      this.records.update(id, (x) => (x.restoredPid = undefined));
    }
    for (const a of r.addedAddresses) {
      await p.network.removeAddress(a);
      actions.push(`removed address ${a}`);
    }
    if (r.dumped) {
      const alive = r.restoredPid ? await p.processInfo(r.restoredPid) : await p.processInfo(r.dumped.pid);
      if (alive) {
        pid = alive.pid;
        actions.push(`workload already running as pid ${alive.pid}`);
      } else {
        const restored = await this.hostStep('restore on source', () => p.checkpoint.restore(this.imageDir(id)));
        pid = restored.pid;
        this.records.update(id, (x) => (x.restoredPid = restored.pid));
        actions.push(`restored workload from its image as pid ${restored.pid}`);
      }
      // Peers may have learned the target's MAC from its announcement: claim the address back.
      for (const a of unique(r.dumped.endpoints.map((e) => e.address))) await p.network.announce(a);
      actions.push('announced addresses');
    }
    if (r.locked.length > 0 && r.lockVersion) {
      await p.netlock.unlock(r.locked, BigInt(r.lockVersion));
      actions.push(`unlocked ${r.locked.length} endpoint(s)`);
    }
    if (!r.dumped) await rm(this.imageDir(id), { recursive: true, force: true });
    this.records.update(id, (x) => {
      x.locked = [];
      x.addedAddresses = [];
      x.aborted = true;
    });
    this.log.info({ migrationId: id, actions }, 'aborted');
    return { actions, pid };
  }

  /** Runs a host step, turning its failure into a HostOperationError naming host and step. */
  private async hostStep<T>(operation: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof HostOperationError) throw err;
      throw new HostOperationError(this.opts.host, operation, err instanceof Error ? err.message : String(err));
    }
  }
}

function migrationId(id: string): string {
  if (!MIGRATION_ID.test(id)) throw new InvalidArgumentError('migration_id', `migration_id "${id}" must be 1-64 of [A-Za-z0-9_-]`);
  return id;
}

function unique<T>(xs: T[]): T[] {
  return [...new Set(xs)];
}

async function mkdirp(dir: string) {
  const { mkdir } = await import('node:fs/promises');
  await mkdir(dir, { recursive: true });
}
