/**
 * What the namespace fixtures (lock-netns.ts, steer-netns.ts) share: node programs started in a
 * network namespace and killed at teardown, and teardowns whose every step runs even when an
 * earlier one failed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { netnsPath } from '../../agent/linux/netns-exec.js';

// Generous: a node child starts in well under a second, but the shared machine can be loaded far beyond its cores.
const READY_TIMEOUT_MS = 60_000;

export class NsChildren {
  private readonly children: ChildProcess[] = [];

  /**
   * Runs `node -e script ...args` inside the namespace, with stdin piped; resolves once it
   * prints the `ready` line, and hands every other line to onLine. killAll() kills it (also
   * when it never got ready).
   */
  start(netns: string, script: string, args: readonly string[], ready: string, onLine?: (line: string) => void): Promise<ChildProcess> {
    const child = spawn('nsenter', [`--net=${netnsPath(netns)}`, process.execPath, '-e', script, ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
    this.children.push(child);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`"${ready}" not seen within ${READY_TIMEOUT_MS} ms`)), READY_TIMEOUT_MS);
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`child exited ${code} before "${ready}"`)));
      let isReady = false;
      createInterface({ input: child.stdout! }).on('line', (line) => {
        if (!isReady && line === ready) {
          isReady = true;
          clearTimeout(timer);
          resolve(child);
        } else {
          onLine?.(line);
        }
      });
    });
  }

  /** Kills every child started, each step attempted on its own. */
  async killAll(steps: TeardownSteps): Promise<void> {
    for (const child of this.children) await steps.attempt(() => killChild(child));
    this.children.length = 0;
  }
}

/** Teardown steps that all run; done() throws what went wrong, together. */
export class TeardownSteps {
  private readonly problems: unknown[] = [];

  async attempt(step: () => Promise<unknown>): Promise<void> {
    try {
      await step();
    } catch (err) {
      this.problems.push(err);
    }
  }

  done(what: string): void {
    if (this.problems.length > 0) throw new AggregateError(this.problems, `${what} teardown failed`);
  }
}

async function killChild(child: ChildProcess): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  process.kill(child.pid, 'SIGKILL');
  await exited;
}
