/**
 * The one place that runs CRIU. Flags and why:
 *  --tcp-established     established connections are dumped and restored with TCP repair
 *  --network-lock M      skip (lock mode EBPF): godwit holds the network itself (XDP lock
 *                        entries, agent/netlock.ts); iptables / nftables (lock modes IPTABLES /
 *                        NFTABLES): CRIU's own per-connection lock (agent/linux/criu-netfilter.ts),
 *                        two iptables processes or two nftables elements per connection.
 *                        Restore ignores the flag and uses the method recorded in the image
 *                        ("--network-lock will be ignored in restore command"); it is passed anyway.
 *  restore -d            detach: the agent is not the restored tree's parent
 *  restore --lazy-pages  post-copy: the memory comes from a lazy-pages daemon (agent/linux/lazy-pages.ts)
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CommandError, type Executor } from '../../lib/exec.js';

export interface CriuOptions {
  exec: Executor;
  /** The criu command: a working CRIU 4.2+ (scripts/install-criu.sh). */
  criuPath: string;
  /** CRIU's -v (default DEFAULT_CRIU_LOG_LEVEL). */
  logLevel?: number;
}

/**
 * CRIU's -v: 0 nothing, 1 errors, 2 warnings, 3 info, 4 debug. The log is written inside the
 * freeze, line by line; see bench freeze for what each level costs.
 */
export const DEFAULT_CRIU_LOG_LEVEL = 4;

/** An agent flag's CRIU log level, checked. */
export function parseLogLevel(text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0 || n > 4) throw new Error(`CRIU log level "${text}" must be 0, 1, 2, 3 or 4`);
  return n;
}

export type CriuNetworkLock = 'skip' | 'iptables' | 'nftables';

export interface DumpResult {
  durationMs: number;
}

export interface RestoreResult {
  pid: number;
  durationMs: number;
}

export class CriuError extends Error {
  constructor(
    readonly operation: 'dump' | 'restore' | 'check',
    readonly logTail: string,
    cause: string,
  ) {
    super(`criu ${operation} failed: ${cause}${logTail ? ` — log: ${logTail}` : ''}`);
    this.name = 'CriuError';
  }
}

export const DUMP_LOG = 'dump.log';
export const RESTORE_LOG = 'restore.log';

export class Criu {
  constructor(private readonly opts: CriuOptions) {}

  /** The criu command (for the long-running post-copy processes, agent/linux/lazy-pages.ts). */
  get path(): string {
    return this.opts.criuPath;
  }

  async version(): Promise<string> {
    const r = await this.opts.exec(this.opts.criuPath, ['--version']);
    return /Version:\s*(\S+)/.exec(r.stdout)?.[1] ?? r.stdout.trim();
  }

  /** undefined when `criu check` passes, else what it said. */
  async checkProblem(): Promise<string | undefined> {
    const r = await this.opts.exec(this.opts.criuPath, ['check'], { allowFailure: true });
    return r.exitCode === 0 ? undefined : (r.stderr || r.stdout).trim().split('\n').slice(-2).join(' ');
  }

  /** Dumps the tree rooted at `pid` into `imageDir`; the tree is gone afterwards. */
  async dump(pid: number, imageDir: string, networkLock: CriuNetworkLock = 'skip'): Promise<DumpResult> {
    const started = performance.now();
    await this.run('dump', imageDir, DUMP_LOG, [
      'dump', '--tree', String(pid), '--images-dir', imageDir,
      '--tcp-established', '--network-lock', networkLock,
      '--log-file', DUMP_LOG, this.verbosity(),
    ]);
    return { durationMs: performance.now() - started };
  }

  /** Restores the tree from `imageDir`, detached; returns its root's PID in this PID namespace. */
  async restore(imageDir: string, networkLock: CriuNetworkLock = 'skip', opts: { lazyPages?: boolean } = {}): Promise<RestoreResult> {
    const started = performance.now();
    const pidFile = join(imageDir, 'restored.pid');
    await this.run('restore', imageDir, RESTORE_LOG, [
      'restore', '--images-dir', imageDir, '--restore-detached', '--pidfile', pidFile,
      '--tcp-established', '--network-lock', networkLock,
      '--log-file', RESTORE_LOG, this.verbosity(),
      ...(opts.lazyPages ? ['--lazy-pages'] : []),
    ]);
    const pid = Number((await readFile(pidFile, 'utf8')).trim());
    return { pid, durationMs: performance.now() - started };
  }

  private verbosity(): string {
    return `-v${this.opts.logLevel ?? DEFAULT_CRIU_LOG_LEVEL}`;
  }

  private async run(operation: 'dump' | 'restore', imageDir: string, logName: string, args: string[]): Promise<void> {
    try {
      await this.opts.exec(this.opts.criuPath, args, { cwd: imageDir });
    } catch (err) {
      const tail = await logErrors(join(imageDir, logName));
      // CRIU's own stderr says what its log cannot, e.g. glibc's abort message when it dies
      // ("*** bit out of range 0 - FD_SETSIZE on fd_set ***: terminated", exit 134).
      const said = err instanceof CommandError ? stderrProblem(err.stderr) : '';
      const cause = err instanceof CommandError ? `${err.signal ? `killed by ${err.signal}` : `exit ${err.exitCode}`}${said ? `: ${said}` : ''}` : String(err);
      throw new CriuError(operation, tail, cause);
    }
  }
}

/** The lines of a CRIU log that say what went wrong (its first "Error (" lines). */
export async function logErrors(path: string): Promise<string> {
  try {
    const text = await readFile(path, 'utf8');
    return errorLines(text);
  } catch {
    return '';
  }
}

/** The last meaningful lines of CRIU's stderr (the harmless RLIMIT_NOFILE line dropped). */
export function stderrProblem(stderr: string): string {
  return stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !/RLIMIT_NOFILE/.test(l))
    .slice(-2)
    .join(' | ');
}

/** How many of a log's error lines a migration's error quotes (godwit logs prints the rest). */
const ERROR_LINES_QUOTED = 3;

/**
 * CRIU's own error lines, first ones first: "(00.123) Error (criu/cr-dump.c:1234): ..." and
 * the same from the code it injects into the tasks ("pie: 12: Error (criu/pie/...): ..."). The
 * first is the cause; later ones are CRIU unwinding. Lines that merely contain "error" are not
 * errors (a path like libgpg-error.so or error.log, FIELD-NOTES). The RLIMIT_NOFILE complaint is
 * in every log on these machines and harmless. A log without an Error line (CRIU killed) gives
 * its last lines.
 */
export function errorLines(log: string): string {
  const lines = log.split('\n').filter((l) => l.trim() && !/RLIMIT_NOFILE/.test(l));
  const errors = lines.filter((l) => /(^|[\s:])Error \(/.test(l));
  const quoted = errors.length > 0 ? errors.slice(0, ERROR_LINES_QUOTED) : lines.slice(-2);
  return quoted.map((l) => l.replace(/^\(\s*\d+\.\d+\)\s*/, '').trim()).join(' | ');
}
