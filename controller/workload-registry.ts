/**
 * The workloads started with `godwit run`: name, host, root PID, endpoints. Recorded in JetStream
 * KV (one key per name, compare-and-set on revision) with an in-memory copy for reads; every
 * successful migration of one moves its record to the target (and a rollback that brought it back
 * as a new process records that PID).
 */
import type { JsonKv } from '../lib/bus.js';
import type { Endpoint } from '../lib/endpoint.js';
import { AlreadyExistsError, GodwitError } from '../lib/errors.js';
import { status } from '@grpc/grpc-js';

export interface WorkloadRecord {
  name: string;
  host: string;
  /** Host PID of its init on `host`. */
  pid: number;
  endpoints: Endpoint[];
  command: string[];
  user: string;
  outputPath: string;
  startedAtMs: number;
  updatedAtMs: number;
  /** Placement reads them (controller/placement.ts). Absent in older records: none. */
  labels?: Record<string, string>;
  /** Registered with RegisterWorkload (a process started otherwise), not started by `godwit run`. */
  registered?: boolean;
}

export class WorkloadNotFoundError extends GodwitError {
  readonly code = status.NOT_FOUND;
  constructor(readonly workload: string, known: readonly string[]) {
    super(`no workload named "${workload}" (registered: ${known.join(', ') || 'none'}); start one with godwit run`);
    this.name = 'WorkloadNotFoundError';
  }
}

const MAX_CAS_TRIES = 5;

export class WorkloadRegistry {
  private readonly cache = new Map<string, { value: WorkloadRecord; revision: number }>();

  constructor(private readonly kv: JsonKv<WorkloadRecord>) {}

  async load(): Promise<void> {
    for (const key of await this.kv.keys()) {
      const e = await this.kv.get(key);
      if (e) this.cache.set(key, e);
    }
  }

  get(name: string): WorkloadRecord | undefined {
    return this.cache.get(name)?.value;
  }

  /** The record, or WorkloadNotFoundError naming the registered ones. */
  find(name: string): WorkloadRecord {
    const w = this.get(name);
    if (!w) throw new WorkloadNotFoundError(name, [...this.cache.keys()]);
    return w;
  }

  list(): WorkloadRecord[] {
    return [...this.cache.values()].map((e) => e.value).sort((a, b) => a.name.localeCompare(b.name));
  }

  findByPid(host: string, pid: number): WorkloadRecord | undefined {
    return this.list().find((w) => w.host === host && w.pid === pid);
  }

  /** ALREADY_EXISTS when the name is taken (here or by another controller). */
  async register(w: WorkloadRecord): Promise<void> {
    if (this.cache.has(w.name)) throw new AlreadyExistsError(`a workload named "${w.name}" is registered already (on host "${this.cache.get(w.name)?.value.host}"); pick another --name`);
    const revision = await this.kv.create(w.name, w).catch((err: unknown) => {
      throw new AlreadyExistsError(`a workload named "${w.name}" is registered already: ${err instanceof Error ? err.message : String(err)}`);
    });
    this.cache.set(w.name, { value: w, revision });
  }

  /** Replaces the record of a workload that no longer runs (its name is reused). */
  async replace(w: WorkloadRecord): Promise<void> {
    const current = await this.kv.get(w.name);
    if (!current) return this.register(w);
    const revision = await this.kv.update(w.name, w, current.revision).catch((err: unknown) => {
      throw new AlreadyExistsError(`workload "${w.name}" was registered again meanwhile: ${err instanceof Error ? err.message : String(err)}`);
    });
    this.cache.set(w.name, { value: w, revision });
  }

  /** Where a migration left the workload: host and the PID of its init there. */
  async moved(name: string, host: string, pid: number): Promise<void> {
    for (let i = 0; i < MAX_CAS_TRIES; i++) {
      const current = await this.kv.get(name);
      if (!current) return;
      const value = { ...current.value, host, pid, updatedAtMs: Date.now() };
      try {
        const revision = await this.kv.update(name, value, current.revision);
        this.cache.set(name, { value, revision });
        return;
      } catch {
        // another writer in between: read again
      }
    }
    throw new Error(`could not record workload "${name}" on host "${host}" (pid ${pid}): lost ${MAX_CAS_TRIES} compare-and-sets in a row`);
  }
}
