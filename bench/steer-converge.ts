/**
 * `npm run bench -- steer-converge`: how long a steering rule change takes to reach every host.
 *
 * For each fleet size N (--agents 10,50,100): N real agent processes, each in its own network
 * namespace with the steering data plane installed on its interface (`--no-checkpoint`: no CRIU,
 * no lock program), a real nats-server and the controller in a management namespace that bridges
 * them. After a warm-up, M rule changes (--changes, default 20) go through the Steering API one
 * after another, each waiting until the fleet holds it; for each change and each agent the
 * latency is from the controller accepting the change (its KV write acknowledged, the response's
 * accepted_at_ms) to the agent's ack (sent once its kernel maps hold the generation, stamped by
 * the agent). All processes share this machine's clock. Reported per N: p50, p99 and max over
 * every (change, agent) ack, the per-change convergence (the slowest agent), and the agents' own
 * apply time. Every ack's latency also goes to steer-converge-acks.jsonl, for a closer look.
 *
 * The fleet is built like the lab (lab index claimed by its namespaces `godwit<i>-*`, removed
 * with labDown, also on failure or Ctrl-C): hosts on 198.19.<i>.0/24 behind a bridge in
 * `godwit<i>-ctl`, which also holds 198.18.<i>.250 for this process to reach NATS and the controller.
 * --infra-nice N runs nats-server and the controller at that nice value (DEFAULT_INFRA_NICE).
 * CPU per change is read from /proc (user + system, all threads): the agents' is also given net
 * of what they burn idle (sampled for IDLE_SAMPLE_MS after the warm-up: heartbeats, timers, GC).
 * GODWIT_BENCH_AGENT_PROFILE=DIR runs the first agent with --cpu-prof (a wall-clock sampler:
 * under load it also charges a function for the time its thread was preempted in it).
 * Options: --agents 10,50,100  --changes 20  --json  --results DIR  --infra-nice N
 */
import { spawn } from 'node:child_process';
import { appendFileSync, closeSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import type { SteeringAck } from '../agent/heartbeat.js';
import { ControllerApi } from '../controller/client.js';
import { SteeringApi } from '../controller/steering-client.js';
import { Bus } from '../lib/bus.js';
import { execCommand } from '../lib/exec.js';
import { REPO_ROOT } from '../lib/rpc.js';
import { SUBJECTS } from '../lib/subjects.js';
import { useSecurity } from '../lib/tls.js';
import { makeLabPki } from '../lab/lab-pki.js';
import { agentPinDir, labDir, labDown, rootLink, waitForPort } from '../lab/lab.js';
import { findFreeLabIndex, inNetns, labPrefix } from '../lab/topology.js';
import { convergeSvg, summarize, table, type AckSample, type ConvergeRow } from './steer-converge-report.js';

const NATS_PORT = 4222;
const CONTROLLER_PORT = 50050;
const AGENT_PORT = 50051;
/**
 * Changes made before measuring: an agent's first applies include V8 compiling its apply path
 * (measured at 50 agents: the first five changes took up to 0.8 s to reach every agent, the
 * rest under 0.15 s). A running fleet is past that; a restarted agent pays it once, on catch-up.
 */
const WARMUP_CHANGES = 20;
/** How long the agents' CPU is sampled with no change going on. */
const IDLE_SAMPLE_MS = 3_000;
/** Set to a folder: the first agent runs with --cpu-prof and writes its profile there when it stops. */
const PROFILE_DIR = process.env.GODWIT_BENCH_AGENT_PROFILE;
/** A change that the fleet does not hold within this is reported as missing acks, not awaited forever. */
const WAIT_MS = 30_000;

interface Options {
  agents: number[];
  changes: number;
  json: boolean;
  results: string;
  /** nice value for nats-server and the controller (0: the same priority as the agents). */
  infraNice: number;
}

/**
 * In a fleet, nats-server and the controller do not share CPUs with a hundred agents; here they
 * do, and a nats-server descheduled by the agents it just woke delivers the rest of a change
 * late. --infra-nice -10 runs them at a higher priority to take that artefact of squeezing the
 * fleet onto two cores out; by default they run level with the agents (measured at 100 agents,
 * -10 made no difference the noise did not swamp).
 */
const DEFAULT_INFRA_NICE = 0;

interface Fleet {
  index: number;
  hosts: string[];
  mgmtAddress: string;
  /** PIDs by role: what the CPU time per change is read from. */
  pids: { agents: number[]; controller: number; nats: number };
  stop(): Promise<void>;
}

/** User + system CPU time of these processes, in ms (from /proc/PID/stat; clock ticks are 100 Hz on Linux). */
function cpuMs(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15)
    } catch {
      // gone
    }
  }
  return ticks * 10;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const say = (s: string) => process.stderr.write(`${s}\n`);

export async function run(argv: string[]): Promise<number> {
  const o = new Command()
    .name('bench steer-converge')
    .option('--agents <list>', 'fleet sizes', (v) => v.split(',').map(Number), [10, 50, 100])
    .option('--changes <m>', 'measured rule changes per fleet size', (v) => Number(v), 20)
    .option('--json', 'print one JSON line per fleet size instead of the table')
    .option('--results <dir>', 'where steer-converge.jsonl and steer-converge.svg go', join(REPO_ROOT, 'bench', 'results'))
    .option('--infra-nice <n>', 'nice value of nats-server and the controller (0: same as the agents)', (v) => Number(v), DEFAULT_INFRA_NICE)
    .parse(['node', 'steer-converge', ...argv])
    .opts<{ agents: number[]; changes: number; json?: boolean; results: string; infraNice: number }>();
  const opts: Options = { agents: o.agents, changes: o.changes, json: o.json === true, results: o.results, infraNice: o.infraNice };
  if (!Number.isInteger(opts.infraNice) || opts.infraNice < -20 || opts.infraNice > 19) throw new Error('--infra-nice must be -20..19');
  if (opts.agents.some((n) => !Number.isInteger(n) || n < 1 || n > 250)) throw new Error('--agents: each fleet size must be 1-250');
  if (!Number.isInteger(opts.changes) || opts.changes < 1) throw new Error('--changes must be a positive integer');
  mkdirSync(opts.results, { recursive: true });

  const rows: ConvergeRow[] = [];
  for (const n of opts.agents) {
    const row = await measure(n, opts.changes, opts.infraNice, opts.results);
    rows.push(row);
    appendFileSync(join(opts.results, 'steer-converge.jsonl'), JSON.stringify(row) + '\n');
    writeFileSync(join(opts.results, 'steer-converge.svg'), convergeSvg(rows));
    if (opts.json) process.stdout.write(JSON.stringify(row) + '\n');
    say(`N=${n}: p50 ${row.p50Ms} ms, p99 ${row.p99Ms} ms, max ${row.maxMs} ms (${row.acks} acks, ${row.missing} missing)`);
  }
  if (!opts.json) {
    process.stdout.write('steer-converge: rule change accepted by the controller -> each agent\'s ack (its kernel maps hold it)\n\n');
    process.stdout.write(table(rows) + '\n');
  }
  say(`results appended to ${join(opts.results, 'steer-converge.jsonl')}; plot ${join(opts.results, 'steer-converge.svg')}`);
  return rows.some((r) => r.missing > 0) ? 1 : 0;
}

async function measure(n: number, changes: number, infraNice: number, resultsDir: string): Promise<ConvergeRow> {
  const t0 = Date.now();
  const fleet = await fleetUp(n, infraNice);
  const onSignal = () => void fleet.stop().finally(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    say(`N=${n}: fleet up in ${((Date.now() - t0) / 1000).toFixed(1)} s (lab index ${fleet.index})`);
    const bus = await Bus.connect({ servers: `nats://${fleet.mgmtAddress}:${NATS_PORT}`, name: 'bench-steer-converge' });
    const api = new SteeringApi(`${fleet.mgmtAddress}:${CONTROLLER_PORT}`);
    const acks: SteeringAck[] = [];
    const unsubscribe = bus.subscribe<SteeringAck>(SUBJECTS.allSteeringAcks, (a) => acks.push(a));
    await bus.flush();
    try {
      const prefix = `198.18.${fleet.index}`;
      const service = { protocol: 'TCP' as const, vip: `${prefix}.241`, port: 80 };
      const wait = { wait: true, timeoutMs: WAIT_MS };
      await api.createService({ service, wait });
      let backends = 0;
      /** Alternately a new backend (round-robin over hosts) and a new weight for the last one. */
      const change = (i: number) => {
        if (i % 2 === 0) {
          const k = backends++;
          return api.updateService({ service, addBackend: { backend: { address: `${prefix}.${1 + (k % 200)}`, port: 8000 + Math.floor(k / 200) }, host: fleet.hosts[k % n], weight: 10 }, wait });
        }
        const k = backends - 1;
        // Never 10 (what add-backend set): every change must make a new generation.
        return api.updateService({ service, setWeight: { backend: { address: `${prefix}.${1 + (k % 200)}`, port: 8000 + Math.floor(k / 200) }, weight: 11 + (i % 900) }, wait });
      };
      for (let i = 0; i < WARMUP_CHANGES; i++) await change(i);
      // What the agents burn with no change at all (heartbeats, timers, GC), so that the CPU per
      // change can be told apart from it.
      const idleBefore = cpuMs(fleet.pids.agents);
      await sleep(IDLE_SAMPLE_MS);
      const agentIdleMsPerSec = ((cpuMs(fleet.pids.agents) - idleBefore) / n / IDLE_SAMPLE_MS) * 1000;
      const measuredFrom = Date.now();
      const measured: { change: number; generation: number; acceptedAtMs: number }[] = [];
      const cpuBefore = { agents: cpuMs(fleet.pids.agents), controller: cpuMs([fleet.pids.controller]), nats: cpuMs([fleet.pids.nats]) };
      for (let i = 0; i < changes; i++) {
        const r = await change(WARMUP_CHANGES + i);
        const last = measured.at(-1)?.generation;
        if (last !== undefined && Number(r.generation) !== last + 1) throw new Error(`change ${i} made generation ${r.generation}, expected ${last + 1}`);
        measured.push({ change: i, generation: Number(r.generation), acceptedAtMs: r.acceptedAtMs });
        if (!r.converged) say(`N=${n}: change ${i} (generation ${r.generation}) not held by ${r.laggingHosts.length} host(s) within ${WAIT_MS} ms`);
      }
      const agentMsPerApply = (cpuMs(fleet.pids.agents) - cpuBefore.agents) / (n * changes);
      const cpu = {
        agentMsPerApply,
        agentIdleMsPerSec,
        agentNetMsPerApply: agentMsPerApply - (agentIdleMsPerSec * (Date.now() - measuredFrom)) / 1000 / changes,
        controllerMsPerChange: (cpuMs([fleet.pids.controller]) - cpuBefore.controller) / changes,
        natsMsPerChange: (cpuMs([fleet.pids.nats]) - cpuBefore.nats) / changes,
      };
      await sleep(500); // acks the controller counted may still be on their way to this process
      const samples: AckSample[] = [];
      for (const m of measured) {
        for (const host of fleet.hosts) {
          // Changes go one at a time, so each agent acks each generation; a later one also holds it.
          const a = acks.find((x) => x.host === host && x.generation >= m.generation);
          if (a) samples.push({ agents: n, change: m.change, generation: m.generation, host, latencyMs: a.atMs - m.acceptedAtMs, applyMs: a.applyMs });
        }
      }
      const negative = samples.filter((s) => s.latencyMs < 0).length;
      if (negative > 0) say(`N=${n}: ${negative} ack(s) stamped before the change was accepted: clocks disagree`);
      appendFileSync(join(resultsDir, 'steer-converge-acks.jsonl'), samples.map((x) => JSON.stringify(x)).join('\n') + '\n');
      return { ...summarize(n, changes, samples), ...roundAll(cpu), infraNice };
    } finally {
      unsubscribe();
      api.close();
      await bus.close().catch(() => undefined);
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await fleet.stop();
  }
}

/** N hosts behind one bridge, nats-server and the controller on the bridge's namespace, one agent per host. */
async function fleetUp(n: number, infraNice: number): Promise<Fleet> {
  const index = await findFreeLabIndex();
  const prefix = labPrefix(index);
  const pids: number[] = [];
  const stop = async () => {
    for (const pid of pids.reverse()) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        // gone
      }
    }
    await labDown(index);
  };
  try {
    const ctl = { netns: `${prefix}-ctl`, netnsPath: `/run/netns/${prefix}-ctl` };
    const mgmtAddress = `198.18.${index}.250`;
    const fabric = `198.19.${index}`;
    const ip = (...args: string[]) => execCommand('ip', args);
    await ip('netns', 'add', ctl.netns); // claims the lab index
    await ip('-n', ctl.netns, 'link', 'set', 'lo', 'up');
    await ip('-n', ctl.netns, 'link', 'add', 'br0', 'type', 'bridge');
    await ip('-n', ctl.netns, 'addr', 'add', `${mgmtAddress}/24`, 'dev', 'br0');
    await ip('-n', ctl.netns, 'addr', 'add', `${fabric}.254/24`, 'dev', 'br0');
    await ip('-n', ctl.netns, 'link', 'set', 'br0', 'up');
    await execCommand('nsenter', [`--net=${ctl.netnsPath}`, 'sysctl', '-q', '-w', 'net.bridge.bridge-nf-call-iptables=0'], { allowFailure: true });
    const mgmt = rootLink(index);
    await ip('link', 'add', mgmt, 'type', 'veth', 'peer', 'name', 'mgmt', 'netns', ctl.netns);
    await ip('-n', ctl.netns, 'link', 'set', 'mgmt', 'master', 'br0', 'up');
    await ip('addr', 'add', `198.18.${index}.254/24`, 'dev', mgmt);
    await ip('link', 'set', mgmt, 'up');

    const hosts = Array.from({ length: n }, (_, k) => `s${k + 1}`);
    for (const [k, h] of hosts.entries()) {
      const ns = `${prefix}-${h}`;
      await ip('netns', 'add', ns);
      await ip('link', 'add', 'eth0', 'netns', ns, 'type', 'veth', 'peer', 'name', `v${h}`, 'netns', ctl.netns);
      await ip('-n', ctl.netns, 'link', 'set', `v${h}`, 'master', 'br0', 'up');
      await ip('-n', ns, 'link', 'set', 'lo', 'up');
      await ip('-n', ns, 'addr', 'add', `${fabric}.${k + 1}/24`, 'dev', 'eth0');
      await ip('-n', ns, 'link', 'set', 'eth0', 'up');
    }

    const dir = labDir(index);
    mkdirSync(join(dir, 'logs'), { recursive: true });
    const start = (name: string, netnsPath: string, file: string, args: string[], nice = 0): number => {
      const [nsenter, nsArgs] = inNetns({ netnsPath }, file, args);
      // nice and nsenter exec what they run, so the PID is the service's own.
      const [cmd, cmdArgs] = nice === 0 ? [nsenter, nsArgs] : ['nice', ['-n', String(nice), nsenter, ...nsArgs]];
      const out = openSync(join(dir, 'logs', `${name}.log`), 'a');
      const child = spawn(cmd, cmdArgs, { detached: true, stdio: ['ignore', out, out] });
      closeSync(out);
      child.unref();
      if (child.pid === undefined) throw new Error(`could not start ${name}`);
      pids.push(child.pid);
      return child.pid;
    };
    // Secure as a fleet is (lab/lab-pki.ts): mutual TLS, NATS users with permissions; this process is the admin client.
    const pki = await makeLabPki(dir, hosts, [mgmtAddress, '127.0.0.1', `${fabric}.254`]);
    useSecurity(pki.security('client-admin'));
    const natsPid = start('nats', ctl.netnsPath, 'nats-server', ['-c', pki.writeNatsConfig({ host: '0.0.0.0', port: NATS_PORT, storeDir: join(dir, 'nats') })], infraNice);
    await waitForPort(mgmtAddress, NATS_PORT, 10_000, 'nats-server');
    const controllerPid = start('controller', ctl.netnsPath, process.execPath, [
      join(REPO_ROOT, 'dist', 'controller', 'main.js'), '--nats', `nats://127.0.0.1:${NATS_PORT}`, '--listen', `0.0.0.0:${CONTROLLER_PORT}`, '--tls-dir', pki.tlsDir('controller'),
    ], infraNice);
    await waitForPort(mgmtAddress, CONTROLLER_PORT, 20_000, 'controller');
    const agentPids: number[] = [];
    for (const [k, h] of hosts.entries()) {
      const profile = PROFILE_DIR && k === 0 ? ['--cpu-prof', '--cpu-prof-dir', PROFILE_DIR] : [];
      agentPids.push(start(`agent-${h}`, `/run/netns/${prefix}-${h}`, process.execPath, [
        ...profile,
        join(REPO_ROOT, 'dist', 'agent', 'main.js'),
        '--host', h,
        '--listen', `${fabric}.${k + 1}:${AGENT_PORT}`,
        '--nats', `nats://${fabric}.254:${NATS_PORT}`,
        '--iface', 'eth0',
        '--state-dir', join(dir, 'hosts', h),
        '--pin-dir', agentPinDir(index, h),
        '--no-checkpoint',
        '--tls-dir', pki.tlsDir(`agent-${h}`),
      ]));
    }
    await waitForSteeringHosts(`${mgmtAddress}:${CONTROLLER_PORT}`, hosts, 60_000 + n * 5_000);
    return { index, hosts, mgmtAddress, pids: { agents: agentPids, controller: controllerPid, nats: natsPid }, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

function roundAll<T extends Record<string, number>>(o: T): T {
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, Math.round(v * 100) / 100])) as T;
}

async function waitForSteeringHosts(controller: string, names: string[], timeoutMs: number): Promise<void> {
  const api = new ControllerApi(controller);
  try {
    const deadline = Date.now() + timeoutMs;
    let have = 0;
    while (Date.now() < deadline) {
      const r = await api.listHosts().catch(() => undefined);
      have = (r?.hosts ?? []).filter((h) => h.ready && h.steering).length;
      if (have >= names.length) return;
      await sleep(500);
    }
    throw new Error(`only ${have} of ${names.length} agents registered with a steering data plane within ${timeoutMs} ms (see the agents' logs)`);
  } finally {
    api.close();
  }
}

