/** A typed, promise-based client of the controller API: for the CLI, the demo and programs. */
import type { ControllerClient } from '../proto/gen/godwit/v1/Controller.js';
import type { ListHostsResponse__Output } from '../proto/gen/godwit/v1/ListHostsResponse.js';
import type { ListMigrationsResponse__Output } from '../proto/gen/godwit/v1/ListMigrationsResponse.js';
import type { MigrateRequest } from '../proto/gen/godwit/v1/MigrateRequest.js';
import type { Migration__Output } from '../proto/gen/godwit/v1/Migration.js';
import type { MigrationEvent__Output } from '../proto/gen/godwit/v1/MigrationEvent.js';
import type { RunRequest } from '../proto/gen/godwit/v1/RunRequest.js';
import type { WorkloadInfo__Output } from '../proto/gen/godwit/v1/WorkloadInfo.js';
import type { ListWorkloadsResponse__Output } from '../proto/gen/godwit/v1/ListWorkloadsResponse.js';
import type { GetLogsResponse__Output } from '../proto/gen/godwit/v1/GetLogsResponse.js';
import { controllerClient, unary } from '../lib/rpc.js';

const CALL_MS = 30_000;
const TERMINAL = new Set(['DONE', 'FAILED', 'NEEDS_ATTENTION']);

export class ControllerApi {
  readonly client: ControllerClient;

  constructor(address: string) {
    this.client = controllerClient(address);
  }

  migrate(req: MigrateRequest): Promise<Migration__Output> {
    return unary(this.client, this.client.Migrate, req, CALL_MS);
  }

  getMigration(id: string): Promise<Migration__Output> {
    return unary(this.client, this.client.GetMigration, { id }, CALL_MS);
  }

  listMigrations(): Promise<ListMigrationsResponse__Output> {
    return unary(this.client, this.client.ListMigrations, {}, CALL_MS);
  }

  /** `godwit run`: the agent answers once the workload's TCP endpoints listen (or 10 s passed). */
  runWorkload(req: RunRequest): Promise<WorkloadInfo__Output> {
    return unary(this.client, this.client.RunWorkload, req, 90_000);
  }

  listWorkloads(): Promise<ListWorkloadsResponse__Output> {
    return unary(this.client, this.client.ListWorkloads, {}, CALL_MS);
  }

  /** A workload's output, or a migration's CRIU logs from both hosts. */
  getLogs(name: string, maxBytes = 0): Promise<GetLogsResponse__Output> {
    return unary(this.client, this.client.GetLogs, { name, maxBytes }, CALL_MS);
  }

  listHosts(): Promise<ListHostsResponse__Output> {
    return unary(this.client, this.client.ListHosts, {}, CALL_MS);
  }

  /** The migration's events: a snapshot first, then each phase change, until it ends. */
  async *watch(id: string): AsyncGenerator<MigrationEvent__Output> {
    const stream = this.client.WatchMigration({ id });
    for await (const e of stream as AsyncIterable<MigrationEvent__Output>) yield e;
  }

  /** Waits for the migration to end and returns its final state. */
  async wait(id: string, onEvent?: (e: MigrationEvent__Output) => void): Promise<Migration__Output> {
    let last: Migration__Output | null = null;
    for await (const e of this.watch(id)) {
      onEvent?.(e);
      last = e.migration;
      if (last && TERMINAL.has(last.phase as string)) break;
    }
    // The stream may end without a terminal event if the controller went away: ask directly.
    return last && TERMINAL.has(last.phase as string) ? last : this.getMigration(id);
  }

  close(): void {
    this.client.close();
  }
}
