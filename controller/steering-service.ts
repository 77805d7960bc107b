/**
 * The controller's Steering API (steering.proto): turns requests into rule-table operations
 * (controller/steering-table.ts), asks hosts what an operation must know (live flows), stores
 * the new generation (controller/steering-store.ts, which is also how it reaches every agent),
 * and, when asked, waits until every ready host holds it.
 */
import type * as grpc from '@grpc/grpc-js';
import type { SteeringHandlers } from '../proto/gen/godwit/v1/Steering.js';
import type { RuleGeneration } from '../proto/gen/godwit/v1/RuleGeneration.js';
import type { SteeringChange } from '../proto/gen/godwit/v1/SteeringChange.js';
import type { WaitOptions__Output } from '../proto/gen/godwit/v1/WaitOptions.js';
import type { WatchSteeringRequest__Output } from '../proto/gen/godwit/v1/WatchSteeringRequest.js';
import type { SteeringCounter, SteeringService } from '../agent/steering.js';
import { InvalidArgumentError, PreconditionError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import { handleUnary } from '../lib/rpc.js';
import type { AgentPool } from './agent-client.js';
import type { HostRegistry } from './registry.js';
import type { SteeringStore } from './steering-store.js';
import { applyOp, liveFlowsNeeded, mustFindService, type RuleTable, type SteeringOp } from './steering-table.js';
import { backendKeyFromWire, serviceKeyFromWire, serviceToWire, type CounterSums } from './steering-wire.js';

/** How long a request that asks to wait waits by default, and at most. */
export const DEFAULT_WAIT_MS = 10_000;
const MAX_WAIT_MS = 5 * 60_000;

export interface SteeringControllerOptions {
  store: SteeringStore;
  registry: HostRegistry;
  agents: AgentPool;
  log: Logger;
  /** The leader lease (controller/leader.ts): a standby refuses changes as the controller API does. Absent: always leads (tests). */
  leader?: { requireLeader(): void };
}

interface FleetCounters {
  services: CounterSums;
  backends: CounterSums;
  unreachable: string[];
}

export class SteeringController {
  constructor(private readonly opts: SteeringControllerOptions) {}

  handlers(): SteeringHandlers {
    const { log, store } = this.opts;
    return {
      CreateService: handleUnary(log, 'CreateService', async (req) =>
        this.change({ op: 'create-service', service: serviceKeyFromWire(req.service) }, req.wait),
      ),
      UpdateService: handleUnary(log, 'UpdateService', async (req) => this.change(updateOp(req), req.wait)),
      DeleteService: handleUnary(log, 'DeleteService', async (req) =>
        this.change({ op: 'delete-service', service: serviceKeyFromWire(req.service), force: req.force }, req.wait),
      ),
      GetService: handleUnary(log, 'GetService', async (req) => {
        const s = mustFindService(store.table(), serviceKeyFromWire(req.service));
        return serviceToWire(s, await this.counters());
      }),
      ListServices: handleUnary(log, 'ListServices', async () => {
        const table = store.table();
        const counters = await this.counters();
        return { generation: table.generation, services: table.services.map((s) => serviceToWire(s, counters)), unreachableHosts: counters.unreachable };
      }),
      WatchSteering: (call) => this.watch(call),
    };
  }

  /** Validates and stores one change; with wait, returns once the fleet holds it (or the wait times out). */
  async change(op: SteeringOp, wait: WaitOptions__Output | null | undefined): Promise<SteeringChange> {
    const { store, registry, log } = this.opts;
    const waitMs = waitTimeout(wait);
    this.opts.leader?.requireLeader();
    const stored = await store.mutate(async (table) => {
      const ids = liveFlowsNeeded(table, op);
      const liveFlows = ids.length > 0 ? await this.liveFlows(ids) : undefined;
      const r = applyOp(table, op, { hosts: registry.addresses(), liveFlows });
      return { table: r.table, changed: r.changed, result: r.service };
    });
    const generation = stored.table.generation;
    if (stored.changed) log.info({ op: op.op, service: op.service, generation }, 'steering table changed');
    const answer: SteeringChange = {
      generation,
      service: serviceToWire(stored.result),
      acceptedAtMs: stored.acceptedAtMs,
      waited: waitMs !== undefined,
    };
    if (waitMs === undefined) return answer;
    const c = await registry.waitForGeneration(generation, waitMs, stored.acceptedAtMs);
    if (!c.converged) log.warn({ generation, lagging: c.lagging, waitMs }, 'steering generation not held by every host in time');
    return { ...answer, converged: c.converged, convergeMs: c.convergeMs, laggingHosts: c.lagging };
  }

  /** Ready hosts that run a steering data plane. */
  private steeringHosts() {
    return this.opts.registry.list().filter((h) => h.ready && h.steeringGeneration !== undefined);
  }

  /**
   * Live flows per backend id, summed over every ready steering host. A host that cannot say
   * makes the answer unknown: refused, since guessing "none" could break live connections.
   */
  private async liveFlows(ids: number[]): Promise<Map<number, number>> {
    const sums = new Map<number, number>(ids.map((id) => [id, 0]));
    const failed: string[] = [];
    await Promise.all(
      this.steeringHosts().map(async (h) => {
        try {
          const r = await this.opts.agents.get(h.heartbeat.host, h.heartbeat.grpcAddress).steeringState(ids);
          for (const f of r.liveFlows) sums.set(f.backendId, (sums.get(f.backendId) ?? 0) + Number(f.flows));
        } catch (err) {
          failed.push(`${h.heartbeat.host} (${err instanceof Error ? err.message : String(err)})`);
        }
      }),
    );
    if (failed.length > 0)
      throw new PreconditionError(`cannot count live flows on host(s) ${failed.join(', ')}; fix them, or pass force to go ahead without knowing`);
    return sums;
  }

  /** Counters summed over every ready steering host; hosts that do not answer are named. */
  private async counters(): Promise<FleetCounters> {
    const out: FleetCounters = { services: new Map(), backends: new Map(), unreachable: [] };
    const add = (into: CounterSums, id: number, c: { packets: string; bytes: string; flows: string } | null) => {
      if (!c) return;
      const prev: SteeringCounter = into.get(id) ?? { packets: 0n, bytes: 0n, flows: 0n };
      into.set(id, { packets: prev.packets + BigInt(c.packets), bytes: prev.bytes + BigInt(c.bytes), flows: prev.flows + BigInt(c.flows) });
    };
    await Promise.all(
      this.steeringHosts().map(async (h) => {
        try {
          const r = await this.opts.agents.get(h.heartbeat.host, h.heartbeat.grpcAddress).steeringState();
          for (const s of r.services) add(out.services, s.id, s.counters);
          for (const b of r.backends) add(out.backends, b.id, b.counters);
        } catch {
          out.unreachable.push(h.heartbeat.host);
        }
      }),
    );
    out.unreachable.sort();
    return out;
  }

  /** The current generation first, then one message per new generation, until the client goes. */
  private watch(call: grpc.ServerWritableStream<WatchSteeringRequest__Output, RuleGeneration>): void {
    const send = (t: RuleTable, atMs: number) => call.write(this.generationToWire(t, atMs));
    send(this.opts.store.table(), Date.now());
    const stop = this.opts.store.subscribe(send);
    call.on('cancelled', stop);
    call.on('close', stop);
    call.on('error', stop);
  }

  private generationToWire(t: RuleTable, atMs: number): RuleGeneration {
    return {
      generation: t.generation,
      services: t.services.map((s: SteeringService) => serviceToWire(s)),
      atMs,
      hosts: this.opts.registry
        .list()
        .filter((h) => h.steeringGeneration !== undefined)
        .map((h) => ({ host: h.heartbeat.host, appliedGeneration: h.steeringGeneration ?? 0, ready: h.ready })),
    };
  }
}

function updateOp(req: Parameters<SteeringHandlers['UpdateService']>[0]['request']): SteeringOp {
  const service = serviceKeyFromWire(req.service);
  switch (req.change) {
    case 'addBackend': {
      const a = req.addBackend!;
      if (!a.host) throw new InvalidArgumentError('add_backend.host', 'add_backend.host is required: the host where the workload runs');
      return { op: 'add-backend', service, backend: backendKeyFromWire(a.backend, 'add_backend.backend'), weight: a.weight || 1, host: a.host };
    }
    case 'removeBackend':
      return { op: 'remove-backend', service, backend: backendKeyFromWire(req.removeBackend!.backend, 'remove_backend.backend'), force: req.force };
    case 'drainBackend':
      return { op: 'drain-backend', service, backend: backendKeyFromWire(req.drainBackend!.backend, 'drain_backend.backend') };
    case 'setWeight':
      return { op: 'set-weight', service, backend: backendKeyFromWire(req.setWeight!.backend, 'set_weight.backend'), weight: req.setWeight!.weight };
    default:
      throw new InvalidArgumentError('change', 'one change is required: add_backend, remove_backend, drain_backend or set_weight');
  }
}

/** Checked whether or not the caller waits: a request with a bad value changes nothing. */
function waitTimeout(w: WaitOptions__Output | null | undefined): number | undefined {
  const ms = w?.timeoutMs || DEFAULT_WAIT_MS;
  if (ms > MAX_WAIT_MS) throw new InvalidArgumentError('wait.timeout_ms', `wait.timeout_ms must be at most ${MAX_WAIT_MS}, got ${ms}`);
  return w?.wait ? ms : undefined;
}
