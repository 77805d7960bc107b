/**
 * The controller's side of `godwit run`, `godwit logs` and `godwit migrate --workload`: starting
 * a workload through its host's agent and registering it, resolving a name into a migration
 * request, recording where each migration left it, and fetching logs from the hosts.
 */
import { basename } from 'node:path';
import { status } from '@grpc/grpc-js';
import type { MigrateRequest__Output } from '../proto/gen/godwit/v1/MigrateRequest.js';
import type { RunRequest__Output } from '../proto/gen/godwit/v1/RunRequest.js';
import type { WorkloadInfo } from '../proto/gen/godwit/v1/WorkloadInfo.js';
import type { LogFile } from '../proto/gen/godwit/v1/LogFile.js';
import { AlreadyExistsError, InvalidArgumentError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import { HOST_NAME } from '../lib/subjects.js';
import { commandFromWire, endpointToWire, endpointsFromWire } from '../lib/wire.js';
import type { AgentPool } from './agent-client.js';
import type { MigrationState } from './migration-machine.js';
import type { MigrationStore } from './migration-store.js';
import type { Orchestrator } from './orchestrator.js';
import { detail } from './phases.js';
import type { HostRegistry } from './registry.js';
import type { SteerStep } from './steer-step.js';
import { WorkloadNotFoundError, type WorkloadRecord, type WorkloadRegistry } from './workload-registry.js';

/** As the agent checks it (agent/run-workload.ts): names become file names and KV keys. */
const WORKLOAD_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

export interface WorkloadServiceOptions {
  workloads: WorkloadRegistry;
  hosts: HostRegistry;
  agents: AgentPool;
  store: MigrationStore;
  orchestrator: Orchestrator;
  /** Steers a started workload's addresses to its host. */
  steer: SteerStep;
  log: Logger;
}

export class WorkloadService {
  constructor(private readonly opts: WorkloadServiceOptions) {}

  async run(req: RunRequest__Output): Promise<WorkloadInfo> {
    const { workloads, hosts, agents, log } = this.opts;
    if (!req.host) throw new InvalidArgumentError('host', 'host is required: where the workload starts');
    if (!HOST_NAME.test(req.host)) throw new InvalidArgumentError('host', `host "${req.host}" is not a valid host name (${HOST_NAME})`);
    commandFromWire(req.command, req.cwd, req.user);
    const name = req.name || basename(req.command[0]);
    if (!WORKLOAD_NAME.test(name)) throw new InvalidArgumentError('name', `name "${name}" must be 1-63 of [A-Za-z0-9_.-], starting with a letter or digit`);
    const previous = workloads.get(name);
    if (previous && (await this.stillRuns(previous)))
      throw new AlreadyExistsError(`a workload named "${name}" runs already (pid ${previous.pid} on host "${previous.host}"); pick another --name`);
    const endpoints = endpointsFromWire(req.endpoints);
    const h = hosts.ready(req.host).heartbeat;
    const r = await agents.get(h.host, h.grpcAddress).runWorkload({ name, user: req.user, endpoints: endpoints.map(endpointToWire), command: req.command, cwd: req.cwd });
    const now = Date.now();
    const record: WorkloadRecord = { name, host: h.host, pid: r.pid, endpoints, command: req.command, user: req.user, outputPath: r.outputPath, startedAtMs: now, updatedAtMs: now };
    await (previous ? workloads.replace(record) : workloads.register(record));
    // An address that a migration once moved elsewhere would still be steered there.
    const generation = await this.opts.steer.placeStarted(endpoints.map((e) => e.address), h.host).catch((err: unknown) => {
      log.error({ workload: name, err: detail(err) }, 'could not steer the workload\'s addresses to its host');
      return 0;
    });
    log.info({ workload: name, host: h.host, pid: r.pid, steeringGeneration: generation }, 'workload started');
    return toWire(record);
  }

  /** A registered workload's process still exists where it was left (an unreachable host counts as yes). */
  private async stillRuns(w: WorkloadRecord): Promise<boolean> {
    try {
      await this.agent(w.host).inspectWorkload({ pid: w.pid, endpoints: w.endpoints });
      return true;
    } catch (err) {
      return !(typeof err === 'object' && err !== null && (err as { code?: unknown }).code === status.NOT_FOUND);
    }
  }

  list(): WorkloadInfo[] {
    return this.opts.workloads.list().map(toWire);
  }

  /**
   * A Migrate request that names a workload, completed from the registry: its host is the
   * source, its PID and endpoints the workload's. Fields the request gives must agree.
   */
  resolve(req: MigrateRequest__Output): MigrateRequest__Output {
    if (!req.workloadName) return req;
    const w = this.opts.workloads.find(req.workloadName);
    if (req.sourceHost && req.sourceHost !== w.host)
      throw new InvalidArgumentError('source_host', `workload "${w.name}" runs on host "${w.host}", not "${req.sourceHost}"; leave source_host out`);
    if (req.workload && req.workload.pid && req.workload.pid !== w.pid)
      throw new InvalidArgumentError('workload.pid', `workload "${w.name}" is pid ${w.pid} on "${w.host}", not ${req.workload.pid}; leave the pid out`);
    const registered = w.endpoints.map((e) => ({ protocol: e.proto === 'tcp' ? ('TCP' as const) : ('UDP' as const), address: e.address, port: e.port }));
    const endpoints = req.workload && req.workload.endpoints.length > 0 ? req.workload.endpoints : registered;
    return { ...req, sourceHost: w.host, workload: { pid: w.pid, endpoints } };
  }

  /** The registered workload a migration moves, if any: named, or found by its host and PID. */
  nameOf(req: { workloadName?: string; sourceHost: string; workload: { pid: number } }): string | undefined {
    return req.workloadName || this.opts.workloads.findByPid(req.sourceHost, req.workload.pid)?.name;
  }

  /** Records where the migration leaves the workload once it ends. */
  follow(m: MigrationState, name: string): void {
    const { orchestrator, workloads, log } = this.opts;
    const stop = orchestrator.watch(m.id, (e) => {
      const s = e.migration;
      if (s.phase !== 'DONE' && s.phase !== 'FAILED') return;
      if (e.phase !== 'DONE' && e.phase !== 'FAILED') return;
      stop();
      // DONE: on the target. FAILED after a rollback that restored it: on the source, as a new process.
      const to = s.phase === 'DONE' ? { host: s.request.targetHost, pid: s.restoredPid } : { host: s.request.sourceHost, pid: s.restoredPid };
      if (!to.pid) return;
      workloads.moved(name, to.host, to.pid).catch((err: unknown) => log.error({ workload: name, migrationId: s.id, err: detail(err) }, 'could not record where the workload runs'));
    });
  }

  /** A workload's output (from the host it runs on), or a migration's CRIU logs from both hosts. */
  async logs(name: string, maxBytes: number): Promise<LogFile[]> {
    const { workloads, store } = this.opts;
    if (!name) throw new InvalidArgumentError('name', 'name is required: a workload name or a migration id');
    const m = store.get(name);
    if (m) return this.migrationLogs(m);
    const w = workloads.get(name);
    if (!w) throw new WorkloadNotFoundError(name, workloads.list().map((x) => x.name));
    const r = await this.agent(w.host).workloadOutput(w.name, maxBytes);
    return [{ host: w.host, name: 'output', text: r.output.toString('utf8'), error: '' }];
  }

  private async migrationLogs(m: MigrationState): Promise<LogFile[]> {
    const out: LogFile[] = [];
    for (const host of [m.request.sourceHost, m.request.targetHost]) {
      try {
        const r = await this.agent(host).migrationLogs(m.id);
        for (const l of r.logs) out.push({ host, name: l.name, text: l.text, error: '' });
      } catch (err) {
        out.push({ host, name: '', text: '', error: detail(err) });
      }
    }
    return out;
  }

  private agent(host: string) {
    const h = this.opts.hosts.ready(host).heartbeat;
    return this.opts.agents.get(h.host, h.grpcAddress);
  }
}

function toWire(w: WorkloadRecord): WorkloadInfo {
  return {
    name: w.name,
    host: w.host,
    pid: w.pid,
    endpoints: w.endpoints.map(endpointToWire),
    command: w.command,
    user: w.user,
    startedAtMs: w.startedAtMs,
    updatedAtMs: w.updatedAtMs,
    outputPath: w.outputPath,
  };
}
