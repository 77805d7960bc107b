/** The controller's view of one agent: its API as promises, with a deadline per call. */
import type { AgentClient } from '../proto/gen/godwit/v1/Agent.js';
import type { AbortResponse__Output } from '../proto/gen/godwit/v1/AbortResponse.js';
import type { CheckpointResponse__Output } from '../proto/gen/godwit/v1/CheckpointResponse.js';
import type { InspectWorkloadResponse__Output } from '../proto/gen/godwit/v1/InspectWorkloadResponse.js';
import type { LockResponse__Output } from '../proto/gen/godwit/v1/LockResponse.js';
import type { ProbeResponse__Output } from '../proto/gen/godwit/v1/ProbeResponse.js';
import type { ReleaseResponse__Output } from '../proto/gen/godwit/v1/ReleaseResponse.js';
import type { RestoreResponse__Output } from '../proto/gen/godwit/v1/RestoreResponse.js';
import type { SendImageResponse__Output } from '../proto/gen/godwit/v1/SendImageResponse.js';
import type { UnlockResponse__Output } from '../proto/gen/godwit/v1/UnlockResponse.js';
import type { Endpoint } from '../lib/endpoint.js';
import { agentClient, unary } from '../lib/rpc.js';
import { endpointToWire, workloadToWire, type WorkloadSpec } from '../lib/wire.js';

/** Quick questions. */
const PROBE_MS = 10_000;
/** Steps whose time grows with the workload (memory to dump, image to move): generous. */
const HEAVY_MS = 10 * 60_000;

export class AgentHandle {
  private readonly client: AgentClient;

  constructor(readonly host: string, readonly address: string) {
    this.client = agentClient(address);
  }

  probe(): Promise<ProbeResponse__Output> {
    return unary(this.client, this.client.Probe, {}, PROBE_MS);
  }

  inspectWorkload(w: WorkloadSpec): Promise<InspectWorkloadResponse__Output> {
    return unary(this.client, this.client.InspectWorkload, { workload: workloadToWire(w) }, PROBE_MS);
  }

  lock(migrationId: string, endpoints: Endpoint[], version: string, leaseMs: number): Promise<LockResponse__Output> {
    return unary(this.client, this.client.Lock, { migrationId, endpoints: endpoints.map(endpointToWire), version, leaseMs }, PROBE_MS);
  }

  unlock(migrationId: string, endpoints: Endpoint[], version: string): Promise<UnlockResponse__Output> {
    return unary(this.client, this.client.Unlock, { migrationId, endpoints: endpoints.map(endpointToWire), version }, PROBE_MS);
  }

  checkpoint(migrationId: string, w: WorkloadSpec): Promise<CheckpointResponse__Output> {
    return unary(this.client, this.client.Checkpoint, { migrationId, workload: workloadToWire(w) }, HEAVY_MS);
  }

  sendImage(migrationId: string, peerAddress: string): Promise<SendImageResponse__Output> {
    return unary(this.client, this.client.SendImage, { migrationId, peerAddress }, HEAVY_MS);
  }

  restore(migrationId: string, w: WorkloadSpec): Promise<RestoreResponse__Output> {
    return unary(this.client, this.client.Restore, { migrationId, workload: workloadToWire(w) }, HEAVY_MS);
  }

  release(migrationId: string, endpoints: Endpoint[], version: string): Promise<ReleaseResponse__Output> {
    return unary(this.client, this.client.Release, { migrationId, endpoints: endpoints.map(endpointToWire), version }, PROBE_MS);
  }

  abort(migrationId: string): Promise<AbortResponse__Output> {
    return unary(this.client, this.client.Abort, { migrationId }, HEAVY_MS);
  }

  close(): void {
    this.client.close();
  }
}

/** One channel per agent address, reused across migrations. */
export class AgentPool {
  private readonly handles = new Map<string, AgentHandle>();

  get(host: string, address: string): AgentHandle {
    const key = `${host}@${address}`;
    let h = this.handles.get(key);
    if (!h) {
      h = new AgentHandle(host, address);
      this.handles.set(key, h);
    }
    return h;
  }

  close(): void {
    for (const h of this.handles.values()) h.close();
    this.handles.clear();
  }
}
