/**
 * Drains as one record each: kept in JetStream KV (one key per drain, compare-and-set on
 * revision), with an in-memory copy for reads, and published on NATS after every change
 * (`godwit.events.drain.<id>`, kept by the events stream) and to watchers in this process.
 */
import { EventEmitter } from 'node:events';
import type { Bus, JsonKv } from '../lib/bus.js';
import type { Logger } from '../lib/log.js';
import { SUBJECTS } from '../lib/subjects.js';

export type DrainWorkloadStateName = 'WAITING' | 'MOVING' | 'MOVED' | 'FAILED';
export type DrainStateName = 'RUNNING' | 'DONE' | 'PARTIAL';

export interface DrainWorkloadState {
  name: string;
  /** '' until a target is chosen. */
  targetHost: string;
  state: DrainWorkloadStateName;
  migrationId: string;
  /** Why it did not move (FAILED). */
  error: string;
  freezeMs: number;
}

export interface DrainState {
  id: string;
  host: string;
  state: DrainStateName;
  workloads: DrainWorkloadState[];
  maxPerHost: number;
  maxInFlight: number;
  /** Hosts the workloads may go to (empty: any). */
  targets: string[];
  createdAtMs: number;
  updatedAtMs: number;
  moved: number;
  failed: number;
}

export function isDrainOver(d: DrainState): boolean {
  return d.state !== 'RUNNING';
}

export class DrainStore {
  private readonly cache = new Map<string, { state: DrainState; revision: number }>();
  private readonly events = new EventEmitter();
  /** Saves of one drain, one at a time and in order (each compare-and-set builds on the last). */
  private readonly queues = new Map<string, Promise<void>>();

  constructor(
    private readonly kv: JsonKv<DrainState>,
    private readonly bus: Bus,
    private readonly log: Logger,
  ) {
    this.events.setMaxListeners(0);
  }

  async load(): Promise<void> {
    for (const key of await this.kv.keys()) {
      const e = await this.kv.get(key);
      if (e) this.cache.set(key, { state: e.value, revision: e.revision });
    }
  }

  async create(d: DrainState): Promise<void> {
    const revision = await this.kv.create(d.id, d);
    this.cache.set(d.id, { state: d, revision });
    this.announce(d);
  }

  /**
   * Records the drain's new state: in memory and to watchers at once, to KV in the background
   * (in order); a failed write is logged and the next save carries the state.
   */
  save(d: DrainState): Promise<void> {
    const prev = this.cache.get(d.id);
    if (!prev) throw new Error(`drain ${d.id} was never created`);
    this.cache.set(d.id, { state: d, revision: prev.revision });
    this.announce(d);
    const write = async () => {
      const current = this.cache.get(d.id)!;
      try {
        const revision = await this.kv.update(d.id, current.state, current.revision);
        this.cache.set(d.id, { state: this.cache.get(d.id)!.state, revision });
      } catch (err) {
        const latest = await this.kv.get(d.id).catch(() => undefined);
        if (latest) this.cache.set(d.id, { state: this.cache.get(d.id)!.state, revision: latest.revision });
        this.log.error({ drainId: d.id, err: String(err) }, 'could not record the drain; the next change retries');
      }
    };
    const p = (this.queues.get(d.id) ?? Promise.resolve()).then(write);
    this.queues.set(d.id, p);
    return p;
  }

  get(id: string): DrainState | undefined {
    return this.cache.get(id)?.state;
  }

  list(): DrainState[] {
    return [...this.cache.values()].map((e) => e.state).sort((a, b) => a.createdAtMs - b.createdAtMs);
  }

  /** Calls `listener` with the drain's record after each change; returns the unsubscribe function. */
  watch(id: string, listener: (d: DrainState) => void): () => void {
    const name = `d:${id}`;
    this.events.on(name, listener);
    return () => this.events.off(name, listener);
  }

  private announce(d: DrainState): void {
    this.bus.publish(SUBJECTS.drainEvent(d.id), d);
    this.events.emit(`d:${d.id}`, d);
  }
}
