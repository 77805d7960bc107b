/**
 * What each phase does on the hosts: the side-effecting half of the orchestrator. One function
 * per phase; each is idempotent on the agents' side (keyed by migration id).
 */
import type { AgentHandle } from './agent-client.js';
import type { MigrationState, Phase, PhaseResult } from './migration-machine.js';
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
    await Promise.all([
      source.lock(state.id, endpoints, state.lockVersion, lockLeaseMs, lockMode),
      target.lock(state.id, endpoints, state.lockVersion, lockLeaseMs, lockMode),
    ]);
  },

  // As soon as both hosts hold the workload's traffic: the fleet learns the new placement while
  // the workload is dumped, moved and restored (UNLOCK joins the acks).
  STEER: async ({ state, steer }) => ({ steer: await steer.issue(state) }),

  DUMP: async ({ state, source }) => {
    const postCopy = state.request.postCopy === true;
    const r = await source.checkpoint(state.id, state.request.workload, state.request.lockMode, postCopy);
    if (postCopy && !r.pageServer) throw new Error(`source host "${source.host}" dumped for post-copy but named no page server`);
    return { imageBytes: Number(r.imageBytes), ...(postCopy ? { pageServer: r.pageServer } : {}) };
  },

  // The workload's steering state travels with the image (the source exports it as it sends).
  TRANSFER: async ({ state, source, target }) => {
    const r = await source.sendImage(state.id, target.address, backendIds(state));
    return { handedOff: Number(r.steeringEntries) };
  },

  RESTORE: async ({ state, target }) => {
    const r = await target.restore(state.id, state.request.workload, state.request.lockMode, backendIds(state), state.request.postCopy ? state.pageServer : undefined);
    return { restoredPid: r.pid };
  },

  // Traffic through only once every host sends the workload's packets here (or the wait gave up).
  UNLOCK: async ({ state, target, steer }) => {
    const joined = await steer.join(state);
    const r = await target.unlock(state.id, state.request.workload.endpoints, state.lockVersion, state.request.lockMode);
    if (r.lockLeftovers > 0) throw new Error(`CRIU's restore left ${r.lockLeftovers} rule(s) or element(s) of its ${state.request.lockMode} lock on the target (removed)`);
    return { deliveredPackets: Number(r.deliveredPackets), steer: joined };
  },

  // Post-copy: the source's Release returns once the target has every page (the page server ended).
  CLEANUP: async ({ state, source }) => {
    const r = await source.release(state.id, state.request.workload.endpoints, state.lockVersion, state.request.lockMode, state.request.postCopy === true);
    return { forwarded: Number(r.forwardedPackets), ...(state.request.postCopy ? { lazyPagesMs: r.lazyPagesMs } : {}) };
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
    await target.abort(state.id, state.request.lockMode).catch((e: Error) => errors.push(`target: ${detail(e)}`));
    const r = await source.abort(state.id, state.request.lockMode).catch((e: Error) => {
      errors.push(`source: ${detail(e)}`);
      return undefined;
    });
    if (errors.length > 0) throw new Error(errors.join('; '));
    return { ...(r && r.pid ? { restoredPid: r.pid } : {}), steer: reverted };
  },
};

function backendIds(state: MigrationState): number[] {
  return state.steer?.backendIds ?? [];
}

/** A gRPC error's details, or the message of any other error. */
export function detail(e: unknown): string {
  if (typeof e === 'object' && e !== null && 'details' in e && typeof (e as { details: unknown }).details === 'string')
    return (e as { details: string }).details;
  return e instanceof Error ? e.message : String(e);
}
