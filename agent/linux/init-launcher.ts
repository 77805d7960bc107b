/**
 * Starts a command under build/godwit-init (lab/workload/godwit-init.c): new PID and IPC
 * namespaces, a root init as PID 1, inherited descriptors closed, output appended to a file.
 * The launcher exits once the command has been exec'd and prints the init's host PID.
 */
import { PreconditionError } from '../../lib/errors.js';
import type { Executor } from '../../lib/exec.js';

export interface LaunchSpec {
  /** argv of the command. */
  command: readonly string[];
  /** '' : root (the init's own user). */
  user: string;
  /** '' : /. */
  cwd: string;
  /** Where stdout and stderr are appended. */
  outputPath: string;
}

/** Runs the launcher; returns the init's host PID, or throws PreconditionError with its reason. */
export async function launchUnderInit(exec: Executor, initPath: string, spec: LaunchSpec): Promise<number> {
  const args = ['--output', spec.outputPath, ...(spec.user ? ['--user', spec.user] : []), ...(spec.cwd ? ['--cwd', spec.cwd] : []), '--', ...spec.command];
  const r = await exec(initPath, args, { allowFailure: true, timeoutMs: 30_000 });
  const pid = Number(r.stdout.trim());
  if (r.exitCode !== 0 || !Number.isInteger(pid) || pid <= 1)
    throw new PreconditionError(`cannot start ${spec.command.join(' ')}: ${(r.stderr || r.stdout).trim() || `${initPath} exited ${r.exitCode}`}`);
  return pid;
}
