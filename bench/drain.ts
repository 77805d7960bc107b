/**
 * `npm run bench -- drain`: fleet operations measured in a 3-host lab (a, b, c).
 *   drain       host a holds --workloads echo servers, each with --connections live connections
 *               checked byte by byte; Drain(a) moves them all to b and c; time from the request
 *               to the drain's end, workloads moved, connections that survived, bytes lost
 *   concurrent  --concurrent workloads (--concurrent-connections each) migrated a -> b all at
 *               once; their median freeze against the median freeze of the same migration run
 *               alone (--alone-runs round trips of one of them, before)
 * Output: a table on stdout; with --json, the issue's two JSON lines on stdout (the table then
 * goes to stderr). --quick: CI-sized (2 workloads × 10 connections, 3 at once × 10, 1 round trip).
 *
 * The drain is asked and followed through the NATS request API (`requestDrain` below), as the
 * automation the issue names would.
 */
import { Command, InvalidArgumentError } from 'commander';
import type { DrainRecord__Output } from '../proto/gen/godwit/v1/DrainRecord.js';
import { FleetApi } from '../controller/fleet-client.js';
import { Bus } from '../lib/bus.js';
import { NatsApiClient } from '../lib/nats-api-client.js';
import { checkConnections, openWindows, startFleetWorkloads, stopFleetTraffic, type FleetWorkload } from '../lab/fleet-workloads.js';
import { labUp, type Lab } from '../lab/lab.js';
import { stopWorkload } from '../lab/workload.js';
import { optionsOrExit } from './cli-options.js';
import { concurrentJson, drainJson, median, reportTable, type ConcurrentRow, type DrainRow } from './drain-report.js';

interface Options {
  workloads: number;
  connections: number;
  concurrent: number;
  concurrentConnections: number;
  aloneRuns: number;
  maxPerHost: number;
  maxInFlight: number;
  json: boolean;
}

const QUICK = { workloads: 2, connections: 10, concurrent: 3, concurrentConnections: 10, aloneRuns: 1 };
const HOSTS = ['a', 'b', 'c'];
const say = (line: string) => process.stderr.write(line + '\n');

function count(what: string, min: number, max: number): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${what}: "${v}" is not a whole number ${min}..${max}`);
    return n;
  };
}

export function parseOptions(argv: string[]): Options {
  const o = new Command()
    .name('bench drain')
    .exitOverride()
    .option('--workloads <n>', 'workloads on the drained host (default 5)', count('--workloads', 1, 20))
    .option('--connections <n>', 'live connections per drained workload (default 100)', count('--connections', 1, 2000))
    .option('--concurrent <n>', 'migrations started at once (default 10; 0 skips)', count('--concurrent', 0, 40))
    .option('--concurrent-connections <n>', 'live connections per concurrently migrated workload (default 20)', count('--concurrent-connections', 1, 2000))
    .option('--alone-runs <n>', 'round trips of one workload, alone, for the baseline freeze (default 2)', count('--alone-runs', 1, 20))
    .option('--max-per-host <n>', "the drain's per-host limit (default: the controller's)", count('--max-per-host', 0, 256), 0)
    .option('--max-in-flight <n>', "the drain's fleet-wide limit (default: the controller's)", count('--max-in-flight', 0, 256), 0)
    .option('--quick', 'CI-sized: 2 workloads × 10 connections, 3 at once, one round trip alone (explicit options win)')
    .option('--json', "the issue's JSON lines on stdout")
    .parse(argv, { from: 'user' })
    .opts<Partial<Options> & { quick?: boolean; maxPerHost: number; maxInFlight: number }>();
  const q = !!o.quick;
  return {
    workloads: o.workloads ?? (q ? QUICK.workloads : 5),
    connections: o.connections ?? (q ? QUICK.connections : 100),
    concurrent: o.concurrent ?? (q ? QUICK.concurrent : 10),
    concurrentConnections: o.concurrentConnections ?? (q ? QUICK.concurrentConnections : 20),
    aloneRuns: o.aloneRuns ?? (q ? QUICK.aloneRuns : 2),
    maxPerHost: o.maxPerHost,
    maxInFlight: o.maxInFlight,
    json: !!o.json,
  };
}

/** Drain(host) and its end: the one place the bench asks for a drain (gRPC now; the NATS request API can take its place). */
/** The drain, asked and followed through the NATS request API only (godwit.api.v1.Drain, WatchDrain), as automation would. */
export async function requestDrain(lab: Lab, host: string, limits: { maxPerHost: number; maxInFlight: number }): Promise<DrainRecord__Output> {
  const bus = await Bus.connect({ servers: lab.natsUrl, name: 'bench-drain' });
  try {
    const api = new NatsApiClient(bus);
    const d = await api.call<DrainRecord__Output>('Drain', { host, max_per_host: limits.maxPerHost, max_in_flight: limits.maxInFlight });
    let last = d;
    for await (const r of api.stream<DrainRecord__Output>('WatchDrain', { id: d.id })) {
      say(`  drain ${r.id}: ${r.moved} moved, ${r.failed} failed, ${r.workloads.filter((w) => w.state === 'MOVING').length} moving`);
      last = r;
      if (r.state !== 'RUNNING') break;
    }
    return last.state !== 'RUNNING' ? last : await api.call<DrainRecord__Output>('GetDrain', { id: d.id });
  } finally {
    await bus.close();
  }
}

export async function run(argv: string[]): Promise<number> {
  const parsed = optionsOrExit(parseOptions, argv);
  if ('exitCode' in parsed) return parsed.exitCode;
  const o = parsed;
  const out = o.json ? say : (line: string) => process.stdout.write(line + '\n');
  say(`bench drain: ${o.workloads} workloads × ${o.connections} connections drained; ${o.concurrent} migrations at once (3-host lab)`);
  const lab = await labUp({ hosts: HOSTS });
  const fleet = new FleetApi(lab.controllerAddress);
  let ws: FleetWorkload[] = [];
  let drain: DrainRow | undefined;
  let concurrent: ConcurrentRow | undefined;
  try {
    // Drain.
    ws = await startFleetWorkloads(lab, fleet, 'a', { prefix: 'drain', count: o.workloads, connections: o.connections });
    say(`  ${o.workloads} workloads on a, ${o.workloads * o.connections} connections up`);
    let before = await openWindows(ws);
    const t0 = performance.now();
    const d = await requestDrain(lab, 'a', o);
    const drainMs = performance.now() - t0;
    let checks = await checkConnections(ws, before);
    drain = {
      kind: 'drain',
      workloads: o.workloads,
      moved: d.moved,
      failed: d.failed,
      drainMs,
      connections: o.workloads * o.connections,
      survived: sum(checks.map((c) => c.alive)),
      bytesLost: sum(checks.map((c) => c.bytesLost)),
    };
    for (const w of d.workloads) if (w.state !== 'MOVED') say(`  ${w.name} did not move: ${w.error}`);
    await stopFleetTraffic(ws);
    await stopRegistered(lab, ws);
    ws = [];
    await fleet.uncordon('a');

    if (o.concurrent > 0) {
      ws = await startFleetWorkloads(lab, fleet, 'a', { prefix: 'conc', count: o.concurrent, connections: o.concurrentConnections, firstAddress: o.workloads });
      say(`  ${o.concurrent} workloads on a, ${o.concurrent * o.concurrentConnections} connections up`);
      // Alone first: one workload there and back, one migration at a time.
      const alone: number[] = [];
      for (let i = 0; i < o.aloneRuns; i++) {
        for (const to of ['b', 'a']) {
          const m = await lab.controller.wait((await lab.controller.migrate({ workloadName: ws[0].name, targetHost: to })).id);
          if (m.phase === 'DONE') alone.push(m.freezeMs);
          else say(`  alone ${ws[0].name} -> ${to} failed: ${m.error}`);
        }
      }
      before = await openWindows(ws);
      const accepted = await Promise.all(ws.map((w) => lab.controller.migrate({ workloadName: w.name, targetHost: 'b' })));
      const ended = await Promise.all(accepted.map((m) => lab.controller.wait(m.id)));
      for (const m of ended) if (m.phase !== 'DONE') say(`  ${m.request?.workloadName} failed: ${m.error}`);
      checks = await checkConnections(ws, before);
      const done = ended.filter((m) => m.phase === 'DONE');
      concurrent = {
        kind: 'concurrent',
        migrations: o.concurrent,
        done: done.length,
        freezeMsMedian: median(done.map((m) => m.freezeMs)),
        freezeMsAloneMedian: median(alone),
        survived: sum(checks.map((c) => c.alive)),
        connections: o.concurrent * o.concurrentConnections,
        bytesLost: sum(checks.map((c) => c.bytesLost)),
      };
    }
  } finally {
    await stopFleetTraffic(ws);
    fleet.close();
    await lab.down();
  }
  out(reportTable(drain, concurrent));
  if (o.json) {
    if (drain) process.stdout.write(drainJson(drain) + '\n');
    if (concurrent) process.stdout.write(concurrentJson(concurrent) + '\n');
  }
  const ok = drain !== undefined && drain.failed === 0 && drain.bytesLost === 0 && (!concurrent || (concurrent.done === concurrent.migrations && concurrent.bytesLost === 0));
  return ok ? 0 : 1;
}

/** Stops the workloads where the registry says they run now (their PIDs changed with the move). */
async function stopRegistered(lab: Lab, ws: readonly FleetWorkload[]): Promise<void> {
  const names = new Set(ws.map((w) => w.name));
  const listed = (await lab.controller.listWorkloads()).workloads.filter((w) => names.has(w.name));
  await Promise.all(listed.map((w) => stopWorkload(w.pid).catch(() => undefined)));
}

const sum = (xs: readonly number[]) => xs.reduce((s, x) => s + x, 0);
