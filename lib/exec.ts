import { execa } from 'execa';

export interface ExecResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export interface ExecOptions {
  /** Text written to the command's stdin. */
  input?: string;
  /** Do not throw on a non-zero exit; the caller reads exitCode. */
  allowFailure?: boolean;
  timeoutMs?: number;
  env?: Record<string, string>;
  cwd?: string;
}

/**
 * Every driver that touches the host (ip, criu, bpftool, arping) runs commands through an
 * Executor, so the decisions around them can be tested with a recording executor.
 */
export type Executor = (file: string, args: readonly string[], opts?: ExecOptions) => Promise<ExecResult>;

export class CommandError extends Error {
  constructor(
    readonly command: string,
    readonly exitCode: number,
    readonly stderr: string,
    /** The signal that ended the command, if one did (exitCode is then -1). */
    readonly signal?: string,
  ) {
    super(`${command} ${signal ? `killed by ${signal}` : `exited ${exitCode}`}: ${stderr.trim().split('\n').slice(-3).join(' | ')}`);
    this.name = 'CommandError';
  }
}

export const execCommand: Executor = async (file, args, opts = {}) => {
  const r = await execa(file, args, {
    input: opts.input,
    reject: false,
    timeout: opts.timeoutMs,
    env: opts.env,
    cwd: opts.cwd,
    stdin: opts.input === undefined ? 'ignore' : undefined,
  });
  const result = { stdout: r.stdout ?? '', stderr: r.stderr ?? '', exitCode: r.exitCode ?? -1 };
  if (result.exitCode !== 0 && !opts.allowFailure) {
    throw new CommandError([file, ...args].join(' '), result.exitCode, result.stderr || (r.timedOut ? 'timed out' : ''), r.signal ?? undefined);
  }
  return result;
};
