/**
 * Fencing: every command from a controller carries its leader lease's KV revision
 * (controller/leader.ts). Revisions only grow, so a newer leader always holds a larger token; an
 * agent remembers the largest it has seen (on disk, so a restart does not forget it) and refuses
 * anything older. A paused old leader that wakes up after a standby took over cannot act.
 */
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { GodwitError, InvalidArgumentError, PreconditionError } from '../lib/errors.js';

/** How a bad request is answered: it changed nothing, so its token is not remembered either. */
const REFUSALS: ReadonlySet<status> = new Set([status.INVALID_ARGUMENT, status.NOT_FOUND, status.FAILED_PRECONDITION]);

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
   * Runs a command carrying `token` (0 or absent: a caller outside the leader protocol, such as
   * an operator's tool or a test; admitted) unless an older token than one seen before. The
   * token is remembered once the command has been accepted: it ran, or failed on the host. A
   * request refused as bad (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION) changes nothing,
   * not even this.
   */
  async admit<T>(token: string | number | bigint | null | undefined, run: () => Promise<T>): Promise<T> {
    const t = BigInt(token || 0);
    if (t === 0n) return run();
    // A lease's KV revision: never near 2^53. A larger one is a bad request, and remembered it
    // would fence out every real leader after it.
    if (t > BigInt(Number.MAX_SAFE_INTEGER))
      throw new InvalidArgumentError('fencing_token', `fencing_token ${t} is not a leader lease revision (at most ${Number.MAX_SAFE_INTEGER})`);
    if (t < this.newest) throw new StaleFencingTokenError(t, this.newest, this.host);
    try {
      const result = await run();
      this.remember(t);
      return result;
    } catch (err) {
      if (!(err instanceof GodwitError && REFUSALS.has(err.code))) this.remember(t);
      throw err;
    }
  }

  private remember(t: bigint): void {
    if (t <= this.newest) return;
    this.newest = t;
    const tmp = `${this.file}.tmp`;
    writeFileSync(tmp, t.toString());
    renameSync(tmp, this.file);
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
