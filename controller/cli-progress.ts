/**
 * Live progress of a migration for `godwit migrate --wait` (and any command that follows phase
 * events): one line per phase. On a terminal the running phase's line updates in place with
 * its elapsed time and is replaced by its result; elsewhere (a pipe, a CI log) only the
 * finished lines are written, plainly.
 */
import type { MigrationEvent__Output } from '../proto/gen/godwit/v1/MigrationEvent.js';

interface Out {
  write(text: string): unknown;
  isTTY?: boolean;
}

/** Clears the terminal line the cursor is on (CSI 2K) and returns to its start. */
const CLEAR_LINE = '\r\x1b[2K';
const TICK_MS = 100;

export class PhaseProgress {
  private running?: { phase: string; startedAt: number };
  private timer?: NodeJS.Timeout;

  constructor(private readonly out: Out = process.stderr) {}

  event(e: MigrationEvent__Output): void {
    const phase = String(e.phase);
    if (e.kind === 'SNAPSHOT' || phase === 'PENDING') return;
    if (e.kind === 'STARTED') {
      this.running = { phase, startedAt: Date.now() };
      if (this.out.isTTY) {
        this.draw();
        this.timer ??= setInterval(() => this.draw(), TICK_MS);
      }
      return;
    }
    const ok = e.kind === 'SUCCEEDED';
    const time = phase === 'DONE' || phase === 'FAILED' ? '' : `${e.durationMs.toFixed(0).padStart(6)} ms`;
    const line = `${phase.padEnd(9)} ${ok ? 'ok    ' : 'FAILED'}${time ? ` ${time}` : ''}${e.detail && !ok ? `  ${e.detail}` : ''}`;
    if (this.running?.phase === phase) this.running = undefined;
    this.out.write(`${this.out.isTTY ? CLEAR_LINE : ''}${line}\n`);
    if (this.out.isTTY && this.running) this.draw();
  }

  /** Stops updating (the last line stays as it was). */
  end(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    if (this.out.isTTY && this.running) this.out.write('\n');
    this.running = undefined;
  }

  private draw(): void {
    if (!this.running) return;
    const s = ((Date.now() - this.running.startedAt) / 1000).toFixed(1);
    this.out.write(`${CLEAR_LINE}${this.running.phase.padEnd(9)} ...    ${s} s`);
  }
}
