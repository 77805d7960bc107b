/** godwit-controller: the one place that decides. Serves the controller API; agents register over NATS. */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { Command } from 'commander';
import { CONTROLLERS_BUCKET, DEFAULT_LEADER_LEASE_MS, LeaderLease, type LeaderRecord } from './leader.js';
import { resumeUnfinished } from './resume.js';
import { Bus } from '../lib/bus.js';
import { createLogger } from '../lib/log.js';
import { ControllerService as ControllerServiceDef, SteeringService as SteeringServiceDef, bindServer, newServer } from '../lib/rpc.js';
import { withSecurityOptions } from '../lib/security-flags.js';
import { securityFromFlags, type SecurityFlags } from '../lib/tls.js';
import { exitOnSignals } from '../lib/shutdown.js';
import { MIGRATIONS_BUCKET, STEERING_BUCKET, STEERING_KV, WORKLOADS_BUCKET } from '../lib/subjects.js';
import { WorkloadRegistry, type WorkloadRecord } from './workload-registry.js';
import { WorkloadService } from './workload-service.js';
import { AgentPool } from './agent-client.js';
import type { MigrationState } from './migration-machine.js';
import { MigrationStore } from './migration-store.js';
import { Orchestrator } from './orchestrator.js';
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
  .option('--advertise <addr>', 'the gRPC address a standby names when it refuses a write (default: the first --listen)')
  .option('--id <name>', 'this controller\'s name in the leader lease and the migrations it drives (default: host name, PID and a random tag)')
  .option('--lease-ms <ms>', 'leader lease: a standby takes over this long after the leader stopped renewing', (v) => Number(v), DEFAULT_LEADER_LEASE_MS);

async function main() {
  const o = program.parse().opts<{ nats: string; listen: string[]; advertise?: string; id?: string; leaseMs: number } & SecurityFlags>();
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
    onAcquired: (): Promise<void> => resumeUnfinished(store, orchestrator, log, (m) => m.request.workloadName && workloads.follow(m, m.request.workloadName)).then(() => undefined),
  });
  // Every command to an agent carries the lease's fencing token.
  const agents = new AgentPool((): string => lease.token());
  const steeringStore = new SteeringStore(await bus.kv<RuleTable>(STEERING_BUCKET, STEERING_KV), log);
  await steeringStore.start();
  const steer = new SteerStep({ store: steeringStore, registry, log });
  const orchestrator = new Orchestrator({ store, registry, agents, bus, log, steer, controllerId, mayAct: () => lease.isLeader() });
  const workloadRegistry = new WorkloadRegistry(await bus.kv<WorkloadRecord>(WORKLOADS_BUCKET));
  await workloadRegistry.load();
  const workloads = new WorkloadService({ workloads: workloadRegistry, hosts: registry, agents, store, orchestrator, steer, log });
  const service = new ControllerService({ registry, agents, orchestrator, store, log, workloads, leader: lease });
  const steering = new SteeringController({ store: steeringStore, registry, agents, log });

  const server = newServer(log);
  server.addService(ControllerServiceDef, service.handlers());
  server.addService(SteeringServiceDef, steering.handlers());
  await bindServer(server, o.listen);
  // Leader or standby from here on; the leader resumes what an earlier one left unfinished.
  await lease.start();
  // A standby serves reads from KV as the leader records it.
  const standbyReads = setInterval(() => {
    if (!lease.isLeader()) store.load().catch((err: unknown) => log.debug({ err: String(err) }, 'standby could not reload migrations'));
  }, STANDBY_RELOAD_MS);
  log.info({ listen: o.listen, nats: o.nats, controller: controllerId, leader: lease.isLeader() }, 'controller ready');

  exitOnSignals(
    [
      { name: 'leader lease', run: () => (clearInterval(standbyReads), lease.stop()) },
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
