/**
 * A whole fleet on this machine: the helper topology (lab/topology.ts), a nats-server with
 * JetStream and the controller on the management host, one agent per host inside its namespace.
 * labDown removes exactly what labUp made, and works on a half-made lab.
 *
 * The root namespace gets one veth into the lab's switch (198.18.<i>.254), so that the demo and
 * tests, which run in the root namespace, reach the controller's gRPC and NATS as a real
 * operator's tools would: over the network. In the routed fabric that switch is the management
 * LAN behind the router, and the root namespace also gets a route to the lab's /24 through the
 * router (to reach the agents); both go away with the link.
 */
import { spawn } from 'node:child_process';
import { closeSync, copyFileSync, mkdirSync, openSync, readdirSync, rmdirSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { execCommand } from '../lib/exec.js';
import { REPO_ROOT } from '../lib/rpc.js';
import { ControllerApi } from '../controller/client.js';
import { parseEndpoint, type Endpoint } from '../lib/endpoint.js';
import { INSECURE, useSecurity, type Security } from '../lib/tls.js';
import { makeLabPki, type LabPki } from './lab-pki.js';
import { startWorkload } from './workload.js';
import { natsClusterNodes, natsClusterUrl, waitForJetStream } from './nats-cluster.js';
import { createTopology, destroyTopology, findFreeLabIndex, inNetns, labPrefix, type LabFabric, type LabHost, type LabTopology } from './topology.js';

export const NATS_PORT = 4222;
export const CONTROLLER_PORT = 50050;
export const AGENT_PORT = 50051;
/** Prometheus metrics (`--metrics`): the controller's on the management host, each agent's on its host. */
export const CONTROLLER_METRICS_PORT = 9460;
export const AGENT_METRICS_PORT = 9461;
const BPF_PIN_ROOT = '/sys/fs/bpf/godwit';

export interface Lab {
  topology: LabTopology;
  /** Logs, state folders and images of this lab. */
  dir: string;
  natsUrl: string;
  controllerAddress: string;
  agentAddress(host: string): string;
  /** http://ADDR:PORT/metrics of the controller, or of the agent on `host`. */
  metricsUrl(of: 'controller' | { agent: string }): string;
  host(name: string): LabHost;
  controller: ControllerApi;
  /**
   * The lab's CA and identity folders (lab/lab-pki.ts); undefined for a lab made with
   * `insecure`. Lab up makes this process the lab's admin client (lib/tls.ts useSecurity).
   */
  pki?: LabPki;
  /** What this process talks to the lab with: the admin client's TLS, or INSECURE. */
  security: Security;
  /** PIDs of the lab's own services, by name. */
  pids: Map<string, number>;
  /** Stops an agent (SIGKILL, as a crash would) and starts it again; held locks must survive. */
  restartAgent(host: string): Promise<void>;
  /** Kills a lab service by name ('controller', 'nats', 'agent-a'...) with SIGKILL, as a crash would. */
  crash(service: string): Promise<void>;
  /** Starts a lab service again as it was first started (after crash()); resolves once it listens. */
  restart(service: string): Promise<void>;
  /**
   * One more controller on the management host (`controller-<name>` in pids), at `port`: a
   * standby while another holds the leader lease. Resolves with its gRPC address once it listens.
   */
  addController(name: string, port: number): Promise<string>;
  down(): Promise<void>;
}

export interface LabOptions {
  hosts?: string[];
  index?: number;
  /** Extra flags for every agent, e.g. ['--no-checkpoint'] for a fleet that only steers. */
  agentFlags?: string[];
  /** 'bridge' (default): one L2 segment; 'routed': a /29 per host behind a router (lab/topology.ts). */
  fabric?: LabFabric;
  /** Extra flags for one host's agent, e.g. { b: ['--cpu-features', FILE] }. */
  hostAgentFlags?: Record<string, string[]>;
  /**
   * Give every host a folder of its own at `privateDir(lab)`, as real hosts have their own
   * disks: each agent runs in a mount namespace of its own with a tmpfs there, and so do the
   * workloads it starts (`godwit run`) and its CRIU. Only workloads started with `godwit run` can
   * then be moved (CRIU dumps a tree in its own mount namespace only).
   */
  privateFolders?: boolean;
  /** Extra flags for every controller, e.g. ['--lease-ms', '3000']. */
  controllerFlags?: string[];
  /** Run N clustered nats-servers (services nats-1..N) instead of one (lab/nats-cluster.ts). */
  natsCluster?: number;
  /**
   * Development and measurement only: every part with --insecure (plain gRPC and NATS, no
   * certificates, no authorization). Default: mutual TLS, authorization and NATS users.
   */
  insecure?: boolean;
}

/** The folder each host has its own copy of in a lab made with privateFolders. */
export function privateDir(lab: Pick<Lab, 'dir'>): string {
  return join(lab.dir, 'private');
}

export function labDir(index: number): string {
  return `/run/godwit/${labPrefix(index)}`;
}

export function rootLink(index: number): string {
  return `${labPrefix(index)}-mgmt`;
}

export function agentPinDir(index: number, host: string): string {
  return `${BPF_PIN_ROOT}/${labPrefix(index)}-${host}`;
}

export async function labUp(opts: LabOptions = {}): Promise<Lab> {
  const index = opts.index ?? (await findFreeLabIndex());
  const hosts = opts.hosts ?? ['a', 'b'];
  try {
    return await build(index, hosts, opts.fabric ?? 'bridge', opts.agentFlags ?? [], opts.hostAgentFlags ?? {}, opts.privateFolders === true, opts.insecure === true, opts.controllerFlags ?? [], opts.natsCluster);
  } catch (err) {
    await labDown(index);
    throw err;
  }
}

async function build(
  index: number,
  hostNames: string[],
  fabric: LabFabric,
  agentFlags: string[],
  hostAgentFlags: Record<string, string[]>,
  privateFolders: boolean,
  insecure: boolean,
  controllerFlags: string[],
  natsCluster?: number,
): Promise<Lab> {
  const topology = await createTopology({ index, hosts: hostNames, fabric });
  const dir = labDir(index);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  // Images and records in memory: the VM's disk makes each small-file write cost about a
  // millisecond, and an image holds about one file per connection.
  await execCommand('mount', ['-t', 'tmpfs', '-o', 'size=4g,mode=0700', `godwit-lab${index}`, dir]);
  mkdirSync(join(dir, 'logs'), { recursive: true });

  const ctl = topology.ctl;
  const mgmt = rootLink(index);
  await execCommand('ip', ['link', 'add', mgmt, 'type', 'veth', 'peer', 'name', 'mgmt', 'netns', ctl.netns]);
  await execCommand('ip', ['-n', ctl.netns, 'link', 'set', 'mgmt', 'master', 'br0', 'up']);
  await execCommand('ip', ['addr', 'add', topology.rootLinkAddress, 'dev', mgmt]);
  await execCommand('ip', ['link', 'set', mgmt, 'up']);
  for (const r of topology.rootRoutes) await execCommand('ip', ['route', 'add', r.to, 'via', r.via, 'dev', mgmt]);

  const pids = new Map<string, number>();
  /** How each service was started, and where it listens: restart() starts it the same way. */
  const starters = new Map<string, { again: () => void; port: { address: string; port: number } }>();
  const start = (name: string, host: LabHost, file: string, args: string[]) => {
    pids.set(name, startService(dir, name, host, file, args));
  };

  // Certificates in the lab's tmpfs, gone with it at lab down; keys 0600.
  const pki = insecure ? undefined : await makeLabPki(dir, hostNames, [ctl.address]);
  const securityFlags = (name: Parameters<LabPki['tlsDir']>[0]) => (pki ? ['--tls-dir', pki.tlsDir(name)] : ['--insecure']);
  /** A nats-server's own arguments: its config (TLS, users) or plain flags; a cluster member's config file of its own. */
  const natsArgs = (port: number, storeDir: string, member = '') => {
    if (!pki) return ['-a', ctl.address, '-p', String(port), '-js', '-sd', storeDir];
    const config = pki.writeNatsConfig({ host: ctl.address, port, storeDir });
    if (!member) return ['-c', config];
    const own = join(dir, `${member}.conf`);
    copyFileSync(config, own);
    return ['-c', own];
  };
  let natsUrl = `nats://${ctl.address}:${NATS_PORT}`;
  if (natsCluster) {
    const nodes = natsClusterNodes(ctl.address, dir, natsCluster, (port, storeDir, name) => natsArgs(port, storeDir, name));
    for (const n of nodes) {
      starters.set(n.name, { again: () => start(n.name, ctl, 'nats-server', n.args), port: { address: ctl.address, port: n.port } });
      start(n.name, ctl, 'nats-server', n.args);
    }
    for (const n of nodes) await waitForPort(ctl.address, n.port, 10_000, n.name);
    natsUrl = natsClusterUrl(ctl.address, nodes);
    await waitForJetStream(natsUrl, 60_000, pki ? pki.security('controller') : INSECURE);
  } else {
    mkdirSync(join(dir, 'nats'), { recursive: true });
    const args = natsArgs(NATS_PORT, join(dir, 'nats'));
    start('nats', ctl, 'nats-server', args);
    starters.set('nats', { again: () => start('nats', ctl, 'nats-server', args), port: { address: ctl.address, port: NATS_PORT } });
    await waitForPort(ctl.address, NATS_PORT, 10_000, 'nats-server');
  }

  const controllerAddress = `${ctl.address}:${CONTROLLER_PORT}`;
  const node = process.execPath;
  const startController = (name: string, address: string) =>
    start(name, ctl, node, [join(REPO_ROOT, 'dist', 'controller', 'main.js'), '--nats', natsUrl, '--listen', address, ...(name === 'controller' ? ['--metrics', `${ctl.address}:${CONTROLLER_METRICS_PORT}`] : []), ...securityFlags('controller'), ...controllerFlags]);
  startController('controller', controllerAddress);
  starters.set('controller', { again: () => startController('controller', controllerAddress), port: { address: ctl.address, port: CONTROLLER_PORT } });
  // The controller makes the KV buckets before it listens; agents may only read them (NATS
  // permissions, lib/nats-auth.ts), so they start once it is up. Its start took over 15 s on
  // this 2-core machine with two labs and other tenants' tests beside it.
  await waitForPort(ctl.address, CONTROLLER_PORT, 60_000, 'controller');

  const agentArgs = (h: LabHost) => [
    join(REPO_ROOT, 'dist', 'agent', 'main.js'),
    '--host', h.name,
    '--listen', `${h.address}:${AGENT_PORT}`,
    '--nats', natsUrl,
    '--metrics', `${h.address}:${AGENT_METRICS_PORT}`,
    '--iface', h.iface,
    '--state-dir', join(dir, 'hosts', h.name),
    '--pin-dir', agentPinDir(index, h.name),
    // `godwit run` output files: one folder for every host (they share this machine's
    // filesystem, so a moved workload finds its file where it left it), or each host's own with
    // private folders (the file then travels with the image).
    '--workload-dir', join(privateFolders ? privateDir({ dir }) : dir, 'workloads'),
    ...securityFlags(`agent-${h.name}`),
    ...agentFlags,
    ...(hostAgentFlags[h.name] ?? []),
  ];
  const privateFolder = privateDir({ dir });
  mkdirSync(privateFolder, { recursive: true });
  // With private folders: a mount namespace per agent (slave: the lab's own mounts still reach
  // it) and a tmpfs over the folder in it.
  const startAgent = (h: LabHost) =>
    privateFolders
      ? start(`agent-${h.name}`, h, 'unshare', [
          '--mount', '--propagation', 'slave', 'sh', '-c', 'mount -t tmpfs -o size=64m,mode=0755 godwit-private "$0" && exec "$@"', privateFolder, node, ...agentArgs(h),
        ])
      : start(`agent-${h.name}`, h, node, agentArgs(h));
  for (const h of topology.hosts) startAgent(h);
  for (const h of topology.hosts) starters.set(`agent-${h.name}`, { again: () => startAgent(h), port: { address: h.address, port: AGENT_PORT } });

  // This process, and the godwit CLIs it starts (GODWIT_TLS_DIR), act as the lab's admin client.
  const security = pki ? pki.security('client-admin') : INSECURE;
  useSecurity(security);
  if (pki) process.env.GODWIT_TLS_DIR = pki.tlsDir('client-admin');
  const controller = new ControllerApi(controllerAddress);
  // An agent's start (CRIU probe, lock and steering programs loaded and verified) took over 20 s
  // on this 2-core machine while other tenants ran 100-agent benchmarks beside it.
  await waitForHosts(controller, hostNames, 60_000);

  const host = (name: string) => {
    const h = topology.hosts.find((x) => x.name === name);
    if (!h) throw new Error(`lab has no host "${name}"`);
    return h;
  };
  return {
    topology,
    dir,
    natsUrl,
    controllerAddress,
    pki,
    security,
    agentAddress: (name) => `${host(name).address}:${AGENT_PORT}`,
    metricsUrl: (of) => (of === 'controller' ? `http://${ctl.address}:${CONTROLLER_METRICS_PORT}/metrics` : `http://${host(of.agent).address}:${AGENT_METRICS_PORT}/metrics`),
    host,
    controller,
    pids,
    async restartAgent(name) {
      const pid = pids.get(`agent-${name}`);
      if (pid) await stopPid(pid, 'SIGKILL');
      const restartedAtMs = Date.now();
      startAgent(host(name));
      await waitForPort(host(name).address, AGENT_PORT, 15_000, `agent ${name}`);
      // The port opens before the agent has installed its programs and joined the bus: ready
      // means the controller has heard its first heartbeat.
      await waitForHosts(controller, [name], 30_000, restartedAtMs);
    },
    async crash(service) {
      const pid = pids.get(service);
      if (!pid) throw new Error(`lab has no service "${service}"`);
      await stopPid(pid, 'SIGKILL');
      pids.delete(service);
    },
    async restart(service) {
      const s = starters.get(service);
      if (!s) throw new Error(`lab has no service "${service}" to restart`);
      const restartedAtMs = Date.now();
      s.again();
      // An agent's start took over 20 s on this loaded machine (see waitForHosts below).
      await waitForPort(s.port.address, s.port.port, 90_000, service);
      // An agent is ready once the controller has heard it (as in restartAgent).
      if (service.startsWith('agent-')) await waitForHosts(controller, [service.slice('agent-'.length)], 60_000, restartedAtMs);
    },
    async addController(name, port) {
      const address = `${ctl.address}:${port}`;
      const service = `controller-${name}`;
      starters.set(service, { again: () => startController(service, address), port: { address: ctl.address, port } });
      startController(service, address);
      await waitForPort(ctl.address, port, 30_000, service);
      return address;
    },
    async down() {
      controller.close();
      for (const pid of pids.values()) await stopPid(pid, 'SIGTERM');
      await labDown(index);
    },
  };
}

/**
 * The operator's part of placing a workload: its own address (the lab's workload address
 * `addressIndex`) on its first host, then the echo server bound to it there. In the routed
 * fabric the router also gets the address's /32 route to that host (a migration does not move
 * that route yet).
 */
export async function startLabWorkload(
  lab: Lab,
  hostName: string,
  port: number,
  addressIndex = 0,
  /** More echo-server arguments (outbound mode: outboundWorkloadArgs in lab/outbound.ts). */
  args: readonly string[] = [],
  /** timeoutMs: how long it may take to listen (a workload that fills memory first takes longer). */
  opts: { timeoutMs?: number } = {},
): Promise<{ pid: number; endpoint: Endpoint }> {
  const host = lab.host(hostName);
  const endpoint = parseEndpoint(`tcp://${lab.topology.workloadAddress(addressIndex)}:${port}`);
  await execCommand('ip', ['-n', host.netns, 'addr', 'add', `${endpoint.address}/32`, 'dev', host.iface]);
  await lab.topology.routeWorkloadAddress(endpoint.address, hostName);
  const { pid } = await startWorkload(host, endpoint.address, port, { args, ...opts });
  return { pid, endpoint };
}

/** Removes everything lab `index` made: processes in its namespaces, namespaces, links, pins, files. */
export async function labDown(index: number): Promise<void> {
  await destroyTopology(index);
  await execCommand('ip', ['link', 'del', rootLink(index)], { allowFailure: true });
  const prefix = `${labPrefix(index)}-`;
  try {
    for (const d of readdirSync(BPF_PIN_ROOT)) if (d.startsWith(prefix)) rmSync(join(BPF_PIN_ROOT, d), { recursive: true, force: true });
    rmdirSync(BPF_PIN_ROOT); // the last lab out removes the folder too; another lab's pins keep it (ENOTEMPTY)
  } catch {
    // No pins at all, or another lab's.
  }
  const dir = labDir(index);
  for (let i = 0; i < 5 && (await execCommand('mountpoint', ['-q', dir], { allowFailure: true })).exitCode === 0; i++) {
    await execCommand('umount', [dir], { allowFailure: true });
  }
  rmSync(dir, { recursive: true, force: true });
}

/** Starts a long-running service inside a host's namespace, output to the lab's log folder. */
function startService(dir: string, name: string, host: LabHost, file: string, args: string[]): number {
  const [cmd, cmdArgs] = inNetns(host, file, args);
  const out = openSync(join(dir, 'logs', `${name}.log`), 'a');
  const child = spawn(cmd, cmdArgs, { detached: true, stdio: ['ignore', out, out] });
  closeSync(out);
  child.unref();
  if (child.pid === undefined) throw new Error(`could not start ${name}`);
  return child.pid;
}

async function stopPid(pid: number, signal: NodeJS.Signals): Promise<void> {
  try {
    process.kill(pid, signal);
  } catch {
    return;
  }
  for (let i = 0; i < 50; i++) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await sleep(50);
  }
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone
  }
}

/** Resolves once something accepts TCP connections on host:port. */
export async function waitForPort(host: string, port: number, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host, port, timeout: 500 });
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
      s.once('timeout', () => (s.destroy(), resolve(false)));
    });
    if (ok) return;
    await sleep(100);
  }
  throw new Error(`${what} did not listen on ${host}:${port} within ${timeoutMs} ms (see the lab's logs)`);
}

/** Waits until every named host is ready, with a heartbeat heard at or after `sinceMs` when given. */
async function waitForHosts(controller: ControllerApi, names: string[], timeoutMs: number, sinceMs = 0): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let seen: string[] = [];
  while (Date.now() < deadline) {
    const r = await controller.listHosts().catch(() => undefined);
    seen = (r?.hosts ?? []).filter((h) => h.ready && h.lastHeartbeatMs >= sinceMs).map((h) => h.name);
    if (names.every((n) => seen.includes(n))) return;
    await sleep(200);
  }
  throw new Error(`agents not registered within ${timeoutMs} ms: want ${names.join(', ')}, have ${seen.join(', ') || 'none'}`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
