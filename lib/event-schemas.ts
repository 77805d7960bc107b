/**
 * The JSON godwit publishes on NATS (not the gRPC messages: those are described by the protos),
 * as zod schemas. Each is bound to the TypeScript type the publisher uses by a compile-time
 * check below, so a field added to the type without its schema fails `tsc`; the event catalogue
 * (docs/asyncapi.json, lib/asyncapi.ts) is generated from these.
 */
import { z } from 'zod';
import type { Heartbeat, SteeringAck } from '../agent/heartbeat.js';
import type { CordonRecord } from '../controller/cordon.js';
import type { DrainState } from '../controller/drain-store.js';
import type { MigrationState } from '../controller/migration-machine.js';
import type { PhaseEvent } from '../controller/orchestrator.js';
import type { RuleTable } from '../controller/steering-table.js';

const PHASE = z.enum(['PENDING', 'PREPARE', 'LOCK', 'STEER', 'DUMP', 'TRANSFER', 'RESTORE', 'UNLOCK', 'CLEANUP', 'DONE', 'ROLLBACK', 'FAILED', 'NEEDS_ATTENTION']);
const ms = z.number().describe('milliseconds');

export const HeartbeatSchema = z
  .object({
    host: z.string(),
    grpcAddress: z.string().describe("the agent's gRPC address, host:port"),
    criuVersion: z.string(),
    kernel: z.string(),
    startedAtMs: ms,
    atMs: ms,
    dataAddress: z.string().optional().describe("IPv4 of the host's data plane"),
    steeringGeneration: z.number().int().optional().describe('the steering rule generation the host holds'),
    freeMemoryBytes: z.number().int().optional().describe("the host's available memory (placement's tie-break)"),
  })
  .strict();

export const SteeringAckSchema = z
  .object({
    host: z.string(),
    generation: z.number().int(),
    atMs: ms.describe('Unix epoch ms (sub-ms) when the kernel held it'),
    applyMs: ms,
  })
  .strict();

const EndpointSchema = z.object({ proto: z.enum(['tcp', 'udp']), address: z.string(), port: z.number().int() }).strict();

export const MigrationStateSchema = z
  .object({
    id: z.string(),
    request: z
      .object({
        sourceHost: z.string(),
        targetHost: z.string(),
        workload: z.object({ pid: z.number().int(), endpoints: z.array(EndpointSchema) }).strict(),
        lockMode: z.enum(['EBPF', 'IPTABLES', 'NFTABLES']),
        lockLeaseMs: ms,
        allowUnsafeLock: z.boolean().optional(),
        postCopy: z.boolean().optional(),
        workloadName: z.string().optional(),
      })
      .strict(),
    phase: PHASE,
    lockVersion: z.string(),
    timings: z.array(
      z
        .object({
          phase: PHASE,
          startedAtMs: ms,
          durationMs: ms,
          ok: z.boolean(),
          error: z.string().optional(),
          steps: z.array(z.object({ host: z.string(), step: z.string(), ms }).strict()).optional(),
        })
        .strict(),
    ),
    error: z.string().optional(),
    failedPhase: PHASE.optional(),
    restoredPid: z.number().int().optional(),
    imageBytes: z.number(),
    deliveredPackets: z.number().optional(),
    steer: z
      .object({
        generation: z.number().int(),
        issuedAtMs: ms,
        backendIds: z.array(z.number().int()),
        skipped: z.string().optional(),
        convergeMs: ms.optional(),
        converged: z.boolean().optional(),
        lagging: z.array(z.string()).optional(),
        waitedMs: ms.optional(),
        insideFreeze: z.boolean().optional(),
        revertedGeneration: z.number().int().optional(),
      })
      .strict()
      .optional(),
    handedOff: z.number().optional(),
    forwarded: z.number().optional(),
    pageServer: z.string().optional(),
    lazyPagesMs: ms.optional(),
    warnings: z.array(z.string()),
    createdAtMs: ms,
    updatedAtMs: ms,
    cancelled: z.boolean().optional().describe('stopped by CancelMigration before its pivot, then rolled back'),
    drainId: z.string().optional().describe('the drain that started it'),
    attention: z.string().optional().describe('NEEDS_ATTENTION: where the image is, which locks are held until when'),
    controllers: z.array(z.string()).optional().describe('the controllers that drove it, in order (one more per resume)'),
  })
  .strict();

export const DrainStateSchema = z
  .object({
    id: z.string(),
    host: z.string().describe('the host being drained'),
    state: z.enum(['RUNNING', 'DONE', 'PARTIAL']),
    workloads: z.array(
      z
        .object({
          name: z.string(),
          targetHost: z.string().describe("'' until a target is chosen"),
          state: z.enum(['WAITING', 'MOVING', 'MOVED', 'FAILED']),
          migrationId: z.string(),
          error: z.string().describe('why it did not move (FAILED)'),
          freezeMs: ms,
        })
        .strict(),
    ),
    maxPerHost: z.number().int(),
    maxInFlight: z.number().int(),
    targets: z.array(z.string()).describe('hosts the workloads may go to (empty: any)'),
    createdAtMs: ms,
    updatedAtMs: ms,
    moved: z.number().int(),
    failed: z.number().int(),
  })
  .strict();

export const CordonRecordSchema = z
  .object({ host: z.string(), cordoned: z.boolean(), reason: z.string().describe("the operator's words, or the drain that cordoned it"), atMs: ms })
  .strict();

export const PhaseEventSchema = z
  .object({
    migrationId: z.string(),
    phase: PHASE,
    kind: z.enum(['SNAPSHOT', 'STARTED', 'SUCCEEDED', 'FAILED']),
    atMs: ms,
    durationMs: ms,
    detail: z.string(),
    migration: MigrationStateSchema,
  })
  .strict();

export const RuleTableSchema = z
  .object({
    generation: z.number().int(),
    lastServiceId: z.number().int(),
    lastBackendId: z.number().int(),
    services: z.array(
      z
        .object({
          id: z.number().int(),
          proto: z.enum(['tcp', 'udp']),
          vip: z.string(),
          vipPort: z.number().int(),
          backends: z.array(
            z
              .object({ id: z.number().int(), address: z.string(), port: z.number().int(), weight: z.number().int(), host: z.string(), hostAddress: z.string(), draining: z.boolean() })
              .strict(),
          ),
        })
        .strict(),
    ),
    addresses: z.array(z.object({ address: z.string(), host: z.string(), hostAddress: z.string() }).strict()).optional(),
  })
  .strict();

/** `{ "inbox": ... }`: stop the server-streaming request whose reply subject this is. */
export const StreamCancelSchema = z.object({ inbox: z.string() }).strict();

// Each schema's type and its publisher's type are the same both ways (compile-time only).
type Same<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
const bound: {
  heartbeat: Same<z.infer<typeof HeartbeatSchema>, Heartbeat>;
  ack: Same<z.infer<typeof SteeringAckSchema>, SteeringAck>;
  migration: Same<z.infer<typeof MigrationStateSchema>, MigrationState>;
  event: Same<z.infer<typeof PhaseEventSchema>, PhaseEvent>;
  table: Same<z.infer<typeof RuleTableSchema>, RuleTable>;
  drain: Same<z.infer<typeof DrainStateSchema>, DrainState>;
  cordon: Same<z.infer<typeof CordonRecordSchema>, CordonRecord>;
} = { heartbeat: true, ack: true, migration: true, event: true, table: true, drain: true, cordon: true };
void bound;
