/** godwit-controller: the one place that decides. Serves the controller API; agents register over NATS. */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { Command } from 'commander';
import { CONTROLLERS_BUCKET, DEFAULT_LEADER_LEASE_MS, LeaderLease, type LeaderRecord } from './leader.js';
import { resumeUnfinished } from './resume.js';
import { Bus } from '../lib/bus.js';
import { createLogger } from '../lib/log.js';
import { addHealthAndReflection } from '../lib/grpc-extras.js';
import { serveMetrics, type MetricsEndpoint } from '../lib/metrics-http.js';
import { ControllerService as ControllerServiceDef, PROTO_PACKAGES, SteeringService as SteeringServiceDef, bindServer, newServer } from '../lib/rpc.js';
import { withSecurityOptions } from '../lib/security-flags.js';
import { securityFromFlags, type SecurityFlags } from '../lib/tls.js';
import { exitOnSignals } from '../lib/shutdown.js';
import { CORDONS_BUCKET, DRAINS_BUCKET, MIGRATIONS_BUCKET, STEERING_BUCKET, STEERING_KV, WORKLOADS_BUCKET } from '../lib/subjects.js';
import { MigrationCancels } from './cancel.js';
import { CordonStore, type CordonRecord } from './cordon.js';
import { DrainRunner } from './drain.js';
import { DrainStore, type DrainState } from './drain-store.js';
import { FleetService } from './fleet-service.js';
import { MigrationClaims } from './migration-claims.js';
import { WorkloadRegistry, type WorkloadRecord } from './workload-registry.js';
import { WorkloadService } from './workload-service.js';
import { AgentPool } from './agent-client.js';
import type { MigrationState } from './migration-machine.js';
import { MigrationStore } from './migration-store.js';
import { DEFAULT_HOST_WAIT_MS, Orchestrator } from './orchestrator.js';
import { controllerMetrics } from './metrics.js';
import { NatsApi } from './nats-api.js';
import { HostRegistry } from './registry.js';
import { ControllerService } from './service.js';
import { SteeringController } from './steering-service.js';
import { SteerStep } from './steer-step.js';
import { SteeringStore } from './steering-store.js';
import type { RuleTable } from './steering-table.js';

/** How often a standby reloads the migrations it serves reads of. */
const STANDBY_RELOAD_MS = 1_000;

const program = withSecurityOptions(new Command())
  .name('godwit-controller')
  .requiredOption('--nats <url>', 'NATS server URL (JetStream enabled)')
  .option('--listen <addr...>', 'gRPC addresses to serve on: host:port or unix:/path', ['127.0.0.1:50050'])
  .option('--metrics <addr>', 'serve Prometheus metrics on http://HOST:PORT/metrics')
  .option('--advertise <addr>', 'the gRPC address a standby names when it refuses a write (default: the first --listen)')
  .option('--id <name>', 'this controller\'s name in the leader lease and the migrations it drives (default: host name, PID and a random tag)')
  .option('--lease-ms <ms>', 'leader lease: a standby takes over this long after the leader stopped renewing', (v) => Number(v), DEFAULT_LEADER_LEASE_MS)
  .option('--host-wait-ms <ms>', 'how long a migration waits for a host whose agent is gone before the phase fails (a rollback that cannot reach a host then ends in NEEDS_ATTENTION)', (v) => Number(v), DEFAULT_HOST_WAIT_MS);

async function main() {
  const o = program.parse().opts<{ nats: string; listen: string[]; metrics?: string; advertise?: string; id?: string; leaseMs: number; hostWaitMs: number } & SecurityFlags>();
  if (!Number.isInteger(o.hostWaitMs) || o.hostWaitMs < 0) program.error(`--host-wait-ms ${o.hostWaitMs}: give a whole number of milliseconds, 0 or more`);
  const controllerId = o.id ?? `${hostname()}-${process.pid}-${randomBytes(2).toString('hex')}`;
  const log = createLogger('controller');
  const security = securityFromFlags(o, log);
  if (security.kind === 'tls' && security.identity.role !== 'controller') program.error('the certificate is not a controller\'s: issue one with `godwit certs issue --role controller`');
  const bus = await Bus.connect({ servers: o.nats, name: 'godwit-controller' });
  await bus.ensureEventStream();
  const store = new MigrationStore(await bus.kv<MigrationState>(MIGRATIONS_BUCKET));
  await store.load();
  const registry = new HostRegistry();
  registry.start(bus);
  const lease: LeaderLease = new LeaderLease({
    kv: await bus.kv<LeaderRecord>(CONTROLLERS_BUCKET),
    id: controllerId,
    address: o.advertise ?? o.listen[0],
    leaseMs: o.leaseMs,
    log,
    // Migrations first: a drain an earlier leader left running follows its migrations to their end.
    onAcquired: async (): Promise<void> => {
      await resumeUnfinished(store, orchestrator, log, (m) => m.request.workloadName && workloads.follow(m, m.request.workloadName));
      await runner.recover().catch((err: unknown) => log.error({ err: String(err) }, 'could not drive on the drains an earlier leader left running'));
    },
  });
  // Every command to an agent carries the lease's fencing token.
  const agents = new AgentPool((): string => lease.token());
  const steeringStore = new SteeringStore(await bus.kv<RuleTable>(STEERING_BUCKET, STEERING_KV), log);
  await steeringStore.start();
  const steer = new SteerStep({ store: steeringStore, registry, log });
  const cancels = new MigrationCancels();
  const orchestrator = new Orchestrator({ store, registry, agents, bus, log, steer, cancels, controllerId, mayAct: () => lease.isLeader(), hostWaitMs: o.hostWaitMs });
  const workloadRegistry = new WorkloadRegistry(await bus.kv<WorkloadRecord>(WORKLOADS_BUCKET));
  await workloadRegistry.load();
  const workloads = new WorkloadService({ workloads: workloadRegistry, hosts: registry, agents, store, orchestrator, steer, log });
  // Fleet operations: cordons and drains kept in KV (a restarted controller knows them).
  const cordons = new CordonStore(await bus.kv<CordonRecord>(CORDONS_BUCKET), bus);
  await cordons.load();
  const drains = new DrainStore(await bus.kv<DrainState>(DRAINS_BUCKET), bus, log);
  await drains.load();
  let service: ControllerService | undefined;
  const runner = new DrainRunner({ drains, cordons, workloads: workloadRegistry, hosts: registry, migrations: store, orchestrator, migrate: (r, drainId) => service!.migrate(r, drainId), log });
  const fleet = new FleetService({ hosts: registry, cordons, drains, runner, cancels, migrations: store, workloadRegistry, workloads, log, leader: lease });
  service = new ControllerService({ registry, agents, orchestrator, store, log, workloads, fleet, claims: new MigrationClaims(), cordons, cancels, leader: lease });
  const steering = new SteeringController({ store: steeringStore, registry, agents, log, leader: lease });

  // One set of handlers for gRPC and the NATS request API: one validation path.
  const controllerHandlers = service.handlers();
  const steeringHandlers = steering.handlers();
  const server = newServer({}, log);
  server.addService(ControllerServiceDef, controllerHandlers);
  server.addService(SteeringServiceDef, steeringHandlers);
  const health = addHealthAndReflection(server, ['godwit/v1/controller.proto', 'godwit/v1/steering.proto']);
  await bindServer(server, o.listen);
  const natsApi = new NatsApi(bus, log);
  natsApi.start([
    { definition: ControllerServiceDef, handlers: controllerHandlers, types: PROTO_PACKAGES.controller },
    { definition: SteeringServiceDef, handlers: steeringHandlers, types: PROTO_PACKAGES.steering },
  ]);
  const metrics = controllerMetrics({ bus, store, registry });
  let metricsEndpoint: MetricsEndpoint | undefined;
  if (o.metrics) metricsEndpoint = await serveMetrics(metrics.registry, o.metrics);

  // Leader or standby from here on; the leader resumes what an earlier one left unfinished.
  await lease.start();
  // A standby serves reads from KV as the leader records it.
  const standbyReads = setInterval(() => {
    if (!lease.isLeader()) store.load().catch((err: unknown) => log.debug({ err: String(err) }, 'standby could not reload migrations'));
  }, STANDBY_RELOAD_MS);

  log.info({ listen: o.listen, nats: o.nats, metrics: o.metrics, controller: controllerId, leader: lease.isLeader() }, 'controller ready');

  exitOnSignals(
    [
      { name: 'leader lease', run: () => (clearInterval(standbyReads), lease.stop()) },
      { name: 'health', run: () => health.notServing() },
      { name: 'nats request api', run: () => natsApi.stop() },
      { name: 'metrics', run: async () => (metrics.stop(), await metricsEndpoint?.close()) },
      { name: 'host registry', run: () => registry.stop() },
      { name: 'steering table watch', run: () => steeringStore.stop() },
      { name: 'grpc server', run: () => server.forceShutdown() },
      { name: 'agent channels', run: () => agents.close() },
      { name: 'nats', run: () => bus.close() },
    ],
    { log },
  );
}

main().catch((err) => {
  createLogger('controller').fatal({ err }, 'controller failed to start');
  process.exit(1);
});
