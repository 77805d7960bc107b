/**
 * Following a process this agent is not the parent of (the post-copy page server an earlier run
 * of the agent started): found by PID and start time, never by a reused PID, and its end seen.
 */
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { adoptProcess, processStartTime } from '../../agent/linux/adopted-process.js';

describe('adopted processes', () => {
  it('follows a running process to its end and reports the outcome its leftovers give', async () => {
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      const pid = child.pid!;
      const startTime = processStartTime(pid);
      expect(startTime).toBeGreaterThan(0);
      const p = adoptProcess(pid, startTime!, () => 7)!;
      expect(p.running).toBe(true);
      p.kill();
      expect(await p.ended).toBe(7);
      expect(p.running).toBe(false);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('does not take another process that got the PID, nor one that has gone', () => {
    const pid = process.pid;
    const startTime = processStartTime(pid)!;
    expect(adoptProcess(pid, startTime + 1, () => 0)).toBeUndefined();
    expect(adoptProcess(2 ** 22 + 1, 1, () => 0)).toBeUndefined();
    expect(processStartTime(2 ** 22 + 1)).toBeUndefined();
  });
});
