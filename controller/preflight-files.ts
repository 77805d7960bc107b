/**
 * Preflight on files: godwit moves process state, not the filesystem. What the tree has open or
 * mapped on the source (lib/workload-facts.ts) must be on the target at the same path with the
 * same size, and executables and libraries with the same build-id or content; the target's
 * agent compares (CheckFiles), this refuses with the first few it named.
 */
import { WorkloadCannotMoveError } from '../lib/errors.js';
import { fileToWire, mismatchFromWire } from '../lib/facts-wire.js';
import type { FileMismatch, WorkloadFile } from '../lib/workload-facts.js';
import type { AgentHandle } from './agent-client.js';

const NAMED = 4;

export async function checkFilesOnTarget(files: readonly WorkloadFile[], sourceHost: string, target: AgentHandle): Promise<void> {
  if (files.length === 0) return;
  const r = await target.checkFiles(files.map(fileToWire));
  const refusal = filesRefusal(r.mismatches.map(mismatchFromWire), sourceHost, target.host);
  if (refusal) throw refusal;
}

export function filesRefusal(mismatches: readonly FileMismatch[], sourceHost: string, targetHost: string): WorkloadCannotMoveError | undefined {
  if (mismatches.length === 0) return undefined;
  const named = mismatches
    .slice(0, NAMED)
    .map((m) => `${m.file.path} (${m.file.usage} of process ${m.file.pid}): ${m.problem}`)
    .join('; ');
  const more = mismatches.length > NAMED ? ` (and ${mismatches.length - NAMED} more)` : '';
  return new WorkloadCannotMoveError(
    'files',
    `${mismatches.length} file(s) the workload uses on host "${sourceHost}" are missing or differ on target host "${targetHost}": ${named}${more}; ` +
      'CRIU reopens every file by path at restore and godwit moves process state, not files: make them identical on both hosts ' +
      '(same package versions, same configuration), or keep what the workload writes on storage both hosts share',
  );
}
