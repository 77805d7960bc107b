/**
 * Runs migrations: carries out the state machine's commands against the agents, records every
 * state change in the store, and publishes an event per phase change on NATS and to watchers.
 */
import { EventEmitter } from 'node:events';
import type { Bus } from '../lib/bus.js';
import type { Logger } from '../lib/log.js';
import { SUBJECTS } from '../lib/subjects.js';
import type { AgentPool } from './agent-client.js';
import { CANCELLED_ERROR, type MigrationCancels } from './cancel.js';
import { decide, freezeMs, isTerminal, type CarriedPhase, type MigrationEvent, type MigrationState, type Phase } from './migration-machine.js';
import type { MigrationStore } from './migration-store.js';
import { PHASE_ACTIONS, detail } from './phases.js';
import type { HostRegistry } from './registry.js';
import type { SteerStep } from './steer-step.js';

export type EventKind = 'SNAPSHOT' | 'STARTED' | 'SUCCEEDED' | 'FAILED';

export interface PhaseEvent {
  migrationId: string;
  phase: Phase;
  kind: EventKind;
  atMs: number;
  durationMs: number;
  detail: string;
  migration: MigrationState;
}

export interface OrchestratorOptions {
  store: MigrationStore;
  registry: HostRegistry;
  agents: AgentPool;
  bus: Bus;
  log: Logger;
  steer: SteerStep;
  /** CancelMigration's requests, asked before each phase (controller/cancel.ts). */
  cancels?: MigrationCancels;
}

type PhaseOutcome = Exclude<MigrationEvent, { type: 'start' }>;

/** A carried phase as the event the machine decides on; it started where its call's own phase ended. */
function carriedOutcome(c: CarriedPhase, startedAtMs: number): PhaseOutcome {
  return c.error === undefined
    ? { type: 'phase-succeeded', phase: c.phase, startedAtMs, durationMs: c.durationMs, result: c.result }
    : { type: 'phase-failed', phase: c.phase, startedAtMs, durationMs: c.durationMs, error: c.error };
}

export class Orchestrator {
  private readonly events = new EventEmitter();
  private readonly running = new Map<string, Promise<void>>();

  constructor(private readonly opts: OrchestratorOptions) {
    this.events.setMaxListeners(0);
  }

  /** Records the new migration and runs it in the background. */
  async start(state: MigrationState): Promise<void> {
    await this.opts.store.create(state);
    this.emit(state, 'PENDING', 'SUCCEEDED', 0, 'accepted');
    const run = this.run(state).finally(() => this.running.delete(state.id));
    this.running.set(state.id, run);
  }

  /** Resolves when the migration has ended (for tests and shutdown). */
  async settled(id: string): Promise<void> {
    await this.running.get(id);
  }

  activeFor(pid: number, sourceHost: string): MigrationState | undefined {
    return this.opts.store
      .list()
      .find((m) => !isTerminal(m.phase) && m.request.sourceHost === sourceHost && m.request.workload.pid === pid);
  }

  /** Calls `listener` for each event of the migration; returns the unsubscribe function. */
  watch(id: string, listener: (e: PhaseEvent) => void): () => void {
    const name = `m:${id}`;
    this.events.on(name, listener);
    return () => this.events.off(name, listener);
  }

  private async run(initial: MigrationState): Promise<void> {
    const log = this.opts.log.child({ migrationId: initial.id });
    let { state, commands } = decide(initial, { type: 'start', atMs: Date.now() });
    await this.record(state);
    // A phase the previous call already carried out (pipelined freeze), waiting to be decided on.
    let carried: PhaseOutcome | undefined;
    while (commands.length > 0) {
      const phase = commands[0].phase;
      let event: PhaseOutcome;
      if (this.opts.cancels?.stopBefore(state, phase)) {
        // Cancelled before its pivot: this phase fails unrun and the machine rolls back.
        carried = undefined;
        state = { ...state, cancelled: true };
        event = { type: 'phase-failed', phase, startedAtMs: Date.now(), durationMs: 0, error: CANCELLED_ERROR };
      } else if (carried?.phase === phase) {
        event = carried;
        carried = undefined;
        this.emit(state, phase, 'STARTED', 0, 'carried out by the previous call');
      } else {
        carried = undefined;
        const startedAtMs = Date.now();
        this.emit(state, phase, 'STARTED', 0, '');
        const t0 = performance.now();
        try {
          const result = await this.runPhase(state, phase);
          const elapsed = performance.now() - t0;
          // The call's time is split between its own phase and the one it carried.
          const next = result?.carried;
          const own = next ? Math.max(0, elapsed - next.durationMs) : elapsed;
          event = { type: 'phase-succeeded', phase, startedAtMs, durationMs: own, result: result ? { ...result, carried: undefined } : undefined };
          if (next) carried = carriedOutcome(next, startedAtMs + own);
        } catch (err) {
          event = { type: 'phase-failed', phase, startedAtMs, durationMs: performance.now() - t0, error: detail(err) };
        }
      }
      ({ state, commands } = decide(state, event));
      // Recorded before the next call to a host; a carried phase is recorded together with the one before it.
      if (!(carried && commands[0]?.phase === carried.phase)) await this.record(state);
      const kind = event.type === 'phase-succeeded' ? 'SUCCEEDED' : 'FAILED';
      const text = event.type === 'phase-failed' ? event.error : '';
      log[kind === 'FAILED' ? 'warn' : 'info']({ phase, ms: Math.round(event.durationMs), err: text || undefined }, `phase ${kind.toLowerCase()}`);
      this.emit(state, phase, kind, event.durationMs, text);
    }
    this.emit(state, state.phase, state.phase === 'DONE' ? 'SUCCEEDED' : 'FAILED', 0, state.error ?? '');
    log.info({ phase: state.phase, freezeMs: freezeMs(state), error: state.error }, 'migration ended');
  }

  private async runPhase(state: MigrationState, phase: Phase) {
    const action = PHASE_ACTIONS[phase];
    if (!action) throw new Error(`no action for phase ${phase}`);
    // Hosts are looked up per phase: an agent that restarted on a new address is found again.
    const { registry, agents } = this.opts;
    const src = registry.ready(state.request.sourceHost).heartbeat;
    const tgt = registry.ready(state.request.targetHost).heartbeat;
    return action({ state, source: agents.get(src.host, src.grpcAddress), target: agents.get(tgt.host, tgt.grpcAddress), steer: this.opts.steer });
  }

  private async record(state: MigrationState): Promise<void> {
    try {
      await this.opts.store.save(state);
    } catch (err) {
      // The run goes on (the hosts are mid-step); the record catches up at the next save.
      this.opts.log.error({ migrationId: state.id, err }, 'could not record migration state');
    }
  }

  private emit(state: MigrationState, phase: Phase, kind: EventKind, durationMs: number, text: string): void {
    const e: PhaseEvent = { migrationId: state.id, phase, kind, atMs: Date.now(), durationMs, detail: text, migration: state };
    this.opts.bus.publish(SUBJECTS.migrationEvent(state.id, phase), e);
    this.events.emit(`m:${state.id}`, e);
  }
}
