/** The controller's view of one agent: its API as promises, with a deadline per call. */
import type { AgentClient } from '../proto/gen/godwit/v1/Agent.js';
import type { AbortResponse__Output } from '../proto/gen/godwit/v1/AbortResponse.js';
import type { CheckpointResponse__Output } from '../proto/gen/godwit/v1/CheckpointResponse.js';
import type { InspectWorkloadResponse__Output } from '../proto/gen/godwit/v1/InspectWorkloadResponse.js';
import type { LockResponse__Output } from '../proto/gen/godwit/v1/LockResponse.js';
import type { ProbeResponse__Output } from '../proto/gen/godwit/v1/ProbeResponse.js';
import type { ReleaseResponse__Output } from '../proto/gen/godwit/v1/ReleaseResponse.js';
import type { RestoreResponse__Output } from '../proto/gen/godwit/v1/RestoreResponse.js';
import type { SteeringStateResponse__Output } from '../proto/gen/godwit/v1/SteeringStateResponse.js';
import type { SendImageResponse__Output } from '../proto/gen/godwit/v1/SendImageResponse.js';
import type { UnlockResponse__Output } from '../proto/gen/godwit/v1/UnlockResponse.js';
import type { DiscardImageResponse__Output } from '../proto/gen/godwit/v1/DiscardImageResponse.js';
import type { CheckFilesResponse__Output } from '../proto/gen/godwit/v1/CheckFilesResponse.js';
import type { MigrationLogsResponse__Output } from '../proto/gen/godwit/v1/MigrationLogsResponse.js';
import type { RunWorkloadRequest } from '../proto/gen/godwit/v1/RunWorkloadRequest.js';
import type { RunWorkloadResponse__Output } from '../proto/gen/godwit/v1/RunWorkloadResponse.js';
import type { WorkloadFile } from '../proto/gen/godwit/v1/WorkloadFile.js';
import type { WorkloadOutputResponse__Output } from '../proto/gen/godwit/v1/WorkloadOutputResponse.js';
import type { Endpoint } from '../lib/endpoint.js';
import { imageTokenFor } from '../lib/migration-token.js';
import { agentClient, unary } from '../lib/rpc.js';
import { endpointToWire, workloadToWire, type WorkloadSpec } from '../lib/wire.js';

/** Quick questions. */
const PROBE_MS = 10_000;
/** Reading a host's steering maps: quick, and a ListServices waits for the slowest host. */
const STEERING_STATE_MS = 3_000;
/** Steps whose time grows with the workload (memory to dump, image to move): generous. */
const HEAVY_MS = 10 * 60_000;
/**
 * Under CRIU's own lock (IPTABLES / NFTABLES) dump and restore grow with the connections, the
 * iptables restore faster than linearly (two `iptables -D` processes per connection, each reading
 * every rule: FIELD-NOTES measured 55 s at 1,000 connections); removing what the dump left on the
 * source takes one iptables-restore that also grows with the rules.
 */
const CRIU_LOCK_MS = 3 * 60 * 60_000;

export type LockModeName = 'EBPF' | 'IPTABLES' | 'NFTABLES';

/** Deadline of a step that grows with the workload, under this lock mode. */
export function heavyMs(mode: LockModeName): number {
  return mode === 'EBPF' ? HEAVY_MS : CRIU_LOCK_MS;
}

/** Deadline of Unlock and Release: quick with the XDP lock, CRIU's leftovers may take a while. */
function unlockMs(mode: LockModeName): number {
  return mode === 'EBPF' ? PROBE_MS : HEAVY_MS;
}

/** The fencing token every command carries: the leader lease's revision (controller/leader.ts); '0' outside the protocol. */
export type FencingToken = () => string;
const UNFENCED: FencingToken = () => '0';

export class AgentHandle {
  private readonly client: AgentClient;

  constructor(readonly host: string, readonly address: string, private readonly fencing: FencingToken = UNFENCED) {
    this.client = agentClient(address);
  }

  /**
   * Concurrent callers share one probe: each runs `criu check` on the host, and ten migrations'
   * preflights at once made ten of them compete for the host's CPU (measured: 0.4 s alone, 2.5 s
   * for ten at once on this 2-core machine). A shared answer is as fresh as a call of one's own
   * (the probe began while the caller was already waiting).
   */
  probe(): Promise<ProbeResponse__Output> {
    const p = this.probing ?? unary<AgentClient, object, ProbeResponse__Output>(this.client, this.client.Probe, {}, PROBE_MS).finally(() => {
      this.probing = undefined;
    });
    this.probing = p;
    return p;
  }
  private probing: Promise<ProbeResponse__Output> | undefined;

  inspectWorkload(w: WorkloadSpec): Promise<InspectWorkloadResponse__Output> {
    return unary(this.client, this.client.InspectWorkload, { workload: workloadToWire(w) }, PROBE_MS);
  }

  /** bringUpAddresses: this host is the target; its addresses come up behind the lock (LockRequest). */
  lock(migrationId: string, endpoints: Endpoint[], version: string, leaseMs: number, lockMode: LockModeName = 'EBPF', bringUpAddresses = false): Promise<LockResponse__Output> {
    return unary(this.client, this.client.Lock, { migrationId, endpoints: endpoints.map(endpointToWire), version, leaseMs, lockMode, bringUpAddresses, fencingToken: this.fencing() }, PROBE_MS);
  }

  unlock(migrationId: string, endpoints: Endpoint[], version: string, lockMode: LockModeName = 'EBPF'): Promise<UnlockResponse__Output> {
    return unary(this.client, this.client.Unlock, { migrationId, endpoints: endpoints.map(endpointToWire), version, fencingToken: this.fencing() }, unlockMs(lockMode));
  }

  /**
   * sendTo: the image goes on to this target agent in the same call (a pipelined freeze).
   * postCopy: criu dump --lazy-pages; the answer names the page server.
   */
  checkpoint(migrationId: string, w: WorkloadSpec, lockMode: LockModeName = 'EBPF', sendTo?: { address: string; host: string; steerBackendIds: number[] }, postCopy = false): Promise<CheckpointResponse__Output> {
    const pipeline = sendTo ? { sendTo: sendTo.address, steerBackendIds: sendTo.steerBackendIds, imageToken: imageTokenFor({ migrationId, source: this.host, target: sendTo.host }) } : {};
    return unary(this.client, this.client.Checkpoint, { migrationId, workload: workloadToWire(w), lockMode, postCopy, ...pipeline, fencingToken: this.fencing() }, heavyMs(lockMode));
  }

  /** peerHost: the target's host name, which the image token binds the transfer to. */
  sendImage(migrationId: string, peerAddress: string, peerHost: string, steerBackendIds: number[] = []): Promise<SendImageResponse__Output> {
    const imageToken = imageTokenFor({ migrationId, source: this.host, target: peerHost });
    return unary(this.client, this.client.SendImage, { migrationId, peerAddress, steerBackendIds, imageToken, fencingToken: this.fencing() }, HEAVY_MS);
  }

  /**
   * unlockVersion: unlock here once restored, in the same call (a pipelined freeze).
   * pageServer: post-copy, the source's page server (restore --lazy-pages from it).
   */
  restore(migrationId: string, w: WorkloadSpec, lockMode: LockModeName = 'EBPF', steerBackendIds: number[] = [], unlockVersion?: string, pageServer?: string): Promise<RestoreResponse__Output> {
    const pipeline = unlockVersion !== undefined ? { unlock: true, lockVersion: unlockVersion } : {};
    const postCopy = pageServer !== undefined ? { postCopy: true, pageServer } : {};
    return unary(this.client, this.client.Restore, { migrationId, workload: workloadToWire(w), lockMode, steerBackendIds, ...pipeline, ...postCopy, fencingToken: this.fencing() }, heavyMs(lockMode));
  }

  /** postCopy: the source's Release waits for the target to have every page (as long as a heavy step). */
  release(migrationId: string, endpoints: Endpoint[], version: string, lockMode: LockModeName = 'EBPF', postCopy = false): Promise<ReleaseResponse__Output> {
    return unary(this.client, this.client.Release, { migrationId, endpoints: endpoints.map(endpointToWire), version, fencingToken: this.fencing() }, postCopy ? HEAVY_MS : unlockMs(lockMode));
  }

  abort(migrationId: string, lockMode: LockModeName = 'EBPF'): Promise<AbortResponse__Output> {
    return unary(this.client, this.client.Abort, { migrationId, fencingToken: this.fencing() }, heavyMs(lockMode));
  }

  /** The host's steering data plane: applied generation, counters, live flows of these backends. */
  steeringState(liveFlowBackendIds: number[] = []): Promise<SteeringStateResponse__Output> {
    return unary(this.client, this.client.SteeringState, { liveFlowBackendIds }, STEERING_STATE_MS);
  }

  /** `godwit run`: waits for the command's endpoints to listen (up to 10 s on the agent). */
  runWorkload(req: RunWorkloadRequest): Promise<RunWorkloadResponse__Output> {
    return unary(this.client, this.client.RunWorkload, { ...req, fencingToken: this.fencing() }, 60_000);
  }

  workloadOutput(name: string, maxBytes = 0): Promise<WorkloadOutputResponse__Output> {
    return unary(this.client, this.client.WorkloadOutput, { name, maxBytes }, PROBE_MS);
  }

  /** After DONE: the migration's image folder on this host removed (idempotent). */
  discardImage(migrationId: string): Promise<DiscardImageResponse__Output> {
    return unary(this.client, this.client.DiscardImage, { migrationId, fencingToken: this.fencing() }, PROBE_MS);
  }

  migrationLogs(migrationId: string): Promise<MigrationLogsResponse__Output> {
    return unary(this.client, this.client.MigrationLogs, { migrationId }, PROBE_MS);
  }

  /** Hashes executables it has not seen: allow for a cold cache. */
  checkFiles(files: WorkloadFile[]): Promise<CheckFilesResponse__Output> {
    return unary(this.client, this.client.CheckFiles, { files }, 60_000);
  }

  close(): void {
    this.client.close();
  }
}

/** One channel per agent address, reused across migrations. */
export class AgentPool {
  private readonly handles = new Map<string, AgentHandle>();

  /** fencing: the token this controller's commands carry (the leader lease's revision). */
  constructor(private readonly fencing: FencingToken = UNFENCED) {}

  get(host: string, address: string): AgentHandle {
    const key = `${host}@${address}`;
    let h = this.handles.get(key);
    if (!h) {
      h = new AgentHandle(host, address, this.fencing);
      this.handles.set(key, h);
    }
    return h;
  }

  close(): void {
    for (const h of this.handles.values()) h.close();
    this.handles.clear();
  }
}
