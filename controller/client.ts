/**
 * The controller API as the CLI, the lab and the benchmarks use it: GodwitClient (lib/client.ts,
 * what programs import as 'godwit/client') under the names they have always called.
 */
import type { MigrationEvent__Output } from '../proto/gen/godwit/v1/MigrationEvent.js';
import type { Migration__Output } from '../proto/gen/godwit/v1/Migration.js';
import { GodwitClient, type GodwitClientOptions } from '../lib/client.js';

export class ControllerApi extends GodwitClient {
  constructor(address: string, opts: Omit<GodwitClientOptions, 'address'> = {}) {
    super({ ...opts, address });
  }

  /** The migration's events: a snapshot first, then each phase change, until it ends. */
  watch(id: string): AsyncGenerator<MigrationEvent__Output> {
    return this.watchMigration(id);
  }

  /** Waits for the migration to end and returns its final state. */
  wait(id: string, onEvent?: (e: MigrationEvent__Output) => void): Promise<Migration__Output> {
    return this.waitMigration(id, onEvent);
  }
}
