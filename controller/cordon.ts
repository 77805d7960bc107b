/**
 * Cordoned hosts: unschedulable, so placement skips them and a migration to one is refused. Kept
 * in JetStream KV (one key per host, compare-and-set on revision) so that a restarted controller
 * still knows; an in-memory copy answers reads. A change is published on NATS as an event.
 */
import type { Bus, JsonKv } from '../lib/bus.js';
import { ConflictError, PreconditionError } from '../lib/errors.js';
import { SUBJECTS } from '../lib/subjects.js';

export interface CordonRecord {
  host: string;
  cordoned: boolean;
  /** Why (the operator's words, or the drain that cordoned it). */
  reason: string;
  atMs: number;
}

/** A migration or placement named a cordoned host as its target. */
export class HostCordonedError extends PreconditionError {
  constructor(readonly host: string, readonly reason: string) {
    super(`host "${host}" is cordoned${reason ? ` (${reason})` : ''}: nothing is placed or moved there; godwit uncordon ${host} first`);
    this.name = 'HostCordonedError';
  }
}

const MAX_CAS_TRIES = 5;

export class CordonStore {
  private readonly cache = new Map<string, { value: CordonRecord; revision: number }>();

  constructor(
    private readonly kv: JsonKv<CordonRecord>,
    private readonly bus?: Bus,
  ) {}

  async load(): Promise<void> {
    for (const key of await this.kv.keys()) {
      const e = await this.kv.get(key);
      if (e) this.cache.set(key, e);
    }
  }

  /** The host's cordon, if it is cordoned now. */
  get(host: string): CordonRecord | undefined {
    const c = this.cache.get(host)?.value;
    return c?.cordoned ? c : undefined;
  }

  isCordoned(host: string): boolean {
    return this.get(host) !== undefined;
  }

  /** HostCordonedError (FAILED_PRECONDITION) when `host` may not receive workloads. */
  checkTarget(host: string): void {
    const c = this.get(host);
    if (c) throw new HostCordonedError(host, c.reason);
  }

  /** Sets the host's cordon (idempotent: the same state again changes only the reason). */
  async set(host: string, cordoned: boolean, reason: string): Promise<CordonRecord> {
    const value: CordonRecord = { host, cordoned, reason: cordoned ? reason : '', atMs: Date.now() };
    for (let i = 0; i < MAX_CAS_TRIES; i++) {
      const current = await this.kv.get(host);
      try {
        const revision = current ? await this.kv.update(host, value, current.revision) : await this.kv.create(host, value);
        this.cache.set(host, { value, revision });
        this.bus?.publish(SUBJECTS.cordonEvent(host), value);
        return value;
      } catch {
        // another controller wrote it in between: read again
      }
    }
    throw new ConflictError(`could not record the cordon of host "${host}": lost ${MAX_CAS_TRIES} compare-and-sets in a row`);
  }
}
