/**
 * A process this agent did not start, or started in an earlier life: the post-copy page server
 * (CRIU's lazy dump) goes on serving pages when its agent is killed and started again. The new
 * agent finds it by the PID and start time it recorded (a reused PID has another start time),
 * follows it until it ends, and learns how it ended from CRIU's log, since no exit status comes
 * to a process that is not the parent.
 */
import { readFileSync } from 'node:fs';
import type { LazyProcess } from '../platform.js';

/** How often the process's /proc entry is looked at while it runs. */
const POLL_MS = 100;

/** The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); undefined when there is no such process. */
export function processStartTime(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: fields are counted after its last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (rest[0] === 'Z' || rest[0] === 'X') return undefined; // ended, waiting to be reaped
    return Number(rest[19]);
  } catch {
    return undefined;
  }
}

/**
 * Follows the process `pid` that started at `startTime`; undefined when it is not running any
 * more (the caller then judges from what it left). `outcome` gives the exit status to report
 * once it ended (0: did its work), read from what the process left behind.
 */
export function adoptProcess(pid: number, startTime: number, outcome: () => number | null): LazyProcess | undefined {
  const isOurs = () => processStartTime(pid) === startTime;
  if (!isOurs()) return undefined;
  let timer: NodeJS.Timeout | undefined;
  const ended = new Promise<number | null>((resolve) => {
    timer = setInterval(() => {
      if (isOurs()) return;
      clearInterval(timer);
      resolve(outcome());
    }, POLL_MS);
    // Following it must not keep an agent that is shutting down alive.
    timer.unref();
  });
  return {
    ended,
    get running() {
      return isOurs();
    },
    kill() {
      if (isOurs()) process.kill(pid, 'SIGKILL');
    },
  };
}
