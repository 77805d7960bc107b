import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

/**
 * The compiled lab program `name` (e.g. "traffic-client.js"): beside this module when it runs
 * from dist/lab, else in this project's dist/lab (when run from source by the test runner).
 */
export function labProgram(name: string): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const sibling = join(here, name);
  if (existsSync(sibling)) return sibling;
  return join(here, '..', 'dist', 'lab', name);
}

/**
 * A lab program run as a child and driven over JSON lines: commands on its stdin
 * ({"cmd":..,"id":N}), one reply per command on its stdout ({"reply":..,"id":N}, or
 * {"reply":"error","error":..}), and events ({"event":"ready"} once it works, {"event":"error"}
 * if it cannot start). lab/traffic.ts drives lab/traffic-client.ts with it, lab/udp-traffic.ts
 * lab/udp-client.ts.
 */
export interface JsonLineChild {
  readonly pid: number;
  /** Resolves on {"event":"ready"}; rejects on {"event":"error"} or when the child ends first. */
  readonly ready: Promise<void>;
  readonly exited: Promise<number | null>;
  request<T>(cmd: Record<string, unknown>, timeoutMs: number): Promise<T>;
  /** quit, then SIGTERM, then SIGKILL, by PID. Safe to call more than once. */
  stop(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function spawnJsonLineChild(what: string, file: string, args: string[]): JsonLineChild {
  const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  if (child.pid === undefined) throw new Error(`cannot spawn ${file} for the ${what}`);
  const pid = child.pid;

  let stderrTail = '';
  child.stderr.on('data', (d: Buffer) => (stderrTail = (stderrTail + d.toString()).slice(-4000)));
  child.stdin.on('error', () => undefined); // EPIPE once the child is gone

  let exitCode: number | null | undefined;
  let exitDescription = '';
  const exited = new Promise<number | null>((resolve) => {
    child.on('exit', (code, signal) => {
      exitCode = code;
      exitDescription = signal ? `killed by ${signal}` : `exited ${code}`;
      resolve(code);
    });
    child.on('error', () => resolve(null));
  });
  const gone = (how: string) => new Error(`${what} ${how}: ${exitDescription}${stderrTail ? ` (${stderrTail.trim().slice(-500)})` : ''}`);

  let readyResolve!: () => void;
  let readyReject!: (e: Error) => void;
  const ready = new Promise<void>((res, rej) => {
    readyResolve = res;
    readyReject = rej;
  });
  ready.catch(() => undefined); // a caller that never awaits ready must not see an unhandled rejection

  const pending = new Map<number, { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void }>();
  let nextId = 1;
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line);
    } catch {
      return;
    }
    if (msg.event === 'ready') readyResolve();
    else if (msg.event === 'error') readyReject(new Error(`${what}: ${String(msg.error)}`));
    else if (typeof msg.id === 'number' && pending.has(msg.id)) {
      const p = pending.get(msg.id)!;
      pending.delete(msg.id);
      if (msg.reply === 'error') p.reject(new Error(`${what}: ${String(msg.error)}`));
      else p.resolve(msg);
    }
  });
  void exited.then(() => {
    readyReject(gone('ended before it was ready'));
    for (const p of pending.values()) p.reject(gone('ended'));
    pending.clear();
  });

  const request = <T>(cmd: Record<string, unknown>, timeoutMs: number): Promise<T> => {
    if (exitCode !== undefined) return Promise.reject(gone('is not running'));
    const id = nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error(`${what}: no reply to ${String(cmd.cmd)} within ${timeoutMs} ms`));
      }, timeoutMs);
      pending.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      child.stdin.write(JSON.stringify({ ...cmd, id }) + '\n');
    });
  };

  const waitExit = async (ms: number): Promise<boolean> => {
    if (exitCode !== undefined) return true;
    await Promise.race([exited, sleep(ms)]);
    return exitCode !== undefined;
  };

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      if (exitCode !== undefined) return;
      await request({ cmd: 'quit' }, 2000).catch(() => undefined);
      if (await waitExit(2000)) return;
      for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
        try {
          process.kill(pid, signal);
        } catch {
          return; // already gone
        }
        if (await waitExit(2000)) return;
      }
      throw new Error(`${what} ${pid} survives SIGKILL`);
    })());

  return { pid, ready, exited, request, stop };
}
