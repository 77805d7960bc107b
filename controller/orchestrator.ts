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
import { status } from '@grpc/grpc-js';
import { PreconditionError, UnknownHostError } from '../lib/errors.js';
import { isServiceError } from '../lib/rpc.js';
import { decide, freezeMs, isTerminal, type CarriedPhase, type Decision, type MigrationEvent, type MigrationState, type Phase } from './migration-machine.js';
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
  /** This controller's name in the migrations it drives (MigrationState.controllers). */
  controllerId?: string;
  /**
   * Whether this controller may still act (it holds the leader lease, controller/leader.ts).
   * Checked before every call to a host: a controller that lost the lead stops, its successor resumes.
   */
  mayAct?: () => boolean;
  /** How long a phase waits for a host that is gone (agent restarting, no heartbeat) before it fails. */
  hostWaitMs?: number;
}

type PhaseOutcome = Extract<MigrationEvent, { type: 'phase-succeeded' | 'phase-failed' }>;

/** An agent restart (SIGKILL to ready again) took 5-25 s on this loaded 2-core machine. */
export const DEFAULT_HOST_WAIT_MS = 90_000;

/** A controller that lost the lead mid-migration: it stops; the new leader resumes. */
export class LeadershipLostError extends Error {
  constructor(readonly migrationId: string, readonly phase: Phase) {
    super(`controller lost the lead before ${phase} of migration ${migrationId}; the new leader resumes it`);
    this.name = 'LeadershipLostError';
  }
}

/** A carried phase as the event the machine decides on; it started where its call's own phase ended. */
function carriedOutcome(c: CarriedPhase, startedAtMs: number): PhaseOutcome {
  return c.error === undefined
    ? { type: 'phase-succeeded', phase: c.phase, startedAtMs, durationMs: c.durationMs, result: c.result }
    : { type: 'phase-failed', phase: c.phase, startedAtMs, durationMs: c.durationMs, error: c.error };
}

export class Orchestrator {
  private readonly events = new EventEmitter();
  private readonly running = new Map<string, Promise<void>>();
  /** Makes each event's id unique within this controller (two events may share a millisecond). */
  private seq = 0;

  constructor(private readonly opts: OrchestratorOptions) {
    this.events.setMaxListeners(0);
  }

  /** Records the new migration and runs it in the background. */
  async start(state: MigrationState): Promise<void> {
    const first = { ...state, controllers: [this.controllerId()] };
    await this.opts.store.create(first);
    this.emit(first, 'PENDING', 'SUCCEEDED', 0, 'accepted');
    this.launch(first.id, decide(first, { type: 'start', atMs: Date.now() }));
  }

  /**
   * Drives on a migration an earlier controller left unfinished (recorded in the store), from
   * its recorded phase as the machine decides. Returns false when it is already running here.
   */
  resume(state: MigrationState): boolean {
    if (isTerminal(state.phase) || this.running.has(state.id)) return false;
    this.opts.log.warn({ migrationId: state.id, phase: state.phase }, 'resuming a migration an earlier controller left unfinished');
    this.launch(state.id, decide(state, { type: 'resume', atMs: Date.now(), controller: this.controllerId() }));
    return true;
  }

  /**
   * RetryMigration: a migration in NEEDS_ATTENTION rolled back again (the caller checked its
   * hosts are back). Resolves once the new phase is recorded, so that a watch begun on the
   * answer sees the rollback, not the NEEDS_ATTENTION it replaces.
   */
  async retry(state: MigrationState): Promise<MigrationState> {
    if (this.running.has(state.id)) throw new PreconditionError(`migration ${state.id} is being retried already (godwit watch ${state.id})`);
    const first = decide(state, { type: 'retry', atMs: Date.now(), controller: this.controllerId() });
    // Held from here, so that a second request in the meantime is refused.
    this.running.set(state.id, Promise.resolve());
    try {
      await this.record(first.state);
    } catch (err) {
      this.running.delete(state.id);
      throw err;
    }
    this.opts.log.warn({ migrationId: state.id }, 'rolling back again a migration in NEEDS_ATTENTION, on request');
    this.launch(state.id, first);
    return first.state;
  }

  /** Migrations this controller drives now. */
  runningIds(): string[] {
    return [...this.running.keys()];
  }

  private launch(id: string, first: Decision): void {
    const run = this.run(first)
      .catch((err: unknown) => {
        if (err instanceof LeadershipLostError) this.opts.log.warn({ migrationId: id, phase: err.phase }, err.message);
        else this.opts.log.error({ migrationId: id, err }, 'migration run failed');
      })
      .finally(() => this.running.delete(id));
    this.running.set(id, run);
  }

  private controllerId(): string {
    return this.opts.controllerId ?? 'controller';
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
    // A standby that takes the lead while a watch follows NATS then emits the same events here
    // too: each is passed on once.
    const passed = new Set<string>();
    const once = (e: PhaseEvent) => {
      const key = `${e.phase}.${e.kind}.${e.atMs}`;
      if (passed.has(key)) return;
      passed.add(key);
      listener(e);
    };
    this.events.on(name, once);
    // A standby drives nothing: it follows the leader's events on NATS.
    const remote = this.opts.mayAct && !this.opts.mayAct() ? this.opts.bus.subscribe<PhaseEvent>(SUBJECTS.migrationEvent(id, '*'), once) : undefined;
    return () => {
      this.events.off(name, once);
      remote?.();
    };
  }

  private async run(first: Decision): Promise<void> {
    let { state, commands } = first;
    const log = this.opts.log.child({ migrationId: state.id });
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
        if (this.opts.mayAct && !this.opts.mayAct()) throw new LeadershipLostError(state.id, phase);
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

  /**
   * One phase on the hosts. A host that is gone (its agent restarting, a controller that has not
   * heard it yet) is waited for, and the phase asked again, up to hostWaitMs: every agent step is
   * idempotent by migration id (the agent answers with what it did), so asking twice is safe.
   */
  private async runPhase(state: MigrationState, phase: Phase) {
    const action = PHASE_ACTIONS[phase];
    if (!action) throw new Error(`no action for phase ${phase}`);
    const deadline = Date.now() + (this.opts.hostWaitMs ?? DEFAULT_HOST_WAIT_MS);
    for (;;) {
      try {
        // Hosts are looked up per try: an agent that restarted on a new address is found again.
        const { registry, agents } = this.opts;
        const src = registry.ready(state.request.sourceHost).heartbeat;
        const tgt = registry.ready(state.request.targetHost).heartbeat;
        return await action({ state, source: agents.get(src.host, src.grpcAddress), target: agents.get(tgt.host, tgt.grpcAddress), steer: this.opts.steer });
      } catch (err) {
        if (!hostGone(err) || Date.now() >= deadline) throw err;
        if (this.opts.mayAct && !this.opts.mayAct()) throw new LeadershipLostError(state.id, phase);
        this.opts.log.warn({ migrationId: state.id, phase, err: detail(err) }, 'a host is unreachable; asking again when it is back');
        await new Promise((r) => setTimeout(r, 1_000));
      }
    }
  }

  /**
   * Recorded before the next call to a host, and retried until it is: a record that lags behind
   * the hosts (NATS down) would have the next leader do phases again, or a whole finished
   * migration again. While NATS is down this controller also loses the lead; it stops then, and
   * the next leader resumes from what is recorded.
   */
  private async record(state: MigrationState): Promise<void> {
    for (;;) {
      if (this.opts.mayAct && !this.opts.mayAct()) throw new LeadershipLostError(state.id, state.phase);
      try {
        await this.opts.store.save(state);
        return;
      } catch (err) {
        // Another controller wrote the record since this one did: it drives the migration now.
        if (/wrong last sequence/i.test(String(err))) throw new LeadershipLostError(state.id, state.phase);
        this.opts.log.error({ migrationId: state.id, err }, 'could not record migration state; trying again');
        if (!this.opts.mayAct) return; // no lease (tests): the run goes on, the next save catches up
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }


  private emit(state: MigrationState, phase: Phase, kind: EventKind, durationMs: number, text: string): void {
    const e: PhaseEvent = { migrationId: state.id, phase, kind, atMs: Date.now(), durationMs, detail: text, migration: state };
    // Stored before the next is sent, retried across a NATS restart: automation misses no phase.
    this.opts.bus.publishDurable(SUBJECTS.migrationEvent(state.id, phase), e, `${state.id}.${phase}.${kind}.${e.atMs}.${this.seq++}`);
    this.events.emit(`m:${state.id}`, e);
  }
}

/**
 * The host is not there to ask (rather than having answered no): no heartbeat yet or lately, or
 * its agent's connection is down. The registry says "has not sent a heartbeat" for a stale host.
 */
function hostGone(err: unknown): boolean {
  if (err instanceof UnknownHostError) return true;
  if (err instanceof Error && /has not sent a heartbeat/.test(err.message)) return true;
  return isServiceError(err) && err.code === status.UNAVAILABLE;
}
