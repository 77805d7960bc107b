/**
 * What became of a CRIU run that an agent started and did not see end (the agent was killed
 * mid-step; CRIU, its child, ran on). CRIU's own log says it: its last line is "Dumping finished
 * successfully" / "Dumping FAILED." (cr-dump.c) or "Restore finished successfully" / "Restoring
 * FAILED." (cr-restore.c), at the log level agents run CRIU with (4, linux/criu.ts). A run still
 * going has neither yet: wait for it.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DUMP_LOG, RESTORE_LOG } from './linux/criu.js';

export type CriuOutcome = 'succeeded' | 'failed' | 'never-ran';

const MARKERS = {
  dump: { log: DUMP_LOG, ok: /Dumping finished successfully/, failed: /Dumping FAILED/ },
  restore: { log: RESTORE_LOG, ok: /Restore finished successfully/, failed: /Restoring FAILED/ },
} as const;

/** How long a CRIU run with no log at all may take to appear before it counts as never started. */
const NO_LOG_GRACE_MS = 2_000;

export async function criuOutcome(imageDir: string, operation: 'dump' | 'restore', timeoutMs = 120_000): Promise<CriuOutcome> {
  const m = MARKERS[operation];
  const started = Date.now();
  for (;;) {
    const text = await readFile(join(imageDir, m.log), 'utf8').catch(() => undefined);
    if (text !== undefined) {
      if (m.ok.test(text)) return 'succeeded';
      if (m.failed.test(text)) return 'failed';
    } else if (Date.now() - started > NO_LOG_GRACE_MS) return 'never-ran';
    // Still running, or killed with the agent before it could write either line.
    if (Date.now() - started > timeoutMs) return 'failed';
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The PID CRIU's restore wrote (--pidfile restored.pid, linux/criu.ts), if any. */
export async function restoredPidFile(imageDir: string): Promise<number | undefined> {
  const text = await readFile(join(imageDir, 'restored.pid'), 'utf8').catch(() => '');
  const pid = Number(text.trim());
  return Number.isInteger(pid) && pid > 1 ? pid : undefined;
}
