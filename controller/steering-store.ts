/**
 * The steering rule table in JetStream KV: one key holds the whole table, written with
 * compare-and-set on the key's revision, so two writers (two controllers, or two requests in
 * one) never interleave: each change is decided on the table it replaces. Agents watch the same
 * key (agent/steering-sync.ts): storing a table is publishing it.
 */
import type { JsonKv, KvWatch } from '../lib/bus.js';
import { ConflictError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import { STEERING_TABLE_KEY } from '../lib/subjects.js';
import { EMPTY_TABLE, type RuleTable } from './steering-table.js';

/**
 * How long a change keeps retrying lost compare-and-sets before it gives up (another writer keeps
 * winning). A budget in time, not a count: a writer with a queue of changes wins every race it
 * starts while its queue lasts, so a count failed under a plain burst from two controllers.
 */
const CONFLICT_BUDGET_MS = 10_000;
/** Upper bound of the random pause after a lost race, so two losers do not collide again in step. */
const CONFLICT_JITTER_MS = 20;

export interface Decision<R> {
  table: RuleTable;
  /** False: nothing to store (the table already says it); no generation is spent. */
  changed: boolean;
  result: R;
}

export interface Stored<R> {
  table: RuleTable;
  changed: boolean;
  result: R;
  /** Unix epoch ms (sub-ms) when the change was validated and its write began; the same clock as agents' acks on this machine. */
  acceptedAtMs: number;
}

export class SteeringStore {
  private current: { table: RuleTable; revision: number } = { table: EMPTY_TABLE, revision: 0 };
  private queue: Promise<unknown> = Promise.resolve();
  private readonly listeners = new Set<(t: RuleTable, atMs: number) => void>();
  private watcher?: KvWatch<RuleTable>;

  constructor(
    /** Opened with STEERING_KV (lib/subjects.ts), so that it can be followed. */
    private readonly kv: JsonKv<RuleTable>,
    private readonly log?: Logger,
  ) {}

  /** Reads the stored table, then follows the key so that changes by another controller show too. */
  async start(): Promise<void> {
    const e = await this.kv.get(STEERING_TABLE_KEY);
    if (e) this.current = { table: e.value, revision: e.revision };
    this.watcher = await this.kv.follow(STEERING_TABLE_KEY);
    void (async () => {
      for await (const entry of this.watcher!) this.observe(entry.value, entry.revision);
    })().catch((err: unknown) => this.log?.error({ err }, 'steering table watch ended'));
  }

  stop(): void {
    this.watcher?.stop();
  }

  table(): RuleTable {
    return this.current.table;
  }

  /** Called with each new generation (the caller's own changes and other writers'). */
  subscribe(fn: (t: RuleTable, atMs: number) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /**
   * Decides a change on the latest table and stores it with compare-and-set; on a lost race it
   * re-reads and decides again (so the decision always saw the table it replaces). Changes from
   * this process run one at a time. Errors from `decide` pass through and store nothing.
   */
  mutate<R>(decide: (t: RuleTable) => Promise<Decision<R>>): Promise<Stored<R>> {
    const run = async (): Promise<Stored<R>> => {
      const giveUpAt = Date.now() + CONFLICT_BUDGET_MS;
      for (let attempt = 1; ; attempt++) {
        const base = this.current;
        const d = await decide(base.table);
        if (!d.changed) return { table: base.table, changed: false, result: d.result, acceptedAtMs: now() };
        // Accepted: validated, and its write begins. Agents watch the same stream, so one may
        // hold the table before the store's acknowledgement gets back here.
        const acceptedAtMs = now();
        try {
          const revision = base.revision === 0 ? await this.kv.create(STEERING_TABLE_KEY, d.table) : await this.kv.update(STEERING_TABLE_KEY, d.table, base.revision);
          this.observe(d.table, revision);
          return { table: d.table, changed: true, result: d.result, acceptedAtMs };
        } catch (err) {
          // Someone else wrote first (or the key appeared): read what they wrote and decide again.
          const latest = await this.kv.get(STEERING_TABLE_KEY);
          if (!latest || latest.revision === base.revision) throw err;
          this.observe(latest.value, latest.revision);
          if (Date.now() >= giveUpAt)
            throw new ConflictError(`the steering table changed under this request ${attempt} times in a row over ${CONFLICT_BUDGET_MS} ms (another controller keeps writing); retry`);
          await sleep(Math.random() * CONFLICT_JITTER_MS);
        }
      }
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }

  private observe(table: RuleTable, revision: number): void {
    if (revision <= this.current.revision) return;
    this.current = { table, revision };
    const at = now();
    for (const fn of this.listeners) {
      try {
        fn(table, at);
      } catch (err) {
        this.log?.warn({ err }, 'steering listener failed');
      }
    }
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Wall-clock ms with sub-ms resolution, comparable across processes on one machine. */
export function now(): number {
  return performance.timeOrigin + performance.now();
}
