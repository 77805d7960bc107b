/**
 * Fencing: every command from a controller carries its leader lease's KV revision
 * (controller/leader.ts). Revisions only grow, so a newer leader always holds a larger token; an
 * agent remembers the largest it has seen (on disk, so a restart does not forget it) and refuses
 * anything older. A paused old leader that wakes up after a standby took over cannot act.
 */
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PreconditionError } from '../lib/errors.js';

/** A command from a controller whose lease has been superseded. */
export class StaleFencingTokenError extends PreconditionError {
  constructor(readonly token: bigint, readonly newest: bigint, readonly host: string) {
    super(`host "${host}" refuses a command with fencing token ${token}: a newer leader (token ${newest}) has taken over; this controller is no longer the leader`);
    this.name = 'StaleFencingTokenError';
  }
}

export class FencingGate {
  private newest: bigint;
  private readonly file: string;

  constructor(stateDir: string, private readonly host: string) {
    this.file = join(stateDir, 'fencing-token');
    this.newest = readToken(this.file);
  }

  /**
   * Admits a command carrying `token` (0 or absent: a caller outside the leader protocol, such
   * as an operator's tool or a test; admitted). Raises the remembered token when it is newer.
   */
  admit(token: string | number | bigint | null | undefined): void {
    const t = BigInt(token || 0);
    if (t === 0n) return;
    if (t < this.newest) throw new StaleFencingTokenError(t, this.newest, this.host);
    if (t > this.newest) {
      this.newest = t;
      const tmp = `${this.file}.tmp`;
      writeFileSync(tmp, t.toString());
      renameSync(tmp, this.file);
    }
  }

  current(): bigint {
    return this.newest;
  }
}

function readToken(file: string): bigint {
  try {
    return BigInt(readFileSync(file, 'utf8').trim() || '0');
  } catch {
    return 0n;
  }
}
