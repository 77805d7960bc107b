/**
 * Migrations recorded in JetStream KV (one key per migration, compare-and-set on revision), with
 * an in-memory copy for reads. A lost compare-and-set means another controller wrote the record.
 */
import type { JsonKv } from '../lib/bus.js';
import type { MigrationState } from './migration-machine.js';

export class MigrationStore {
  private readonly cache = new Map<string, { state: MigrationState; revision: number }>();

  constructor(private readonly kv: JsonKv<MigrationState>) {}

  async create(state: MigrationState): Promise<void> {
    const revision = await this.kv.create(state.id, state);
    this.cache.set(state.id, { state, revision });
  }

  async save(state: MigrationState): Promise<void> {
    const prev = this.cache.get(state.id);
    if (!prev) throw new Error(`migration ${state.id} was never created`);
    let revision: number;
    try {
      revision = await this.kv.update(state.id, state, prev.revision);
    } catch (err) {
      // A write whose answer was lost (NATS restarted under it) is stored all the same: the
      // record then holds exactly this state, and it is ours. Anything else is another writer's.
      const now = await this.kv.get(state.id).catch(() => undefined);
      if (!now || JSON.stringify(now.value) !== JSON.stringify(state)) throw err;
      revision = now.revision;
    }
    this.cache.set(state.id, { state, revision });
  }

  get(id: string): MigrationState | undefined {
    return this.cache.get(id)?.state;
  }

  list(): MigrationState[] {
    return [...this.cache.values()].map((e) => e.state).sort((a, b) => a.createdAtMs - b.createdAtMs);
  }

  /**
   * One record as KV holds it now (a standby between its reloads). A key KV cannot hold, or a
   * read that fails, leaves the copy as it was: the caller answers from what it has.
   */
  async refresh(id: string): Promise<void> {
    const e = await this.kv.get(id).catch(() => undefined);
    if (e && (this.cache.get(id)?.revision ?? 0) < e.revision) this.cache.set(id, { state: e.value, revision: e.revision });
  }

  /** Reloads what is recorded (at start, on taking the lead: controller/resume.ts; a standby, to serve reads). */
  async load(): Promise<void> {
    for (const key of await this.kv.keys()) {
      const e = await this.kv.get(key);
      if (e) this.cache.set(key, { state: e.value, revision: e.revision });
    }
  }
}
