/**
 * Keeps this host's steering data plane at the controller's latest rule generation.
 *
 * Why the table lives in JetStream KV and agents follow it (and not a push RPC per host, or a
 * plain NATS subject): the controller stores the whole table under one KV key with
 * compare-and-set, and following the key gives its latest value first, then every change. So a
 * new, restarted or reconnected agent catches up by the same code path that follows changes,
 * with no catch-up RPC and no per-host fan-out in the controller, over the NATS connection the
 * agent keeps for heartbeats anyway. Each generation is the whole table, so a missed
 * intermediate one does not matter: only the latest is applied. (The follow is a core
 * subscription to the stream's republished values plus a get on (re)connect, not a JetStream
 * consumer per agent: Bus.followKey says why.)
 *
 * After the data plane holds a generation the agent acks it on `godwit.hosts.<host>.steering.ack`
 * at once (the controller's waitForGeneration) and repeats it in every heartbeat (an ack lost
 * in a reconnect is made good within a second).
 */
import type { SteeringAck } from './heartbeat.js';
import type { JsonKv, KvWatch } from '../lib/bus.js';
import type { Logger } from '../lib/log.js';
import { STEERING_TABLE_KEY } from '../lib/subjects.js';
import type { SteeringDataplane, SteeringTable } from './steering.js';

/** After a failed apply, try the latest table again this much later (unless a newer one comes first). */
const RETRY_MS = 1_000;

export interface SteeringSyncOptions {
  host: string;
  dataplane: SteeringDataplane;
  /** The controller's table bucket, opened with STEERING_KV (lib/subjects.ts). */
  kv: JsonKv<SteeringTable>;
  /** Sends an ack (SUBJECTS.steeringAck(host)). */
  ack: (ack: SteeringAck) => void;
  log: Logger;
}

export class SteeringSync {
  private held = 0;
  private pending?: SteeringTable;
  private applying = false;
  private watcher?: KvWatch<SteeringTable>;
  private retry?: NodeJS.Timeout;
  private stopped = false;

  constructor(private readonly opts: SteeringSyncOptions) {}

  /** Installs the data plane (keeping pinned flows), then follows the table. */
  async start(): Promise<void> {
    const dp = this.opts.dataplane;
    await dp.install();
    this.held = await dp.appliedGeneration();
    this.opts.log.info({ generation: this.held }, 'steering data plane ready');
    this.watcher = await this.opts.kv.follow(STEERING_TABLE_KEY);
    void (async () => {
      for await (const e of this.watcher!) this.offer(e.value);
    })().catch((err: unknown) => this.opts.log.error({ err }, 'steering table watch ended'));
  }

  /** The generation this host's data plane holds. */
  generation(): number {
    return this.held;
  }

  stop(): void {
    this.stopped = true;
    this.watcher?.stop();
    clearTimeout(this.retry);
  }

  /** Keeps only the newest table waiting: a generation is the whole table, so older ones are moot. */
  private offer(table: SteeringTable): void {
    if (typeof table?.generation !== 'number' || !Array.isArray(table.services)) {
      this.opts.log.warn('steering table in KV is malformed; ignored');
      return;
    }
    if (!this.pending || table.generation >= this.pending.generation)
      this.pending = { generation: table.generation, services: table.services, addresses: Array.isArray(table.addresses) ? table.addresses : [] };
    if (!this.applying) void this.drain();
  }

  private async drain(): Promise<void> {
    this.applying = true;
    clearTimeout(this.retry);
    try {
      while (this.pending && !this.stopped) {
        const table = this.pending;
        this.pending = undefined;
        const t0 = performance.now();
        try {
          const r = await this.opts.dataplane.apply(table);
          const applyMs = performance.now() - t0;
          // At or below what the kernel holds (an agent restart): nothing to write, still worth an ack.
          this.held = r.generation;
          this.opts.ack({ host: this.opts.host, generation: this.held, atMs: performance.timeOrigin + performance.now(), applyMs });
          if (r.applied) this.opts.log.debug({ generation: r.generation, applyMs }, 'steering generation applied');
        } catch (err) {
          this.opts.log.error({ err, generation: table.generation }, 'steering apply failed; retrying');
          if (!this.pending) this.pending = table;
          this.retry = setTimeout(() => void this.drain(), RETRY_MS);
          return;
        }
      }
    } finally {
      this.applying = false;
    }
  }
}
