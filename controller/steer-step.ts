/**
 * The migration's steering, carried out: STEER issues the generation that places the workload on
 * the target and starts waiting for the fleet's acks without holding the migration up; UNLOCK
 * joins that wait before the target lets traffic through; ROLLBACK places the workload back on
 * the source. The placement itself is pure (controller/steering-placement.ts); the store is how
 * every agent learns it (controller/steering-store.ts), the registry how the acks come back.
 */
import type { Logger } from '../lib/log.js';
import { FORWARD, type MigrationState, type SteerRecord } from './migration-machine.js';
import type { Convergence, HostRegistry } from './registry.js';
import { placeWorkload } from './steering-placement.js';
import { now, type SteeringStore } from './steering-store.js';

/**
 * Longest UNLOCK waits for every ready host to hold the generation. A host later than this is
 * named in the record and the migration goes on: until it catches up it sends the workload's
 * packets to the source, whose data plane forwards them to the target.
 */
export const STEER_CONVERGE_TIMEOUT_MS = 5_000;

export interface SteerStepOptions {
  store: SteeringStore;
  registry: HostRegistry;
  log: Logger;
  convergeTimeoutMs?: number;
}

export class SteerStep {
  /** Acks being waited for, by migration id (a restarted controller waits afresh from the record). */
  private readonly waits = new Map<string, Promise<Convergence>>();
  /** Waits that have ended, by migration id (what joinIfSettled answers from). */
  private readonly settled = new Map<string, Convergence>();

  constructor(private readonly opts: SteerStepOptions) {}

  /** STEER: the workload placed on the target in a new generation; returns at once, the acks are waited for by join(). */
  async issue(state: MigrationState): Promise<Partial<SteerRecord>> {
    const skipped = this.skipReason();
    if (skipped) return { generation: 0, issuedAtMs: now(), backendIds: [], skipped };
    const placed = await this.place(state, state.request.targetHost);
    const wait = this.opts.registry.waitForGeneration(placed.generation, this.timeoutMs(), placed.issuedAtMs);
    this.waits.set(state.id, wait);
    void wait.then((c) => this.waits.has(state.id) && this.settled.set(state.id, c), () => undefined);
    return placed;
  }

  /** UNLOCK: once every ready host holds STEER's generation (or the wait gives up), how that went. */
  async join(state: MigrationState): Promise<Partial<SteerRecord>> {
    const s = state.steer;
    if (!s || !s.generation) return {};
    const t0 = now();
    const c = await (this.waits.get(state.id) ?? this.opts.registry.waitForGeneration(s.generation, this.timeoutMs(), s.issuedAtMs));
    this.waits.delete(state.id);
    this.settled.delete(state.id);
    const waitedMs = now() - t0;
    if (!c.converged) this.opts.log.warn({ migrationId: state.id, generation: s.generation, lagging: c.lagging }, 'hosts did not ack the migration\'s steering in time; the source forwards for them');
    // Judged on the acks' own times, not on waitedMs: awaiting a settled wait still costs a turn
    // of the event loop, which on a busy controller is more than nothing.
    const insideFreeze = c.converged && s.issuedAtMs + c.convergeMs <= t0;
    return { convergeMs: c.convergeMs, converged: c.converged, lagging: c.lagging, waitedMs, insideFreeze };
  }

  /**
   * RESTORE of a pipelined freeze: how the acks went, if they are all in already (or there is
   * nothing to wait for); undefined while some are still awaited, when UNLOCK must join the wait.
   */
  joinIfSettled(state: MigrationState): Partial<SteerRecord> | undefined {
    const s = state.steer;
    if (!s || !s.generation) return {};
    const c = this.settled.get(state.id);
    // Still waiting, or some host never acked: UNLOCK joins the same wait and records the laggards.
    if (!c || !c.converged) return undefined;
    this.settled.delete(state.id);
    this.waits.delete(state.id);
    return { convergeMs: c.convergeMs, converged: true, lagging: c.lagging, waitedMs: 0, insideFreeze: true };
  }

  /** ROLLBACK: the workload placed back on the source, once STEER had placed it elsewhere; waits for the acks. */
  async revert(state: MigrationState): Promise<Partial<SteerRecord>> {
    this.waits.delete(state.id);
    this.settled.delete(state.id);
    // STEER may have placed the workload on the target without its result being recorded (the
    // controller stopped in between; a new one resumes with no generation in the record).
    const steerMayHaveRun = !!state.failedPhase && FORWARD.indexOf(state.failedPhase) >= FORWARD.indexOf('STEER');
    if (!state.steer?.generation && (!steerMayHaveRun || this.skipReason())) return {};
    const placed = await this.place(state, state.request.sourceHost);
    const c = await this.opts.registry.waitForGeneration(placed.generation, this.timeoutMs(), placed.issuedAtMs);
    if (!c.converged) this.opts.log.warn({ migrationId: state.id, generation: placed.generation, lagging: c.lagging }, 'hosts did not ack the rollback\'s steering in time');
    return { revertedGeneration: placed.generation };
  }

  /**
   * A workload started on `host` (`godwit run`): its addresses steered there, whatever an earlier
   * migration of an address left in the table. Returns the generation (0: nothing steers).
   */
  async placeStarted(addresses: readonly string[], host: string): Promise<number> {
    if (this.skipReason() || addresses.length === 0) return 0;
    return (await this.placeAt([...new Set(addresses)], host, { workloadStartedOn: host })).generation;
  }

  private place(state: MigrationState, host: string): Promise<{ generation: number; issuedAtMs: number; backendIds: number[] }> {
    return this.placeAt([...new Set(state.request.workload.endpoints.map((e) => e.address))], host, { migrationId: state.id });
  }

  private async placeAt(addresses: string[], host: string, context: Record<string, string>): Promise<{ generation: number; issuedAtMs: number; backendIds: number[] }> {
    const stored = await this.opts.store.mutate(async (table) => {
      const r = placeWorkload(table, { addresses, host }, { hosts: this.opts.registry.addresses() });
      return { table: r.table, changed: r.changed, result: r.backendIds };
    });
    if (stored.changed) this.opts.log.info({ ...context, host, addresses, generation: stored.table.generation }, 'workload placed in the steering table');
    return { generation: stored.table.generation, issuedAtMs: stored.acceptedAtMs, backendIds: stored.result };
  }

  /** Steering matters only where some ready host runs a data plane that follows the table. */
  private skipReason(): string | undefined {
    const steering = this.opts.registry.list().some((h) => h.ready && h.steeringGeneration !== undefined);
    return steering ? undefined : 'no ready host runs a steering data plane';
  }

  private timeoutMs(): number {
    return this.opts.convergeTimeoutMs ?? STEER_CONVERGE_TIMEOUT_MS;
  }
}
