/**
 * npm run bench -- lock: godwit's eBPF lock against CRIU's own iptables and nftables locks.
 *
 * One lab (hosts a and b, a client) for the whole run. Per measurement: a fresh echo workload on a
 * holding N live client connections that check every echoed byte, migrated a -> b through the
 * controller under one lock mode; then the workload, its address and anything left of the lock are
 * removed. Modes are interleaved within each N and run, so that drift hits them alike.
 *
 *   --connections 0,500,1000,1500,5000   live connections per measurement
 *   --modes ebpf,iptables,nftables
 *   --runs 3                             measurements per (N, mode)
 *   --security tls,insecure              one lab per setting, both up at once, measurements interleaved;
 *                                        with both, a table of what TLS adds to the freeze (default: tls)
 *   --quick                              N <= 500 only, one run (for CI)
 *   --json                               JSON lines on stdout (one per measurement), tables on stderr
 *
 * Always appends each measurement to bench/results/lock.jsonl as it completes and (re)draws
 * bench/results/lock-freeze.svg. A migration that fails is a row with its error, not an abort.
 */
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { parseEndpoint } from '../lib/endpoint.js';
import { execCommand } from '../lib/exec.js';
import { REPO_ROOT } from '../lib/rpc.js';
import { migrateHop, PHASE_TIME_KEYS, phaseTimes, type HopLockMode, type PhaseTimes } from '../lab/hop.js';
import { labUp, type Lab, startLabWorkload } from '../lab/lab.js';
import { startTraffic, type TrafficHandle } from '../lab/traffic.js';
import { Cleanup, echoServers } from './lab-cleanup.js';
import { LOCK_MODES, SECURITY_SETTINGS, freezeSvg, measurementTable, securityTable, summaryTable, type BenchMode, type BenchSecurity, type LockMeasurement } from './lock-report.js';
import { useSecurity } from '../lib/tls.js';
import { optionsOrExit } from './cli-options.js';

const DEFAULT_CONNECTIONS = [0, 500, 1000, 1500, 5000];
const QUICK_MAX_CONNECTIONS = 500;
const PORT = 7000;
/** After a long freeze, peers back off up to 120 s between retransmissions: wait that out. */
const SETTLE_TIMEOUT_MS = 240_000;
const DRAIN_TIMEOUT_MS = 60_000;
const WARMUP_MS = 1_000;

interface Options {
  connections: number[];
  modes: BenchMode[];
  runs: number;
  security: BenchSecurity[];
  quick: boolean;
  json: boolean;
  results: string;
}

const say = (line: string) => process.stderr.write(line + '\n');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function parseList<T>(what: string, check: (s: string) => T): (v: string) => T[] {
  return (v) => {
    const items = v.split(',').map((s) => s.trim()).filter(Boolean);
    if (items.length === 0) throw new InvalidArgumentError(`${what}: give at least one`);
    return items.map(check);
  };
}

export function parseOptions(argv: string[]): Options {
  const o = new Command()
    .name('bench lock')
    .exitOverride()
    .option('--connections <list>', 'live connections per measurement, comma-separated', parseList('connections', (s) => {
      const n = Number(s);
      if (!Number.isInteger(n) || n < 0 || n > 20_000) throw new InvalidArgumentError(`"${s}" is not a connection count 0..20000`);
      return n;
    }))
    .option('--modes <list>', `lock modes, comma-separated (${LOCK_MODES.join(', ')})`, parseList('modes', (s) => {
      const m = s.toLowerCase();
      if (!(LOCK_MODES as readonly string[]).includes(m)) throw new InvalidArgumentError(`"${s}" is not one of ${LOCK_MODES.join(', ')}`);
      return m as BenchMode;
    }))
    .option('--runs <n>', 'measurements per connection count and mode', (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`"${v}" is not a positive integer`);
      return n;
    })
    .option('--security <list>', `${SECURITY_SETTINGS.join(', ')}: mutual TLS (as the fleet runs) and/or every part with --insecure`, parseList('security', (s) => {
      const v = s.toLowerCase();
      if (!(SECURITY_SETTINGS as readonly string[]).includes(v)) throw new InvalidArgumentError(`"${s}" is not one of ${SECURITY_SETTINGS.join(', ')}`);
      return v as BenchSecurity;
    }))
    .option('--quick', `connection counts up to ${QUICK_MAX_CONNECTIONS} only, one run`)
    .option('--json', 'JSON lines on stdout')
    .option('--results <dir>', 'where lock.jsonl and lock-freeze.svg go', join(REPO_ROOT, 'bench', 'results'))
    .parse(argv, { from: 'user' })
    .opts<{ connections?: number[]; modes?: BenchMode[]; runs?: number; security?: BenchSecurity[]; quick?: boolean; json?: boolean; results: string }>();
  const quick = !!o.quick;
  let connections = [...new Set(o.connections ?? DEFAULT_CONNECTIONS)].sort((a, b) => a - b);
  if (quick) connections = connections.filter((n) => n <= QUICK_MAX_CONNECTIONS);
  if (connections.length === 0) throw new InvalidArgumentError(`--quick keeps connection counts up to ${QUICK_MAX_CONNECTIONS} only; none given`);
  return {
    connections,
    modes: [...new Set(o.modes ?? [...LOCK_MODES])],
    security: [...new Set(o.security ?? ['tls' as const])],
    runs: quick ? 1 : (o.runs ?? 3),
    quick,
    json: !!o.json,
    results: o.results,
  };
}

export async function run(argv: string[]): Promise<number> {
  const opts = optionsOrExit(parseOptions, argv);
  if ('exitCode' in opts) return opts.exitCode;
  mkdirSync(opts.results, { recursive: true });
  const jsonl = join(opts.results, 'lock.jsonl');
  const svg = join(opts.results, 'lock-freeze.svg');

  const rows: LockMeasurement[] = [];
  const labs = new Map<BenchSecurity, Lab>();
  let current: Cleanup | undefined;
  const cleanupAll = async () => {
    await current?.run().catch(() => undefined);
    for (const l of labs.values()) await l.down().catch((e: Error) => say(`lab down: ${e.message}`));
    labs.clear();
  };
  const onSignal = () => void cleanupAll().then(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const total = opts.connections.length * opts.runs * opts.modes.length * opts.security.length;
  const started = Date.now();
  try {
    say(`bench lock: N=${opts.connections.join(',')} modes=${opts.modes.join(',')} security=${opts.security.join(',')} runs=${opts.runs} (${total} migrations)`);
    // One lab per security setting, all up for the whole run, so that measurements interleave.
    for (const sec of opts.security) labs.set(sec, await labUp({ hosts: ['a', 'b'], insecure: sec === 'insecure' }));
    // Where the steering table places the workload's address after the last migration: the next
    // measurement starts its workload there (a migration's placement stays until the next one).
    const places = new Map(opts.security.map((sec) => [sec, { home: 'a' }]));
    let i = 0;
    for (const n of opts.connections) {
      for (let r = 1; r <= opts.runs; r++) {
        for (const mode of opts.modes) for (const sec of opts.security) {
          i++;
          const lab = labs.get(sec)!;
          // This process talks to each lab as that lab's client (labUp made it the last one's).
          useSecurity(lab.security);
          say(`[${i}/${total}] ${mode} ${sec} N=${n} run ${r} ...`);
          current = new Cleanup(lab);
          let row: LockMeasurement;
          let leftovers = 0;
          try {
            row = await measure(lab, mode, n, r, current, places.get(sec)!);
            row.security = sec;
          } finally {
            leftovers = await current.run().catch((e: Error) => {
              say(`  cleanup: ${e.message}`);
              return 0;
            });
            current = undefined;
          }
          row.leftovers = leftovers;
          rows.push(row);
          appendFileSync(jsonl, JSON.stringify(row) + '\n');
          if (opts.json) process.stdout.write(JSON.stringify(row) + '\n');
          say(
            `  ${row.ok ? 'ok' : 'FAILED'}: freeze ${row.freezeMs.toFixed(0)} ms, lock ${row.lockMs.toFixed(0)} / dump ${row.dumpMs.toFixed(0)} / transfer ${row.transferMs.toFixed(0)} / restore ${row.restoreMs.toFixed(0)} / unlock ${row.unlockMs.toFixed(0)} ms, ` +
              `max stall ${row.maxStallMs.toFixed(0)} ms, ${row.survived}/${n} survived, ${row.bytesLost} B lost${row.leftovers ? `, ${row.leftovers} leftovers` : ''}${row.workloadRunning ? '' : ', WORKLOAD LOST'}${row.ok ? '' : ` — ${row.error}`}`,
          );
          writeFileSync(svg, freezeSvg(rows));
        }
      }
    }
  } finally {
    await cleanupAll();
  }
  const perSecurity = opts.security.map((sec) => `${opts.security.length > 1 ? `${sec}:\n` : ''}${summaryTable(rows.filter((r) => r.security === sec))}`).join('\n\n');
  const tables =
    `${measurementTable(rows)}\n\n${perSecurity}\n\n(iptables/ebpf, nftables/ebpf: median freeze of the CRIU lock ÷ median freeze of the eBPF lock, successful runs)\n` +
    (opts.security.length > 1 ? `\n${securityTable(rows)}\n\n(tls vs insecure: how much longer the median freeze is with mutual TLS, authorization and NATS users)\n` : '');
  if (opts.json) process.stderr.write(tables);
  else process.stdout.write(tables);
  say(`bench lock: ${rows.length} migrations in ${((Date.now() - started) / 60_000).toFixed(1)} min; appended to ${jsonl}; plot ${svg}`);
  return 0;
}

async function measure(lab: Lab, mode: BenchMode, n: number, runNo: number, cleanup: Cleanup, place: { home: string }): Promise<LockMeasurement> {
  const from = place.home;
  const to = from === 'a' ? 'b' : 'a';
  const row: LockMeasurement = {
    mode,
    connections: n,
    run: runNo,
    ok: false,
    error: '',
    phase: '',
    failedPhase: '',
    migrationId: '',
    ...Object.fromEntries(PHASE_TIME_KEYS.map((k) => [k, 0])) as unknown as PhaseTimes,
    maxStallMs: 0,
    survived: 0,
    workloadRunning: false,
    bytesLost: 0,
    bytesDuplicated: 0,
    corrupted: 0,
    imageBytes: 0,
    deliveredPackets: 0,
    leftovers: 0,
    at: new Date().toISOString(),
  };
  try {
    const vip = lab.topology.workloadAddress(0);
    // The client may still map the address to the host of the previous measurement's workload.
    await execCommand('ip', ['-n', lab.topology.client.netns, 'neigh', 'flush', 'to', vip], { allowFailure: true });
    const workload = await startLabWorkload(lab, from, PORT);
    cleanup.pids.push(workload.pid);
    let traffic: TrafficHandle | undefined;
    if (n > 0) {
      traffic = startTraffic(lab.topology.client, { address: vip, port: PORT }, { connections: n, seed: runNo, connectTimeoutMs: 120_000 });
      cleanup.traffic = traffic;
      await traffic.ready;
    }
    await sleep(WARMUP_MS);
    const hop = await migrateHop(lab.controller, traffic, {
      from,
      to,
      pid: workload.pid,
      endpoints: [parseEndpoint(`tcp://${vip}:${PORT}`)],
      lockMode: mode.toUpperCase() as HopLockMode,
      // The point is to measure CRIU's locks where they fail: the controller must not refuse them.
      allowUnsafeLock: true,
      settleTimeoutMs: SETTLE_TIMEOUT_MS,
    });
    if (hop.pid) cleanup.pids.push(hop.pid);
    if (hop.phase === 'DONE') place.home = to;
    const m = await lab.controller.getMigration(hop.migrationId);
    Object.assign(row, {
      ok: hop.phase === 'DONE',
      error: hop.error,
      phase: hop.phase,
      failedPhase: m.failedPhase === 'PHASE_UNSPECIFIED' ? '' : String(m.failedPhase),
      migrationId: hop.migrationId,
      ...phaseTimes(hop),
      freezeMs: hop.phase === 'DONE' ? hop.freezeMs : 0,
      maxStallMs: hop.maxStallMs,
      imageBytes: hop.imageBytes,
      deliveredPackets: hop.deliveredPackets,
    });
    row.workloadRunning = (await echoServers(lab)).length > 0;
    if (traffic) {
      // Every byte each live connection sent must come back: what does not within the drain is lost.
      const final = await traffic.drain(DRAIN_TIMEOUT_MS);
      // Without a workload an open client socket is only one that has not timed out yet.
      Object.assign(row, { survived: row.workloadRunning ? final.alive : 0, bytesLost: final.bytesLost, bytesDuplicated: final.bytesDuplicated, corrupted: final.corrupted });
      if (row.ok && !final.drained) row.error = `client: drain incomplete after ${final.drainMs} ms`;
    }
  } catch (e) {
    row.ok = false;
    row.error = row.error || (e instanceof Error ? e.message : String(e));
  }
  for (const k of [...PHASE_TIME_KEYS, 'maxStallMs'] as const) row[k] = Math.round(row[k] * 10) / 10;
  return row;
}

