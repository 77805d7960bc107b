/** The fleet operations of the controller API as promises and async iterators (CLI, tests, bench). */
import type { ControllerClient } from '../proto/gen/godwit/v1/Controller.js';
import type { DrainRecord__Output } from '../proto/gen/godwit/v1/DrainRecord.js';
import type { DrainRequest } from '../proto/gen/godwit/v1/DrainRequest.js';
import type { Host__Output } from '../proto/gen/godwit/v1/Host.js';
import type { ListDrainsResponse__Output } from '../proto/gen/godwit/v1/ListDrainsResponse.js';
import type { Migration__Output } from '../proto/gen/godwit/v1/Migration.js';
import type { RegisterWorkloadRequest } from '../proto/gen/godwit/v1/RegisterWorkloadRequest.js';
import type { WorkloadInfo__Output } from '../proto/gen/godwit/v1/WorkloadInfo.js';
import { controllerClient, unary } from '../lib/rpc.js';

const CALL_MS = 30_000;

export class FleetApi {
  readonly client: ControllerClient;

  constructor(address: string) {
    this.client = controllerClient(address);
  }

  /** The agent inspects the process first (it may take a few seconds on a loaded host). */
  registerWorkload(req: RegisterWorkloadRequest): Promise<WorkloadInfo__Output> {
    return unary(this.client, this.client.RegisterWorkload, req, 60_000);
  }

  cordon(host: string, reason = ''): Promise<Host__Output> {
    return unary(this.client, this.client.CordonHost, { host, reason }, CALL_MS);
  }

  uncordon(host: string): Promise<Host__Output> {
    return unary(this.client, this.client.UncordonHost, { host }, CALL_MS);
  }

  drain(req: DrainRequest): Promise<DrainRecord__Output> {
    return unary(this.client, this.client.Drain, req, CALL_MS);
  }

  getDrain(id: string): Promise<DrainRecord__Output> {
    return unary(this.client, this.client.GetDrain, { id }, CALL_MS);
  }

  listDrains(): Promise<ListDrainsResponse__Output> {
    return unary(this.client, this.client.ListDrains, {}, CALL_MS);
  }

  /** The drain's record now, then after each change, until it ends. */
  async *watchDrain(id: string): AsyncGenerator<DrainRecord__Output> {
    const stream = this.client.WatchDrain({ id });
    for await (const d of stream as AsyncIterable<DrainRecord__Output>) yield d;
  }

  /** Waits for the drain to end and returns its last record. */
  async waitDrain(id: string, onChange?: (d: DrainRecord__Output) => void): Promise<DrainRecord__Output> {
    let last: DrainRecord__Output | undefined;
    for await (const d of this.watchDrain(id)) {
      onChange?.(d);
      last = d;
      if (d.state !== 'RUNNING') break;
    }
    return last && last.state !== 'RUNNING' ? last : this.getDrain(id);
  }

  cancelMigration(id: string): Promise<Migration__Output> {
    return unary(this.client, this.client.CancelMigration, { id }, CALL_MS);
  }

  close(): void {
    this.client.close();
  }
}
