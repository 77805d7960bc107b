/**
 * Checks that a migration can run, before anything changes: run by Migrate (so the caller gets
 * the right status code at once) and again in PREPARE.
 */
import { HostBoundSocketsError, PreconditionError } from '../lib/errors.js';
import { isServiceError } from '../lib/rpc.js';
import { workloadSocketFromWire } from '../lib/wire.js';
import type { AgentHandle } from './agent-client.js';
import { unsafeLockRefusal } from './criu-lock-limits.js';
import type { MigrationRequestSpec } from './migration-machine.js';
import { treeFactsFromWire } from '../lib/facts-wire.js';
import { checkFilesOnTarget } from './preflight-files.js';
import { treeRefusal } from './preflight-tree.js';

export async function checkHostsFit(req: MigrationRequestSpec, source: AgentHandle, target: AgentHandle): Promise<void> {
  // The agent answers NOT_FOUND / FAILED_PRECONDITION with a message naming what to fix; pass it on.
  const workload = await source.inspectWorkload(req.workload).catch(rethrowAgentError);
  // A socket bound to an address the source keeps would make the restore fail after the freeze.
  if (workload.hostBoundSocketCount > 0 || workload.hostBoundSockets.length > 0)
    throw new HostBoundSocketsError(
      source.host,
      req.workload.pid,
      workload.hostBoundSockets.map(workloadSocketFromWire),
      workload.hostBoundSocketCount,
      [...new Set(req.workload.endpoints.map((e) => e.address))],
    );
  // CRIU's own locks lose the workload or its connections past a connection count.
  const refusal = unsafeLockRefusal(req.lockMode, workload.tcpConnections, req.allowUnsafeLock);
  if (refusal) throw refusal;
  const [sp, tp] = await Promise.all([source.probe().catch(rethrowAgentError), target.probe().catch(rethrowAgentError)]);
  for (const [role, p] of [['source', sp], ['target', tp]] as const) {
    if (!p.criuOk) throw new PreconditionError(`${role} host "${p.host}" cannot checkpoint: criu ${p.criuVersion}: ${p.criuProblem}; run scripts/setup.sh there`);
    // The XDP lock is what EBPF mode uses; CRIU's own lock modes do without it.
    if (!p.lockOk && req.lockMode === 'EBPF') throw new PreconditionError(`${role} host "${p.host}" has no network lock: ${p.lockProblem}`);
  }
  // Post-copy: the target's restore hands the workload's memory to userfaultfd.
  if (req.postCopy && !tp.userfaultfd)
    throw new PreconditionError(
      `target host "${tp.host}" cannot take a post-copy migration: ${tp.userfaultfdProblem || 'no userfaultfd'}; migrate without --post-copy, or to a host that has userfaultfd`,
    );
  for (const e of req.workload.endpoints) {
    if (tp.addresses.includes(e.address))
      throw new PreconditionError(`target host "${tp.host}" already owns address ${e.address}; a moved workload's address must be free on the target`);
  }
  // What CRIU would fail on after the freeze: the tree's users, namespaces, SysV memory, unix
  // sockets; the hosts' CPUs and CRIU versions; then the files, compared by the target.
  const facts = treeFactsFromWire(workload);
  const host = (p: typeof sp) => ({ host: p.host, capabilities: p.capabilities, cpuFeatures: p.cpuFeatures, criuVersion: p.criuVersion });
  const refusal2 = treeRefusal(facts, host(sp), host(tp));
  if (refusal2) throw refusal2;
  await checkFilesOnTarget(facts.files, source.host, target).catch(rethrowAgentError);
}

/** Keeps an agent's status code (NOT_FOUND, FAILED_PRECONDITION...) and its message. */
function rethrowAgentError(err: unknown): never {
  if (isServiceError(err)) throw Object.assign(new Error(err.details), { code: err.code, details: err.details, metadata: err.metadata });
  throw err;
}
