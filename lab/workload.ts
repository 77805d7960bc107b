import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, readlinkSync, realpathSync } from 'node:fs';
import { endianness } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { nsenterArgs, type LabHost } from './topology.js';

/**
 * Starts the sample workload (build/echo-server) the way CRIU can move it: in the host's network
 * namespace (nsenter --net, no new mount namespace) and in a PID namespace of its own, with
 * setsid inside it and stdio on /dev/null:
 *
 *   nsenter --net=/run/netns/NS unshare --pid --fork setsid build/echo-server ADDR PORT
 *
 * (with a bash in between that closes inherited descriptors above 2 and execs the server).
 * `unshare` stays behind as the parent; the echo-server is its child and the new namespace's init,
 * and that process (its host PID) is what CRIU dumps. setsid does not fork here: the child of
 * `unshare --fork` is not a process-group leader.
 */

export interface StartedWorkload {
  /** Host PID of the echo-server (the PID namespace's init): the process tree CRIU dumps. */
  pid: number;
  /** Host PID of the `unshare` that launched it (exits when the echo-server does). */
  launcherPid: number;
}

/**
 * Runs "$@" with no file descriptor above 2 (bash, then exec: the PID stays the same). Whatever
 * started us may leak descriptors that are not close-on-exec (a CI runner's pipe, say), and node
 * passes them on; a dumped process holding a pipe to the outside makes CRIU's dump fail.
 */
const CLOSE_INHERITED_FDS = [
  'bash',
  '-c',
  'for f in /proc/self/fd/*; do f=${f##*/}; if [ "$f" -gt 2 ]; then eval "exec $f>&-"; fi; done 2>/dev/null; exec "$@"',
  'godwit-workload',
];

function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the project root (package.json) above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

export function echoServerBinary(): string {
  return join(repoRoot(), 'build', 'echo-server');
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Alive and not a zombie (a dead process may stay a zombie for a while before it is reaped). */
export function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

function childrenOf(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const text = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8');
      for (const t of text.split(/\s+/)) if (/^\d+$/.test(t)) out.push(Number(t));
    }
  } catch {
    /* gone */
  }
  return out;
}

function exeOf(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return undefined;
  }
}

/** /proc/net/tcp's "0100007F:1F90" for 127.0.0.1:8080 (the address is in host byte order). */
function procNetTcpKey(address: string, port: number): string {
  const octets = address.split('.').map(Number);
  const ordered = endianness() === 'LE' ? [...octets].reverse() : octets;
  const hex = (n: number, w: number) => n.toString(16).toUpperCase().padStart(w, '0');
  return `${ordered.map((o) => hex(o, 2)).join('')}:${hex(port, 4)}`;
}

/** True if the process's network namespace has a TCP socket listening on address:port. */
export function isListening(pid: number, address: string, port: number): boolean {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/net/tcp`, 'utf8');
  } catch {
    return false;
  }
  const key = procNetTcpKey(address, port);
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f[1] === key && f[3] === '0A') return true;
  }
  return false;
}

export async function startWorkload(
  host: LabHost,
  address: string,
  port: number,
  /** args: more echo-server arguments after ADDRESS PORT (outbound mode: lab/outbound.ts). */
  opts: { binary?: string; timeoutMs?: number; args?: readonly string[] } = {},
): Promise<StartedWorkload> {
  const binary = resolve(opts.binary ?? echoServerBinary());
  if (!existsSync(binary)) throw new Error(`${binary} does not exist: run scripts/build-workload.sh`);
  const binaryReal = realpathSync(binary);
  const timeoutMs = opts.timeoutMs ?? 5000;

  const child = spawn('nsenter', [...nsenterArgs(host), 'unshare', '--pid', '--fork', 'setsid', ...CLOSE_INHERITED_FDS, binary, address, String(port), ...(opts.args ?? [])], {
    detached: true,
    stdio: 'ignore',
  });
  let exitInfo: string | undefined;
  let spawnError: Error | undefined;
  child.on('error', (e) => (spawnError = e));
  child.on('exit', (code, signal) => (exitInfo = signal ? `signal ${signal}` : `code ${code}`));
  child.unref();
  const launcherPid = child.pid;
  if (launcherPid === undefined) {
    await sleep(0);
    throw new Error(`cannot start nsenter: ${spawnError?.message ?? 'no pid'}`);
  }

  const deadline = Date.now() + timeoutMs;
  let pid: number | undefined;
  const fail = async (why: string): Promise<never> => {
    if (pid !== undefined) await stopWorkload(pid).catch(() => undefined);
    if (processAlive(launcherPid)) {
      try {
        process.kill(launcherPid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    throw new Error(`echo-server ${address}:${port} on ${host.name}: ${why}`);
  };

  // The echo-server is unshare's child once it has exec'd the binary (before that it is unshare or setsid).
  while (pid === undefined) {
    if (spawnError) return fail(`cannot start: ${spawnError.message}`);
    if (exitInfo) return fail(`exited (${exitInfo}) before it started; is ${address} on ${host.netns}'s ${host.iface}, ${port} free?`);
    for (const c of childrenOf(launcherPid)) {
      const exe = exeOf(c);
      if (exe === binaryReal || exe === binary) pid = c;
    }
    if (pid === undefined) {
      if (Date.now() > deadline) return fail(`did not start within ${timeoutMs} ms`);
      await sleep(10);
    }
  }
  while (!isListening(pid, address, port)) {
    if (!processAlive(pid) || exitInfo)
      return fail(`exited (${exitInfo ?? 'no status'}) before listening; is ${address} on ${host.netns}'s ${host.iface}, ${port} free?`);
    if (Date.now() > deadline) return fail(`not listening within ${timeoutMs} ms`);
    await sleep(10);
  }
  return { pid, launcherPid };
}

/** SIGTERM, then SIGKILL after timeoutMs; resolves once the process is gone (or a zombie). */
export async function stopWorkload(pid: number, opts: { timeoutMs?: number } = {}): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? 2000;
  for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
    if (!processAlive(pid)) return;
    try {
      process.kill(pid, signal);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ESRCH') return;
      throw e;
    }
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (!processAlive(pid)) return;
      await sleep(20);
    }
  }
  if (processAlive(pid)) throw new Error(`workload ${pid} survives SIGKILL`);
}
