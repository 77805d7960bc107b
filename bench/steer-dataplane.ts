/**
 * npm run bench -- steer-dataplane: the CPU a packet for VIP:port costs on the steering host,
 * through godwit's XDP steering, iptables DNAT, nftables DNAT (conntrack for both), and no rule
 * at all (the baseline: packets sent straight to the backend's address).
 *
 * Every measurement gets a fresh routed lab with one workload host (lab/topology.ts): the client
 * sends through the router to host a, where the backend (a workload address on a) receives. The
 * load is the same in every mode: build/godwit-pktgen sends --packets crafted frames from the
 * client (--flows source ports round-robin, fixed payload), only the destination differs (the VIP
 * or, for the baseline, the backend). The README's "steer-dataplane" section explains the CPU
 * accounting. Modes are interleaved within each run (each run starting at the next mode), so drift
 * on this shared machine hits them alike.
 *
 *   --packets 1000000   per measurement      --flows 256        --payload 18 (bytes of L4 data)
 *   --runs 5            measurements per (mode, proto); the tables show medians
 *   --modes godwit,iptables,nftables,baseline      --proto udp,tcp
 *   --quick             100,000 packets, one run (CI)
 *   --json              JSON lines on stdout (one per measurement), tables on stderr
 *
 * Appends every measurement to bench/results/steer-dataplane.jsonl and draws
 * bench/results/steer-dataplane.svg. Rows of bench/steer-progrun.ts (BPF_PROG_TEST_RUN of the
 * steering program alone) are merged in when that module is in the tree.
 */
import { spawn } from 'node:child_process';
import { appendFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Command, InvalidArgumentError } from 'commander';
import { execCommand } from '../lib/exec.js';
import { REPO_ROOT } from '../lib/rpc.js';
import { createTopology, destroyTopology, findFreeLabIndex, inNetns, type LabHost, type LabTopology } from '../lab/topology.js';
import { ModeUnavailableError, setupMode, type ModeHandle } from './steer-modes.js';
import { optionsOrExit } from './cli-options.js';
import {
  measurementTable,
  progTestRunTable,
  STEER_MODES,
  STEER_PROTOS,
  steerSvg,
  summaryTable,
  type ProgTestRunRow,
  type SteerMeasurement,
  type SteerMode,
  type SteerProto,
} from './steer-report.js';

const GEN = join(REPO_ROOT, 'build', 'godwit-pktgen');
const SINK = join(REPO_ROOT, 'build', 'godwit-pktsink');
const VIP_PORT = 80;
const BACKEND_PORT = 9000;
const QUICK_PACKETS = 100_000;
/** /proc/stat counts in USER_HZ ticks, 100 per second on Linux whatever the kernel's HZ. */
const NS_PER_USER_HZ_TICK = 10_000_000;
/** The sink gives up this long after the last datagram: everything that will arrive has. */
const SINK_IDLE_MS = 500;

interface Options {
  packets: number;
  flows: number;
  payload: number;
  runs: number;
  modes: SteerMode[];
  protos: SteerProto[];
  quick: boolean;
  json: boolean;
  results: string;
}

const say = (line: string) => process.stderr.write(line + '\n');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function intOption(what: string, min: number, max: number): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`"${v}" is not ${what} ${min}..${max}`);
    return n;
  };
}

function listOption<T extends string>(what: string, allowed: readonly T[]): (v: string) => T[] {
  return (v) => {
    const items = v.split(',').map((s) => s.trim().toLowerCase()).filter(Boolean);
    if (items.length === 0) throw new InvalidArgumentError(`${what}: give at least one`);
    for (const s of items) if (!(allowed as readonly string[]).includes(s)) throw new InvalidArgumentError(`"${s}" is not one of ${allowed.join(', ')}`);
    return [...new Set(items)] as T[];
  };
}

export function parseOptions(argv: string[]): Options {
  const o = new Command()
    .name('bench steer-dataplane')
    .exitOverride()
    .option('--packets <n>', 'packets per measurement', intOption('a packet count', 1000, 100_000_000))
    .option('--flows <n>', 'flows (distinct source ports), taken round-robin', intOption('a flow count', 1, 40_000))
    .option('--payload <bytes>', 'L4 payload bytes per packet', intOption('a payload size', 0, 1400), 18)
    .option('--runs <n>', 'measurements per mode and proto', intOption('a run count', 1, 100))
    .option('--modes <list>', `comma-separated (${STEER_MODES.join(', ')})`, listOption('modes', STEER_MODES))
    .option('--proto <list>', 'comma-separated (udp, tcp)', listOption('proto', STEER_PROTOS))
    .option('--quick', `${QUICK_PACKETS} packets, one run (for CI)`)
    .option('--json', 'JSON lines on stdout')
    .option('--results <dir>', 'where steer-dataplane.jsonl and .svg go', join(REPO_ROOT, 'bench', 'results'))
    .parse(argv, { from: 'user' })
    .opts<{ packets?: number; flows?: number; payload: number; runs?: number; modes?: SteerMode[]; proto?: SteerProto[]; quick?: boolean; json?: boolean; results: string }>();
  const quick = !!o.quick;
  return {
    packets: o.packets ?? (quick ? QUICK_PACKETS : 1_000_000),
    flows: o.flows ?? 256,
    payload: o.payload,
    runs: o.runs ?? (quick ? 1 : 5),
    modes: o.modes ?? [...STEER_MODES],
    protos: o.proto ?? [...STEER_PROTOS],
    quick,
    json: !!o.json,
    results: o.results,
  };
}

// ---- counters ----

/** Busy time of every CPU (user, nice, system, irq, softirq, steal) from /proc/stat, in ns. */
export function systemBusyNs(stat = readFileSync('/proc/stat', 'utf8')): number {
  const f = stat.split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = f;
  return (user + nice + system + irq + softirq + (steal ?? 0)) * NS_PER_USER_HZ_TICK;
}

function ksoftirqdPids(): number[] {
  const pids: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readFileSync(`/proc/${d}/comm`, 'utf8').startsWith('ksoftirqd/')) pids.push(Number(d));
    } catch {
      // gone
    }
  }
  return pids;
}

/** Time on CPU of the ksoftirqd threads (softirq work deferred out of the sender's context), ns. */
function ksoftirqdNs(pids: number[]): number {
  let sum = 0;
  for (const p of pids) {
    try {
      sum += Number(readFileSync(`/proc/${p}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // gone
    }
  }
  return sum;
}

/** One counter of /proc/net/snmp as a host's namespace sees it ("Tcp", "InSegs"). */
async function snmpCounter(host: LabHost, group: string, name: string): Promise<number> {
  const [file, args] = inNetns(host, 'cat', ['/proc/net/snmp']);
  const lines = (await execCommand(file, args)).stdout.split('\n').filter((l) => l.startsWith(`${group}:`));
  if (lines.length < 2) throw new Error(`no ${group} counters in /proc/net/snmp of ${host.netns}`);
  const [names, values] = lines.map((l) => l.split(/\s+/));
  const i = names.indexOf(name);
  if (i < 0) throw new Error(`no ${group} ${name} in /proc/net/snmp`);
  return Number(values[i]);
}

// ---- the sink and the generator ----

interface SinkHandle {
  result: Promise<{ received: number; cpuNs: number }>;
  kill(): void;
}

/** The UDP sink on the backend host, bound to the backend; resolves once it is ready. */
async function startSink(host: LabHost, backend: { address: string; port: number }, expect: number): Promise<SinkHandle> {
  const [file, args] = inNetns(host, SINK, ['--bind', backend.address, '--port', String(backend.port), '--expect', String(expect), '--idle-ms', String(SINK_IDLE_MS), '--start-ms', '30000']);
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const lines = createInterface({ input: child.stdout });
  const it = lines[Symbol.asyncIterator]();
  const exited = new Promise<number>((resolve) => child.once('exit', (code) => resolve(code ?? -1)));
  const first = await Promise.race([it.next(), exited.then(() => undefined)]);
  if (!first || first.done || first.value !== 'ready') {
    child.kill('SIGKILL');
    throw new Error(`godwit-pktsink did not start: ${stderr.trim() || 'no output'}`);
  }
  const result = (async () => {
    const next = await it.next();
    const code = await exited;
    if (code !== 0 || next.done) throw new Error(`godwit-pktsink exited ${code}: ${stderr.trim()}`);
    return JSON.parse(next.value) as { received: number; cpuNs: number };
  })();
  result.catch(() => undefined);
  return { result, kill: () => child.kill('SIGKILL') };
}

interface GenResult {
  sent: number;
  elapsedNs: number;
  cpuNs: number;
  frameBytes: number;
}

async function runGenerator(client: LabHost, o: { dstMac: string; src: string; dst: string; dport: number; proto: SteerProto; packets: number; flows: number; sport: number; payload: number }): Promise<GenResult> {
  const [file, args] = inNetns(client, GEN, [
    '--iface', client.iface,
    '--dst-mac', o.dstMac,
    '--src', o.src,
    '--dst', o.dst,
    '--dport', String(o.dport),
    '--proto', o.proto,
    '--packets', String(o.packets),
    '--flows', String(o.flows),
    '--sport', String(o.sport),
    '--payload', String(o.payload),
  ]);
  const r = await execCommand(file, args, { timeoutMs: 600_000 });
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as GenResult;
}

async function macOf(netns: string, dev: string): Promise<string> {
  const r = await execCommand('ip', ['-n', netns, '-j', 'link', 'show', dev]);
  return (JSON.parse(r.stdout) as { address: string }[])[0].address;
}

/** Waits until a counter stops moving (the last packets are through the stack); returns its value. */
async function settled(read: () => Promise<number>, target: number): Promise<number> {
  let last = await read();
  for (let i = 0; i < 50 && last < target; i++) {
    await sleep(100);
    const now = await read();
    if (now === last) break;
    last = now;
  }
  return last;
}

// ---- one measurement ----

/** A fresh port range per measurement: no flow (or conntrack / flow-table entry) is reused across runs. */
function sourcePortBase(seq: number, flows: number): number {
  const span = 64_000 - 1024;
  const slots = Math.max(1, Math.floor(span / flows));
  return 1024 + (seq % slots) * flows;
}

async function measure(mode: SteerMode, proto: SteerProto, run: number, seq: number, o: Options, track: (t: LabTopology | undefined) => void): Promise<SteerMeasurement> {
  const index = await findFreeLabIndex();
  const topology = await createTopology({ index, hosts: ['a'], fabric: 'routed' });
  track(topology);
  const [host] = topology.hosts;
  const client = topology.client;
  const backend = { address: topology.workloadAddress(0), port: BACKEND_PORT };
  const vip = { address: topology.vip(0), port: VIP_PORT };
  let handle: ModeHandle | undefined;
  let sink: SinkHandle | undefined;
  try {
    await execCommand('ip', ['-n', host.netns, 'addr', 'add', `${backend.address}/32`, 'dev', host.iface]);
    await topology.routeWorkloadAddress(backend.address, host.name);
    handle = await setupMode(mode, { host, proto, vip, backend, pinDir: `/sys/fs/bpf/godwit-bench-${topology.prefix}` });
    const dstMac = await macOf(topology.router!.netns, topology.router!.ifaceTo('client'));
    if (proto === 'udp') sink = await startSink(host, backend, o.packets);
    const tcpBefore = proto === 'tcp' ? await snmpCounter(host, 'Tcp', 'InSegs') : 0;
    const ks = ksoftirqdPids();
    const ks0 = ksoftirqdNs(ks);
    const sys0 = systemBusyNs();
    const gen = await runGenerator(client, {
      dstMac,
      src: client.address,
      dst: handle.target.address,
      dport: handle.target.port,
      proto,
      packets: o.packets,
      flows: o.flows,
      sport: sourcePortBase(seq, o.flows),
      payload: o.payload,
    });
    const sys1 = systemBusyNs();
    let delivered: number;
    let sinkCpuNs = 0;
    if (sink) {
      const s = await sink.result;
      delivered = s.received;
      sinkCpuNs = s.cpuNs;
    } else {
      delivered = (await settled(() => snmpCounter(host, 'Tcp', 'InSegs'), tcpBefore + o.packets)) - tcpBefore;
    }
    const ks1 = ksoftirqdNs(ks);
    const cpuNs = gen.cpuNs + (ks1 - ks0);
    const sysCpuNs = sys1 - sys0;
    const per = (n: number) => (delivered > 0 ? n / delivered : 0);
    const row: SteerMeasurement = {
      bench: 'steer-dataplane',
      mode,
      proto,
      run,
      packets: gen.sent,
      delivered,
      flows: o.flows,
      frameBytes: gen.frameBytes,
      cpuNs,
      cpuNsPerPacket: per(cpuNs),
      sysCpuNs,
      sysCpuNsPerPacket: per(sysCpuNs),
      sinkCpuNs,
      elapsedNs: gen.elapsedNs,
      pps: gen.elapsedNs > 0 ? (delivered * 1e9) / gen.elapsedNs : 0,
      ok: delivered > 0,
      error: delivered > 0 ? '' : 'no packet reached the backend',
      at: new Date().toISOString(),
    };
    return row;
  } finally {
    sink?.kill();
    await handle?.teardown().catch((e: Error) => say(`teardown ${mode}: ${e.message}`));
    await destroyTopology(index);
    track(undefined);
  }
}

function failedRow(mode: SteerMode, proto: SteerProto, run: number, o: Options, error: string): SteerMeasurement {
  return {
    bench: 'steer-dataplane',
    mode,
    proto,
    run,
    packets: 0,
    delivered: 0,
    flows: o.flows,
    frameBytes: 0,
    cpuNs: 0,
    cpuNsPerPacket: 0,
    sysCpuNs: 0,
    sysCpuNsPerPacket: 0,
    sinkCpuNs: 0,
    elapsedNs: 0,
    pps: 0,
    ok: false,
    error,
    at: new Date().toISOString(),
  };
}

/** bench/steer-progrun.ts (the program alone under BPF_PROG_TEST_RUN), when it is in the tree. */
async function progTestRunRows(quick: boolean): Promise<ProgTestRunRow[]> {
  const specifier = './steer-progrun.js';
  let mod: { steerProgRun?: (o: { repeat?: number; misses?: number; prefill?: number }) => Promise<ProgTestRunRow[]> };
  try {
    // A computed specifier: this file compiles whether or not that module is in the tree yet.
    mod = (await import(specifier as string)) as typeof mod;
  } catch (err) {
    if ((err as { code?: string }).code === 'ERR_MODULE_NOT_FOUND') return [];
    throw err;
  }
  if (typeof mod.steerProgRun !== 'function') {
    say('bench/steer-progrun.ts has no steerProgRun(): its rows are left out');
    return [];
  }
  // The method: flow table pre-filled to 100,000 entries; --quick repeats less.
  return mod.steerProgRun(quick ? { repeat: 100_000, misses: 2_000, prefill: 100_000 } : {});
}

export async function run(argv: string[]): Promise<number> {
  const opts = optionsOrExit(parseOptions, argv);
  if ('exitCode' in opts) return opts.exitCode;
  mkdirSync(opts.results, { recursive: true });
  const jsonl = join(opts.results, 'steer-dataplane.jsonl');
  const svg = join(opts.results, 'steer-dataplane.svg');
  await execCommand('bash', [join(REPO_ROOT, 'scripts', 'build-workload.sh')]);

  let current: LabTopology | undefined;
  const onSignal = () => void (current ? destroyTopology(current.index) : Promise.resolve()).finally(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const rows: SteerMeasurement[] = [];
  const unavailable = new Map<SteerMode, string>();
  const total = opts.runs * opts.modes.length * opts.protos.length;
  say(`bench steer-dataplane: ${opts.packets} packets, ${opts.flows} flows, ${opts.payload} B payload; modes=${opts.modes.join(',')} proto=${opts.protos.join(',')} runs=${opts.runs} (${total} measurements)`);
  let seq = 0;
  for (let r = 1; r <= opts.runs; r++) {
    // Each run starts at another mode, so no mode always runs first (or right after another).
    const order = opts.modes.map((_, k) => opts.modes[(k + r - 1) % opts.modes.length]);
    for (const proto of opts.protos) {
      for (const mode of order) {
        seq++;
        if (unavailable.has(mode)) continue;
        say(`[${seq}/${total}] ${mode} ${proto} run ${r} ...`);
        let row: SteerMeasurement;
        try {
          row = await measure(mode, proto, r, seq, opts, (t) => (current = t));
        } catch (err) {
          if (err instanceof ModeUnavailableError) {
            unavailable.set(mode, err.reason);
            say(`  ${err.message}: skipped`);
            continue;
          }
          row = failedRow(mode, proto, r, opts, err instanceof Error ? err.message : String(err));
        }
        rows.push(row);
        appendFileSync(jsonl, JSON.stringify(row) + '\n');
        if (opts.json) process.stdout.write(JSON.stringify(row) + '\n');
        say(
          row.ok
            ? `  ${row.delivered}/${row.packets} delivered, ${row.cpuNsPerPacket.toFixed(0)} CPU ns/packet (system-wide ${row.sysCpuNsPerPacket.toFixed(0)}), ${(row.pps / 1000).toFixed(0)} kpps`
            : `  FAILED: ${row.error}`,
        );
      }
    }
  }

  const prog = await progTestRunRows(opts.quick).catch((e: Error) => (say(`steer-progrun failed: ${e.message}`), [] as ProgTestRunRow[]));
  for (const p of prog) {
    appendFileSync(jsonl, JSON.stringify({ bench: 'steer-dataplane', ...p, at: new Date().toISOString() }) + '\n');
    if (opts.json) process.stdout.write(JSON.stringify(p) + '\n');
  }

  if (rows.length > 0) writeFileSync(svg, steerSvg(rows));
  const out = (s: string) => (opts.json ? process.stderr : process.stdout).write(s + '\n');
  out('\n## steer-dataplane: every measurement\n');
  out(measurementTable(rows));
  out(`\n## steer-dataplane: medians (${opts.packets} packets, ${opts.flows} flows, ${opts.runs} run${opts.runs > 1 ? 's' : ''})\n`);
  out(summaryTable(rows));
  if (prog.length > 0) {
    out('\n## steering program alone (BPF_PROG_TEST_RUN)\n');
    out(progTestRunTable(prog));
  }
  for (const [mode, reason] of unavailable) out(`\n${mode}: not measured (${reason})`);
  out(`\nresults appended to ${jsonl}; plot ${svg}`);
  return rows.some((r) => !r.ok) ? 1 : 0;
}
