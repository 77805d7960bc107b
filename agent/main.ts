/**
 * godwit-agent: one per host. Runs inside the host's network namespace (in the lab it is started
 * with `nsenter --net=/run/netns/<host>`), serves the agent API and heartbeats on NATS.
 */
import { mkdirSync } from 'node:fs';
import { freemem, release } from 'node:os';
import { join } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { Bus } from '../lib/bus.js';
import { execCommand } from '../lib/exec.js';
import { createLogger } from '../lib/log.js';
import { addHealthAndReflection } from '../lib/grpc-extras.js';
import { serveMetrics, type MetricsEndpoint } from '../lib/metrics-http.js';
import { AgentService as AgentServiceDef, REPO_ROOT, bindServer, newServer } from '../lib/rpc.js';
import { withSecurityOptions } from '../lib/security-flags.js';
import { securityFromFlags, type SecurityFlags } from '../lib/tls.js';
import { exitOnSignals } from '../lib/shutdown.js';
import { isIPv4 } from 'node:net';
import { HOST_NAME, STEERING_BUCKET, STEERING_KV, SUBJECTS } from '../lib/subjects.js';
import { startHeartbeat } from './heartbeat.js';
import { DEFAULT_CRIU_LOG_LEVEL, parseLogLevel } from './linux/criu.js';
import { LinuxPlatform } from './linux/platform.js';
import { agentMetrics } from './metrics.js';
import type { HostPlatform } from './platform.js';
import { AgentService } from './service.js';
import type { SteeringTable } from './steering.js';
import { SteeringSync } from './steering-sync.js';

const SWEEP_INTERVAL_MS = 1_000;

const program = withSecurityOptions(new Command())
  .name('godwit-agent')
  .requiredOption('--host <name>', 'this host\'s name in the fleet')
  .requiredOption('--listen <addr>', 'gRPC address to serve on, host:port (reachable by the controller and peer agents)')
  .requiredOption('--nats <url>', 'NATS server URL')
  .option('--iface <name>', 'interface the lock program attaches to', 'eth0')
  .option('--state-dir <dir>', 'where images and migration records live', '/var/lib/godwit')
  .option('--criu <path>', 'CRIU 4.2+ command', process.env.GODWIT_CRIU ?? '/opt/godwit/criu/bin/criu')
  .option('--criu-log-level <n>', 'CRIU log verbosity, 0-4 (CRIU\'s -v): 4 writes a line per socket and page range inside the freeze', criuLogLevel, DEFAULT_CRIU_LOG_LEVEL)
  .option('--bpf-object <path>', 'compiled lock program', join(REPO_ROOT, 'build', 'bpf', 'lock.o'))
  .option('--pin-dir <dir>', 'bpffs folder for this host\'s pinned program and maps (default /sys/fs/bpf/godwit/<host>)')
  .option('--advertise <addr>', 'gRPC address peers should use (default: --listen)')
  .option('--data-address <ipv4>', 'IPv4 where other hosts reach this host\'s data plane (default: the address of --listen)')
  .option('--workload-dir <dir>', '`godwit run` workloads\' output files: the same path on every host', '/var/lib/godwit/workloads')
  .option('--init <path>', 'the init `godwit run` starts workloads under', join(REPO_ROOT, 'build', 'godwit-init'))
  .option('--cpu-features <file>', 'report the CPU feature flags in this file instead of /proc/cpuinfo\'s (tests; pinning a fleet to a baseline)')
  .option('--no-checkpoint', 'this host only steers packets: no CRIU probe, no lock program, no lock sweeper')
  .option('--metrics <addr>', 'serve Prometheus metrics on http://HOST:PORT/metrics')
  .option('--assume-no-userfaultfd', 'for tests: report that this host has no userfaultfd, so post-copy migrations to it are refused');

function criuLogLevel(text: string): number {
  try {
    return parseLogLevel(text);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

async function main() {
  const o = program.parse().opts<{
    host: string; listen: string; nats: string; iface: string; stateDir: string; criu: string;
    bpfObject: string; pinDir?: string; advertise?: string; dataAddress?: string; checkpoint: boolean; criuLogLevel: number; assumeNoUserfaultfd?: boolean;
    workloadDir: string; init: string; cpuFeatures?: string; metrics?: string;
  } & SecurityFlags>();
  if (!HOST_NAME.test(o.host)) program.error(`--host "${o.host}" must match ${HOST_NAME}`);
  const log = createLogger('agent').child({ host: o.host });
  const security = securityFromFlags(o, log);
  if (security.kind === 'tls' && (security.identity.role !== 'agent' || security.identity.host !== o.host)) {
    program.error(`the certificate is not agent ${o.host}'s (it names ${JSON.stringify(security.identity)}): issue one with \`godwit certs issue --role agent --host ${o.host}\``);
  }
  mkdirSync(o.stateDir, { recursive: true });
  const dataAddress = o.dataAddress ?? o.listen.replace(/:\d+$/, '');
  if (!isIPv4(dataAddress)) program.error(`--data-address "${dataAddress}" must be an IPv4 address (give it when --listen is not one)`);

  const linux = new LinuxPlatform({
    exec: execCommand,
    iface: o.iface,
    criuPath: o.criu,
    criuLogLevel: o.criuLogLevel,
    bpfObject: o.bpfObject,
    pinDir: o.pinDir ?? `/sys/fs/bpf/godwit/${o.host}`,
    dataAddress,
    assumeNoUserfaultfd: o.assumeNoUserfaultfd === true,
    log,
    initPath: o.init,
    cpuFeaturesFile: o.cpuFeatures,
  });
  // Typed as the interface: the steering data plane is optional for a host driver.
  const platform: HostPlatform = linux;
  let sweeper: NodeJS.Timeout | undefined;
  if (o.checkpoint) {
    await linux.start();
    sweeper = setInterval(() => {
      linux.sweep().then(
        (n) => n > 0 && log.warn({ swept: n }, 'lock leases ran out; entries removed'),
        (err: Error) => log.error({ err }, 'lock sweep failed'),
      );
    }, SWEEP_INTERVAL_MS);
  }

  // A host whose steering cannot load still migrates workloads; it then has no steering data
  // plane, follows no rule table, and ListHosts shows it as not steering.
  try {
    await linux.startSteering();
  } catch (err) {
    log.error({ err }, 'steering data plane unavailable on this host; rule generations are not applied here');
  }

  const service = new AgentService({ host: o.host, platform, stateDir: o.stateDir, log, workloadDir: o.workloadDir });
  // Before serving: no step of this agent runs yet, so every folder an ended migration left is stale.
  await service.sweepImages();
  const server = newServer({}, log);
  server.addService(AgentServiceDef, service.handlers());
  const health = addHealthAndReflection(server, ['godwit/v1/agent.proto']);
  await bindServer(server, [o.listen]);

  const bus = await Bus.connect({ servers: o.nats, name: `godwit-agent-${o.host}` });
  const probe = o.checkpoint ? await platform.probe() : { criuVersion: 'disabled (--no-checkpoint)', criuOk: false };
  let sync: SteeringSync | undefined;
  if (platform.steering) {
    sync = new SteeringSync({
      host: o.host,
      dataplane: platform.steering,
      kv: await bus.kv<SteeringTable>(STEERING_BUCKET, STEERING_KV),
      ack: (ack) => bus.publish(SUBJECTS.steeringAck(o.host), ack),
      log,
    });
    await sync.start();
  } else {
    log.warn('no steering data plane on this host: steering rules are not applied here');
  }
  const stopHeartbeat = startHeartbeat(
    bus,
    { host: o.host, grpcAddress: o.advertise ?? o.listen, criuVersion: probe.criuVersion, kernel: release(), startedAtMs: Date.now(), dataAddress },
    () => ({ freeMemoryBytes: freemem(), ...(sync ? { steeringGeneration: sync.generation() } : {}) }),
  );
  const metrics = agentMetrics({ host: o.host, platform, bus, steeringGeneration: () => sync?.generation() });
  let metricsEndpoint: MetricsEndpoint | undefined;
  if (o.metrics) metricsEndpoint = await serveMetrics(metrics.registry, o.metrics);
  log.info({ listen: o.listen, criu: probe.criuVersion, criuOk: probe.criuOk, steering: Boolean(sync), metrics: o.metrics }, 'agent ready');

  exitOnSignals(
    [
      { name: 'health', run: () => health.notServing() },
      { name: 'heartbeat', run: stopHeartbeat },
      { name: 'metrics', run: async () => (metrics.stop(), await metricsEndpoint?.close()) },
      { name: 'steering sync', run: () => sync?.stop() },
      { name: 'lock sweeper', run: () => clearInterval(sweeper) },
      { name: 'grpc server', run: () => server.forceShutdown() },
      { name: 'peer channels', run: () => service.close() },
      { name: 'nats', run: () => bus.close() },
    ],
    { log, message: 'shutting down; held locks stay until their leases run out' },
  );
}

main().catch((err) => {
  createLogger('agent').fatal({ err }, 'agent failed to start');
  process.exit(1);
});

