/**
 * The migration state machine, as a pure function: decide(state, event) -> (state, commands).
 * No I/O here: controller/orchestrator.ts carries out the commands and feeds back the events.
 *
 *   PENDING -> PREPARE -> LOCK -> STEER -> DUMP -> TRANSFER -> RESTORE -> UNLOCK -> CLEANUP -> DONE
 *                 \________\_______\________\_______\___________\-> ROLLBACK -> FAILED
 *
 * STEER issues the rule generation that places the workload on the target (its backends and
 * addresses) as soon as both hosts are locked; every host then learns it while the workload is
 * dumped, moved and restored (the target's lock holds what arrives there meanwhile), and UNLOCK
 * waits for the last ack before it lets traffic through, so convergence hides inside the freeze
 * whenever it is shorter than dump + transfer + restore (steer.waitedMs says when it was not).
 *
 * RESTORE is the pivot: a failure up to and including it rolls back (the workload runs again on
 * the source); after it the workload runs on the target, so failures are recorded as warnings
 * and the migration rolls forward. A rollback that fails ends in NEEDS_ATTENTION: the workload
 * may run nowhere, and only an operator can say what to do (the state says what is known).
 *
 * A controller that starts (or takes the lead) resumes every migration it finds unfinished with
 * a 'resume' event: before the pivot it rolls back, at RESTORE it asks the target again (the
 * agent answers with the restore it did, or does it now, never twice), after it rolls forward.
 */
import type { WorkloadSpec } from '../lib/wire.js';

export const PHASES = ['PENDING', 'PREPARE', 'LOCK', 'STEER', 'DUMP', 'TRANSFER', 'RESTORE', 'UNLOCK', 'CLEANUP', 'DONE', 'ROLLBACK', 'FAILED', 'NEEDS_ATTENTION'] as const;
export type Phase = (typeof PHASES)[number];

/** The phases that do work on hosts, in order. */
export const FORWARD: readonly Phase[] = ['PREPARE', 'LOCK', 'STEER', 'DUMP', 'TRANSFER', 'RESTORE', 'UNLOCK', 'CLEANUP'];
const PIVOT: Phase = 'RESTORE';
export const TERMINAL: readonly Phase[] = ['DONE', 'FAILED', 'NEEDS_ATTENTION'];

export type LockMode = 'EBPF' | 'IPTABLES' | 'NFTABLES';

export interface MigrationRequestSpec {
  sourceHost: string;
  targetHost: string;
  workload: WorkloadSpec;
  lockMode: LockMode;
  lockLeaseMs: number;
  /** Run a CRIU lock mode past its known limit (criu-lock-limits.ts). Absent in older records: false. */
  allowUnsafeLock?: boolean;
  /** Post-copy: the workload resumes on the target before its memory has arrived. Absent in older records: false. */
  postCopy?: boolean;
  /** The registered workload (`godwit run`) this moves, if it was named or is one (workload-registry.ts). */
  workloadName?: string;
}

/** The migration's steering: the generation that placed the workload on the target, and how the fleet took it. */
export interface SteerRecord {
  /** 0 when nothing was issued (skipped says why). */
  generation: number;
  /** When the generation was accepted by the store (wall clock, ms). */
  issuedAtMs: number;
  /** The workload's backends in the table (what its flows and counters name). */
  backendIds: number[];
  /** Why no generation was issued (no host steers, for example). */
  skipped?: string;
  /** Issue to the last ready host's ack, ms. */
  convergeMs?: number;
  /** False when some ready hosts had not acked within the wait (they are named in lagging). */
  converged?: boolean;
  lagging?: string[];
  /** How long UNLOCK waited for the acks (0 when they were all in). */
  waitedMs?: number;
  /** Every ready host acked before UNLOCK began: convergence added nothing to the freeze. */
  insideFreeze?: boolean;
  /** ROLLBACK: the generation that placed the workload back on the source. */
  revertedGeneration?: number;
}

export interface PhaseTiming {
  phase: Phase;
  startedAtMs: number;
  durationMs: number;
  ok: boolean;
  error?: string;
  /** Where the time went on the hosts, as the agents measured it (agent/step-timer.ts). */
  steps?: HostStep[];
}

/** One step of an agent call, on a named host. */
export interface HostStep {
  host: string;
  step: string;
  ms: number;
}

export interface MigrationState {
  id: string;
  request: MigrationRequestSpec;
  phase: Phase;
  /** Version of this migration's lock entries: later migrations' entries win. */
  lockVersion: string;
  timings: PhaseTiming[];
  error?: string;
  failedPhase?: Phase;
  /** Where the workload runs now, if it was restored (on the target, or on the source after rollback). */
  restoredPid?: number;
  imageBytes: number;
  /** EBPF lock: packets the locks stopped that the target delivered right after unlock. */
  deliveredPackets?: number;
  steer?: SteerRecord;
  /** Steering state entries (flows, reverse NAT, counters) the source exported with the image. */
  handedOff?: number;
  /** Packets for the workload the source's data plane forwarded to the target during the move. */
  forwarded?: number;
  /** Post-copy: where the source's CRIU serves the workload's memory (DUMP's answer, for RESTORE). */
  pageServer?: string;
  /** Post-copy: DUMP's end to the source's page server's end (every page on the target), from CLEANUP. */
  lazyPagesMs?: number;
  warnings: string[];
  /** NEEDS_ATTENTION: what is known (where the image is, which locks are held until when). */
  attention?: string;
  /** The controllers that drove it, in order (one more per resume). Absent in older records. */
  controllers?: string[];
  createdAtMs: number;
  updatedAtMs: number;
  /** Stopped by CancelMigration before its pivot, then rolled back (controller/cancel.ts). */
  cancelled?: boolean;
  /** The drain that started it (controller/drain.ts). */
  drainId?: string;
}

export interface PhaseResult {
  restoredPid?: number;
  imageBytes?: number;
  deliveredPackets?: number;
  /** Merged into the migration's steer record. */
  steer?: Partial<SteerRecord>;
  handedOff?: number;
  forwarded?: number;
  pageServer?: string;
  lazyPagesMs?: number;
  /** The agents' steps in this phase; kept in the phase's timing. */
  steps?: HostStep[];
  /**
   * A pipelined freeze: the next phase, already carried out by the same agent call (the transfer
   * after the dump, the unlock after the restore). The orchestrator records it as that phase's
   * outcome instead of running it; the machine decides on it as on any other.
   */
  carried?: CarriedPhase;
}

export interface CarriedPhase {
  phase: Phase;
  durationMs: number;
  result?: PhaseResult;
  /** Set when the carried phase failed. */
  error?: string;
}

export type MigrationEvent =
  | { type: 'start'; atMs: number }
  /** A controller found the migration unfinished (its predecessor died or lost the lead). */
  | { type: 'resume'; atMs: number; controller: string }
  /** An operator asked again for a migration in NEEDS_ATTENTION (RetryMigration), its hosts back. */
  | { type: 'retry'; atMs: number; controller: string }
  | { type: 'phase-succeeded'; phase: Phase; startedAtMs: number; durationMs: number; result?: PhaseResult }
  | { type: 'phase-failed'; phase: Phase; startedAtMs: number; durationMs: number; error: string };

export type Command = { type: 'run-phase'; phase: Phase };

export interface Decision {
  state: MigrationState;
  commands: Command[];
}

export function isTerminal(phase: Phase): boolean {
  return TERMINAL.includes(phase);
}

export function decide(state: MigrationState, event: MigrationEvent): Decision {
  if (event.type === 'retry') return retry(state, event.atMs, event.controller);
  if (isTerminal(state.phase)) return { state, commands: [] };

  if (event.type === 'start') {
    if (state.phase !== 'PENDING') return { state, commands: [] };
    return enter({ ...state, updatedAtMs: event.atMs }, FORWARD[0]);
  }
  if (event.type === 'resume') return resume(state, event.atMs, event.controller);
  if (event.phase !== state.phase) {
    // A late or duplicated report of a phase we are no longer in: ignore it.
    return { state, commands: [] };
  }

  const timing: PhaseTiming = {
    phase: event.phase,
    startedAtMs: event.startedAtMs,
    durationMs: event.durationMs,
    ok: event.type === 'phase-succeeded',
    ...(event.type === 'phase-failed' ? { error: event.error } : {}),
    ...(event.type === 'phase-succeeded' && event.result?.steps?.length ? { steps: event.result.steps } : {}),
  };
  const base: MigrationState = {
    ...state,
    timings: [...state.timings, timing],
    updatedAtMs: event.startedAtMs + event.durationMs,
  };

  if (event.phase === 'ROLLBACK') {
    const after = { ...withResult(base, event.type === 'phase-succeeded' ? event.result : undefined) };
    if (event.type === 'phase-succeeded') return { state: { ...after, phase: 'FAILED' }, commands: [] };
    after.error = `${after.error}; rollback failed: ${event.error}`;
    return { state: { ...after, phase: 'NEEDS_ATTENTION', attention: attentionNote(after, event.error) }, commands: [] };
  }

  if (event.type === 'phase-succeeded') {
    const next = nextForward(event.phase);
    const s = withResult(base, event.result);
    return next ? enter(s, next) : { state: { ...s, phase: 'DONE' }, commands: [] };
  }

  // A failure.
  if (isBeforeOrAtPivot(event.phase)) {
    return enter({ ...base, error: event.error, failedPhase: event.phase }, 'ROLLBACK');
  }
  const next = nextForward(event.phase);
  const s = { ...base, warnings: [...base.warnings, `${event.phase}: ${event.error}`] };
  return next ? enter(s, next) : { state: { ...s, phase: 'DONE' }, commands: [] };
}

/**
 * Where an unfinished migration goes on with a new controller. Before the pivot the hosts may
 * be anywhere inside the phase (a dump half-taken, an image half-sent): undoing is the one answer
 * that holds for all of them. RESTORE is asked again: the target answers with what it did. After
 * the pivot the workload runs on the target: the phase is done again (each step is idempotent).
 */
function resume(state: MigrationState, atMs: number, controller: string): Decision {
  const s: MigrationState = { ...state, updatedAtMs: atMs, controllers: [...(state.controllers ?? []), controller] };
  if (state.phase === 'PENDING') return enter(s, FORWARD[0]);
  if (state.phase === 'ROLLBACK' || state.phase === 'RESTORE' || !isBeforeOrAtPivot(state.phase)) {
    return enter({ ...s, warnings: [...s.warnings, `resumed at ${state.phase} by controller ${controller}`] }, state.phase);
  }
  const error = `the controller stopped during ${state.phase}; rolled back by controller ${controller}`;
  return enter({ ...s, error, failedPhase: state.phase }, 'ROLLBACK');
}

/**
 * NEEDS_ATTENTION is reached only by a rollback that failed: asked again, it rolls back again
 * (every agent's Abort is idempotent). Any other phase is left as it is.
 */
function retry(state: MigrationState, atMs: number, controller: string): Decision {
  if (state.phase !== 'NEEDS_ATTENTION') return { state, commands: [] };
  const s: MigrationState = { ...state, updatedAtMs: atMs, attention: undefined, controllers: [...(state.controllers ?? []), controller], warnings: [...state.warnings, `NEEDS_ATTENTION retried by request; rolled back again by controller ${controller}`] };
  return enter(s, 'ROLLBACK');
}

/** What an operator needs to know of a migration nobody could finish or undo. */
export function attentionNote(state: MigrationState, why: string): string {
  const { sourceHost, targetHost, lockLeaseMs } = state.request;
  const lock = state.timings.find((t) => t.phase === 'LOCK');
  const dumped = state.timings.some((t) => t.phase === 'DUMP' && t.ok);
  // A DUMP call that failed may have failed after CRIU finished (the source's agent killed mid-call).
  const dumpBegun = state.timings.some((t) => t.phase === 'DUMP');
  const folder = `images/${state.id} under the agent's state folder on host "${sourceHost}" (and, if it was sent, on "${targetHost}")`;
  const where = dumped ? `the image is in ${folder}` : dumpBegun ? `a dump was begun: if CRIU finished it, the image is in ${folder}` : 'no image was taken';
  const locks = lock
    ? `lock entries on "${sourceHost}" and "${targetHost}" are held until ${new Date(lock.startedAtMs + lockLeaseMs).toISOString()} (their lease), then removed by the agents`
    : 'no lock was taken';
  return `could not be finished or undone (${why}); ${where}; ${locks}; the workload may run on neither host: check both and restore it from the image by hand`;
}

/** A phase's result folded into the state: what it reports replaces, the steer record merges. */
function withResult(state: MigrationState, r: PhaseResult | undefined): MigrationState {
  if (!r) return state;
  return {
    ...state,
    restoredPid: r.restoredPid ?? state.restoredPid,
    imageBytes: r.imageBytes ?? state.imageBytes,
    deliveredPackets: r.deliveredPackets ?? state.deliveredPackets,
    handedOff: r.handedOff ?? state.handedOff,
    forwarded: r.forwarded ?? state.forwarded,
    pageServer: r.pageServer ?? state.pageServer,
    lazyPagesMs: r.lazyPagesMs ?? state.lazyPagesMs,
    steer: r.steer ? ({ ...state.steer, ...r.steer } as SteerRecord) : state.steer,
  };
}

function enter(state: MigrationState, phase: Phase): Decision {
  return { state: { ...state, phase }, commands: [{ type: 'run-phase', phase }] };
}

function nextForward(phase: Phase): Phase | undefined {
  const i = FORWARD.indexOf(phase);
  return i >= 0 ? FORWARD[i + 1] : undefined;
}

function isBeforeOrAtPivot(phase: Phase): boolean {
  const i = FORWARD.indexOf(phase);
  return i >= 0 && i <= FORWARD.indexOf(PIVOT);
}

/** Lock to unlock: how long the workload's traffic was held off, from the recorded timings. */
export function freezeMs(state: MigrationState): number | undefined {
  const lock = state.timings.find((t) => t.phase === 'LOCK' && t.ok);
  const unlock = state.timings.find((t) => t.phase === 'UNLOCK');
  if (!lock || !unlock) return undefined;
  return unlock.startedAtMs + unlock.durationMs - lock.startedAtMs;
}

export function newMigration(id: string, request: MigrationRequestSpec, lockVersion: string, nowMs: number): MigrationState {
  return { id, request, phase: 'PENDING', lockVersion, timings: [], imageBytes: 0, warnings: [], createdAtMs: nowMs, updatedAtMs: nowMs };
}
