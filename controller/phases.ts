/**
 * What each phase does on the hosts: the side-effecting half of the orchestrator. One function
 * per phase; each is idempotent on the agents' side (keyed by migration id).
 */
import type { AgentHandle } from './agent-client.js';
import type { PipelinedStep__Output } from '../proto/gen/godwit/v1/PipelinedStep.js';
import type { UnlockResponse__Output } from '../proto/gen/godwit/v1/UnlockResponse.js';
import type { CarriedPhase, MigrationState, Phase, PhaseResult } from './migration-machine.js';
import { status } from '@grpc/grpc-js';
import { isServiceError } from '../lib/rpc.js';
import { checkHostsFit } from './preflight.js';
import type { SteerStep } from './steer-step.js';

export interface PhaseContext {
  state: MigrationState;
  source: AgentHandle;
  target: AgentHandle;
  steer: SteerStep;
}

type PhaseAction = (ctx: PhaseContext) => Promise<PhaseResult | void>;

export const PHASE_ACTIONS: Partial<Record<Phase, PhaseAction>> = {
  PREPARE: async ({ state, source, target }) => {
    await checkHostsFit(state.request, source, target);
  },

  // Both hosts: the source so that nothing reaches the freezing process, the target so that
  // nothing is reset there between the address coming up and the restore finishing.
  // IPTABLES / NFTABLES: no lock entries; both agents check that they have CRIU's tool. CRIU
  // then locks each connection on the source during DUMP, and the target makes the same lock
  // in RESTORE before the address comes up (CRIU's restore removes it to unlock).
  LOCK: async ({ state, source, target }) => {
    const { endpoints } = state.request.workload;
    const { lockLeaseMs, lockMode } = state.request;
    const answers = await Promise.all([
      source.lock(state.id, endpoints, state.lockVersion, lockLeaseMs, lockMode),
      // The target brings the addresses up behind its lock meanwhile (only the XDP lock holds them).
      target.lock(state.id, endpoints, state.lockVersion, lockLeaseMs, lockMode, lockMode === 'EBPF'),
    ]);
    return { steps: answers.flatMap((a) => a.steps) };
  },

  // As soon as both hosts hold the workload's traffic: the fleet learns the new placement while
  // the workload is dumped, moved and restored (UNLOCK joins the acks).
  STEER: async ({ state, steer }) => ({ steer: await steer.issue(state) }),

  // Pipelined: the source sends the image on to the target as soon as the dump ends, in the same
  // call; TRANSFER is recorded from what it reports (or run on its own if the call could not).
  // Post-copy: the dump leaves the memory to the source's page server, which the answer names.
  DUMP: async ({ state, source, target }) => {
    const postCopy = state.request.postCopy === true;
    const r = await source.checkpoint(state.id, state.request.workload, state.request.lockMode, { address: target.address, host: target.host, steerBackendIds: backendIds(state) }, postCopy);
    if (postCopy && !r.pageServer) throw new Error(`source host "${source.host}" dumped for post-copy but named no page server`);
    const dumped = { imageBytes: Number(r.imageBytes), steps: r.steps, ...(postCopy ? { pageServer: r.pageServer } : {}) };
    const t = r.transfer;
    if (!t) return dumped;
    const sent = t.sent;
    const carried: CarriedPhase = t.ok && sent
      ? { phase: 'TRANSFER', durationMs: sent.durationMs, result: { imageBytes: Number(sent.bytes), handedOff: Number(sent.steeringEntries), steps: sent.steps } }
      : { phase: 'TRANSFER', durationMs: 0, error: t.error || 'the transfer failed' };
    return { ...dumped, carried };
  },

  // The workload's steering state travels with the image (the source exports it as it sends).
  TRANSFER: async ({ state, source, target }) => {
    const r = await source.sendImage(state.id, target.address, target.host, backendIds(state));
    return { handedOff: Number(r.steeringEntries), steps: r.steps };
  },

  // Pipelined when every host already steers the workload here (nothing left for UNLOCK to wait
  // for): the target unlocks as soon as it has restored, in the same call.
  RESTORE: async ({ state, target, steer }) => {
    const joined = steer.joinIfSettled(state);
    const r = await target.restore(state.id, state.request.workload, state.request.lockMode, backendIds(state), joined ? state.lockVersion : undefined, state.request.postCopy ? state.pageServer : undefined);
    const restored = { restoredPid: r.pid, steps: r.steps };
    const u = r.unlocked;
    if (!joined || !u) return restored;
    return { ...restored, carried: unlockOutcome(state, u, joined) };
  },

  // Traffic through only once every host sends the workload's packets here (or the wait gave up).
  UNLOCK: async ({ state, target, steer }) => {
    const joined = await steer.join(state);
    const r = await target.unlock(state.id, state.request.workload.endpoints, state.lockVersion, state.request.lockMode);
    const outcome = unlockOutcome(state, { ok: true, error: '', unlocked: r }, joined);
    if (outcome.error) throw new Error(outcome.error);
    return outcome.result;
  },

  // Post-copy: the source's Release returns once the target has every page (the page server ended).
  // Then the target's image goes: the workload runs from it no more (post-copy: Release returned
  // once every page had been fetched from the source).
  CLEANUP: async ({ state, source, target }) => {
    const r = await source.release(state.id, state.request.workload.endpoints, state.lockVersion, state.request.lockMode, state.request.postCopy === true);
    await target.discardImage(state.id);
    return { forwarded: Number(r.forwardedPackets), steps: r.steps, ...(state.request.postCopy ? { lazyPagesMs: r.lazyPagesMs } : {}) };
  },

  // Steering back to the source first (both hosts still hold the workload's traffic, so what
  // arrives meanwhile waits in the source's lock); then the target, so that the workload never
  // runs on both hosts; then the source brings it back.
  ROLLBACK: async ({ state, source, target, steer }) => {
    const errors: string[] = [];
    const reverted = await steer.revert(state).catch((e: Error) => {
      errors.push(`steering back to the source: ${detail(e)}`);
      return {};
    });
    let unreachable: unknown;
    const noted = (e: unknown) => {
      if (isServiceError(e) && e.code === status.UNAVAILABLE) unreachable ??= e;
    };
    // The target first, so that the workload never runs on both hosts; with the target gone, the
    // source waits too (the target may hold a restored copy).
    await target.abort(state.id, state.request.lockMode).catch((e: Error) => (noted(e), errors.push(`target: ${detail(e)}`)));
    if (unreachable) throw unreachable;
    const r = await source.abort(state.id, state.request.lockMode).catch((e: Error) => {
      noted(e);
      errors.push(`source: ${detail(e)}`);
      return undefined;
    });
    // A host that could not be reached has undone nothing: the whole rollback is asked again when
    // it is back (each agent's Abort is idempotent), rather than ending it half done.
    if (unreachable) throw unreachable;
    if (errors.length > 0) throw new Error(errors.join('; '));
    return { ...(r && r.pid ? { restoredPid: r.pid } : {}), steer: reverted };
  },
};

/** UNLOCK's outcome from the target's answer, whether it came from Unlock or from a pipelined Restore. */
function unlockOutcome(state: MigrationState, u: PipelinedStep__Output | { ok: boolean; error: string; unlocked: UnlockResponse__Output }, joined: PhaseResult['steer']): CarriedPhase {
  const r = u.unlocked;
  if (!u.ok || !r) return { phase: 'UNLOCK', durationMs: 0, error: u.error || 'the unlock failed' };
  const result: PhaseResult = { deliveredPackets: Number(r.deliveredPackets), steer: joined, steps: r.steps };
  if (r.lockLeftovers > 0)
    return { phase: 'UNLOCK', durationMs: r.durationMs, result, error: `CRIU's restore left ${r.lockLeftovers} rule(s) or element(s) of its ${state.request.lockMode} lock on the target (removed)` };
  return { phase: 'UNLOCK', durationMs: r.durationMs, result };
}

function backendIds(state: MigrationState): number[] {
  return state.steer?.backendIds ?? [];
}

/** A gRPC error's details, or the message of any other error. */
export function detail(e: unknown): string {
  if (typeof e === 'object' && e !== null && 'details' in e && typeof (e as { details: unknown }).details === 'string')
    return (e as { details: string }).details;
  return e instanceof Error ? e.message : String(e);
}
