/**
 * `npm run bench -- freeze`: where a migration's freeze goes, and how much of it is godwit's own.
 *
 * For each size (live connections × MiB of touched memory the workload holds), --runs times:
 *   criu-alone   the same workload dumped and restored on one host by CRIU directly
 *                (bench/freeze-criu.ts): the floor
 *   migration    a → b (then b → a, and so on) through the controller with a client checking every byte; every phase
 *                and every agent step comes from the migration record; with memory, once with
 *                a plain dump and once with --post-copy
 * godwit's overhead = freeze − (CRIU dump + CRIU restore) of the same migration, in % of the latter.
 *
 * Output: a table per measurement, a summary of medians against the targets, the breakdown of
 * the freeze by phase and step, and a plot (freeze.svg); --json prints one JSON line per
 * measurement on stdout (the tables then go to stderr). Every row is appended to freeze.jsonl.
 * Options: --connections 0,1000,5000  --memory 0,256,1024  --runs 3  --post-copy both|on|off
 *          --no-criu-alone  --criu-log-level N  --quick (CI: small sizes, one run)  --json  --results DIR
 */
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { DEFAULT_CRIU_LOG_LEVEL, parseLogLevel } from '../agent/linux/criu.js';
import { parseEndpoint } from '../lib/endpoint.js';
import { execCommand } from '../lib/exec.js';
import { REPO_ROOT } from '../lib/rpc.js';
import { migrateHop } from '../lab/hop.js';
import { labUp, startLabWorkload, type Lab } from '../lab/lab.js';
import { memcheck, startMemoryWorkload } from '../lab/memory-workload.js';
import type { Endpoint } from '../lib/endpoint.js';
import { startTraffic, type TrafficHandle } from '../lab/traffic.js';
import { criuAlone } from './freeze-criu.js';
import { breakdownTable, CRIU_DUMP_STEPS, CRIU_RESTORE_STEPS, emptyRow, FREEZE_PHASES, freezeSvg, measurementTable, stepMs, summaryTable, withOverhead, type FreezeRow } from './freeze-report.js';
import { Cleanup, echoServers } from './lab-cleanup.js';
import { optionsOrExit } from './cli-options.js';

const PORT = 7000;
const CONTROL_PORT = 7001;
const WARMUP_MS = 1_000;
const SETTLE_TIMEOUT_MS = 240_000;
const DRAIN_TIMEOUT_MS = 60_000;
const QUICK = { connections: [0, 200], memory: [0], runs: 1 };

type PostCopyChoice = 'both' | 'on' | 'off';

interface Options {
  connections: number[];
  memory: number[];
  runs: number;
  postCopy: PostCopyChoice;
  criuAlone: boolean;
  criuLogLevel: number;
  json: boolean;
  results: string;
}

const say = (line: string) => process.stderr.write(line + '\n');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function numbers(what: string, max: number): (v: string) => number[] {
  return (v) => {
    const items = v.split(',').map((s) => s.trim()).filter(Boolean);
    if (items.length === 0) throw new InvalidArgumentError(`${what}: give at least one`);
    return items.map((s) => {
      const n = Number(s);
      if (!Number.isInteger(n) || n < 0 || n > max) throw new InvalidArgumentError(`${what}: "${s}" is not a whole number 0..${max}`);
      return n;
    });
  };
}

export function parseOptions(argv: string[]): Options {
  const o = new Command()
    .name('bench freeze')
    .exitOverride()
    .option('--connections <list>', 'live connections per size, comma-separated (default 0,1000,5000)', numbers('--connections', 20_000))
    .option('--memory <list>', 'MiB of touched, changing memory the workload holds, comma-separated (default 0,256,1024)', numbers('--memory', 16_384))
    .option('--runs <n>', 'measurements per size (default 3)', (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`--runs: "${v}" is not a positive whole number`);
      return n;
    })
    .addOption(new Option('--post-copy <which>', 'with memory: migrate with a plain dump, with post-copy, or both').choices(['both', 'on', 'off']).default('both'))
    .option('--no-criu-alone', 'skip the CRIU-alone rows')
    .option('--criu-log-level <n>', 'CRIU -v for the agents and CRIU alone', (v) => {
      try {
        return parseLogLevel(v);
      } catch (e) {
        throw new InvalidArgumentError((e as Error).message);
      }
    }, DEFAULT_CRIU_LOG_LEVEL)
    .option('--quick', `CI-sized: ${QUICK.connections.join(',')} connections, ${QUICK.memory.join(',')} MiB, one run (explicit options win)`)
    .option('--json', 'one JSON line per measurement on stdout')
    .option('--results <dir>', 'where freeze.jsonl and freeze.svg go', join(REPO_ROOT, 'bench', 'results'))
    .parse(argv, { from: 'user' })
    .opts<{ connections?: number[]; memory?: number[]; runs?: number; postCopy: PostCopyChoice; criuAlone: boolean; criuLogLevel: number; quick?: boolean; json?: boolean; results: string }>();
  const q = !!o.quick;
  return {
    connections: o.connections ?? (q ? QUICK.connections : [0, 1000, 5000]),
    memory: o.memory ?? (q ? QUICK.memory : [0, 256, 1024]),
    runs: o.runs ?? (q ? QUICK.runs : 3),
    postCopy: o.postCopy,
    criuAlone: o.criuAlone,
    criuLogLevel: o.criuLogLevel,
    json: !!o.json,
    results: o.results,
  };
}

/** The workload of a size: the echo server, holding memory when asked. */
interface BenchWorkload {
  start(lab: Lab, host: string): Promise<{ pid: number }>;
  /** The workload's memory as it should be, asked of it where it runs now (null: it holds none). */
  memoryIntact(lab: Lab, host: string): Promise<boolean | null>;
}

function workloadFor(memoryMiB: number): BenchWorkload {
  if (memoryMiB === 0)
    return {
      start: async (lab, host) => {
        await forgetWorkloadMac(lab);
        return startLabWorkload(lab, host, PORT);
      },
      memoryIntact: async () => null,
    };
  // The echo server holding memoryMiB of touched, changing memory (lab/memory-workload.ts).
  const w = { endpoint: undefined as Endpoint | undefined };
  return {
    start: async (lab, host) => {
      await forgetWorkloadMac(lab);
      const started = await startMemoryWorkload(lab, host, { port: PORT, controlPort: CONTROL_PORT, memoryMiB });
      w.endpoint = started.endpoint;
      return started;
    },
    memoryIntact: async (lab) => (await memcheck(lab, { endpoint: w.endpoint!, controlPort: CONTROL_PORT })).pagesBad === 0,
  };
}

/** The client may still map the workload address to the host where the previous measurement left it. */
async function forgetWorkloadMac(lab: Lab): Promise<void> {
  await execCommand('ip', ['-n', lab.topology.client.netns, 'neigh', 'flush', 'to', lab.topology.workloadAddress(0)], { allowFailure: true });
}

export async function run(argv: string[]): Promise<number> {
  const opts = optionsOrExit(parseOptions, argv);
  if ('exitCode' in opts) return opts.exitCode;
  mkdirSync(opts.results, { recursive: true });
  const jsonl = join(opts.results, 'freeze.jsonl');
  const svg = join(opts.results, 'freeze.svg');
  const started = Date.now();
  let rows: FreezeRow[];
  try {
    rows = await measureFreeze({
      ...opts,
      log: say,
      onRow: (row, all) => {
        appendFileSync(jsonl, JSON.stringify(jsonLine(row)) + '\n');
        if (opts.json) process.stdout.write(JSON.stringify(jsonLine(row)) + '\n');
        writeFileSync(svg, freezeSvg(all));
      },
    });
  } catch (e) {
    if (!(e instanceof InvalidArgumentError)) throw e;
    say(`bench freeze: ${e.message}`);
    return 2;
  }
  const text = `${measurementTable(rows)}\n\n${summaryTable(rows)}\n\n${breakdownTable(rows)}\n`;
  if (opts.json) process.stderr.write(text);
  else process.stdout.write(text);
  say(`bench freeze: ${rows.length} measurements in ${((Date.now() - started) / 60_000).toFixed(1)} min; appended to ${jsonl}; plot ${svg}`);
  return rows.every((r) => r.ok) ? 0 : 1;
}

/** A row as one JSON line: the fields issue 10 names first, then the rest. */
export function jsonLine(r: FreezeRow): Record<string, unknown> {
  const { connections, memoryMiB, postCopy, freezeMs, criuDumpMs, criuRestoreMs, overheadPct, survived, bytesLost, memoryIntact, ...rest } = r;
  return { connections, memoryMiB, postCopy, freezeMs, criuDumpMs, criuRestoreMs, overheadPct, survived, bytesLost, memoryIntact, ...rest };
}

export interface FreezeRun extends Omit<Options, 'json' | 'results'> {
  log: (line: string) => void;
  /** Each row as it is measured, with every row so far. */
  onRow?: (row: FreezeRow, all: readonly FreezeRow[]) => void;
}

/** Every measurement of the run, in one lab brought up and down here. */
export async function measureFreeze(opts: FreezeRun): Promise<FreezeRow[]> {
  const workloads = new Map(opts.memory.map((m) => [m, workloadFor(m)]));
  const rows: FreezeRow[] = [];
  let lab: Lab | undefined;
  let current: Cleanup | undefined;
  const cleanupAll = async () => {
    await current?.run().catch(() => undefined);
    await lab?.down().catch((e: Error) => opts.log(`lab down: ${e.message}`));
    lab = undefined;
  };
  const onSignal = () => void cleanupAll().then(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const variants = (mem: number): boolean[] => (mem === 0 || opts.postCopy === 'off' ? [false] : opts.postCopy === 'on' ? [true] : [false, true]);
  // Where the steering table places the workload's address: a migration moves it there for good
  // (until the next migration), so every measurement starts its workload where the last one left it.
  const place = { home: 'a' };
  try {
    opts.log(`bench freeze: connections ${opts.connections.join(',')}, memory ${opts.memory.join(',')} MiB, ${opts.runs} run(s), CRIU -v${opts.criuLogLevel}`);
    lab = await labUp({ hosts: ['a', 'b'], agentFlags: ['--criu-log-level', String(opts.criuLogLevel)] });
    for (const mem of opts.memory) {
      const workload = workloads.get(mem)!;
      for (const n of opts.connections) {
        for (let r = 1; r <= opts.runs; r++) {
          const measurements: ((c: Cleanup) => Promise<FreezeRow>)[] = [];
          if (opts.criuAlone) measurements.push((c) => criuAlone(lab!, { host: place.home, connections: n, run: r, port: PORT, logLevel: opts.criuLogLevel, start: workload.start, memoryMiB: mem }, c));
          for (const postCopy of variants(mem)) measurements.push((c) => migration(lab!, workload, { connections: n, memoryMiB: mem, postCopy, run: r, logLevel: opts.criuLogLevel }, place, c));
          for (const measure of measurements) {
            current = new Cleanup(lab);
            let row: FreezeRow;
            try {
              row = await measure(current);
            } finally {
              await current.run().catch((e: Error) => opts.log(`  cleanup: ${e.message}`));
              current = undefined;
            }
            rows.push(row);
            opts.onRow?.(row, rows);
            opts.log(
              `  ${row.kind} N=${n} ${mem} MiB${row.postCopy ? ' post-copy' : ''} run ${r}: ${row.ok ? 'ok' : 'FAILED'} freeze ${row.freezeMs.toFixed(0)} ms ` +
                `(CRIU ${row.criuDumpMs.toFixed(0)} + ${row.criuRestoreMs.toFixed(0)}, overhead ${row.overheadPct.toFixed(0)}%)${row.error ? ` — ${row.error}` : ''}`,
            );
          }
        }
      }
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanupAll();
  }
  return rows;
}

interface MigrationSpec {
  connections: number;
  memoryMiB: number;
  postCopy: boolean;
  run: number;
  logLevel: number;
}

async function migration(lab: Lab, workload: BenchWorkload, spec: MigrationSpec, place: { home: string }, cleanup: Cleanup): Promise<FreezeRow> {
  const from = place.home;
  const to = from === 'a' ? 'b' : 'a';
  let row = emptyRow({ kind: 'migration', connections: spec.connections, memoryMiB: spec.memoryMiB, postCopy: spec.postCopy, run: spec.run, criuLogLevel: spec.logLevel });
  try {
    const vip = lab.topology.workloadAddress(0);
    const { pid } = await workload.start(lab, from);
    cleanup.pids.push(pid);
    let traffic: TrafficHandle | undefined;
    if (spec.connections > 0) {
      traffic = startTraffic(lab.topology.client, { address: vip, port: PORT }, { connections: spec.connections, seed: spec.run, connectTimeoutMs: 120_000 });
      cleanup.traffic = traffic;
      await traffic.ready;
    }
    await sleep(WARMUP_MS);
    const hop = await migrateHop(lab.controller, traffic, { from, to, pid, endpoints: [parseEndpoint(`tcp://${vip}:${PORT}`)], postCopy: spec.postCopy, settleTimeoutMs: SETTLE_TIMEOUT_MS });
    if (hop.pid) cleanup.pids.push(hop.pid);
    if (hop.phase === 'DONE') place.home = to;
    const m = await lab.controller.getMigration(hop.migrationId);
    const phases = Object.fromEntries(FREEZE_PHASES.map((p) => [p, m.timings.filter((t) => t.phase === p).reduce((s, t) => s + t.durationMs, 0)]));
    row = {
      ...row,
      ok: hop.phase === 'DONE',
      error: hop.error,
      freezeMs: hop.freezeMs,
      criuDumpMs: stepMs(hop.steps, 'DUMP', CRIU_DUMP_STEPS),
      criuRestoreMs: stepMs(hop.steps, 'RESTORE', CRIU_RESTORE_STEPS),
      lazyPagesMs: m.lazyPagesMs,
      phases,
      // By role, not host name: the runs alternate a -> b and b -> a, and the medians join them.
      steps: hop.steps.map((st) => ({ ...st, host: st.host === from ? 'source' : st.host === to ? 'target' : st.host })),
      maxStallMs: hop.maxStallMs,
      imageBytes: hop.imageBytes,
    };
    row.memoryIntact = hop.phase === 'DONE' ? await workload.memoryIntact(lab, to) : null;
    if (row.memoryIntact === false) {
      row.ok = false;
      row.error = 'the workload\'s memory differs after the move';
    }
    const running = (await echoServers(lab)).length > 0;
    if (traffic) {
      const final = await traffic.drain(DRAIN_TIMEOUT_MS);
      row.survived = running ? final.alive : 0;
      row.bytesLost = final.bytesLost;
      if (row.ok && (final.bytesLost > 0 || final.bytesDuplicated > 0 || final.corrupted > 0 || row.survived < spec.connections)) {
        row.ok = false;
        row.error = `client: ${row.survived}/${spec.connections} alive, ${final.bytesLost} B lost, ${final.bytesDuplicated} B duplicated, ${final.corrupted} corrupted`;
      }
    }
  } catch (e) {
    row.ok = false;
    row.error = row.error || (e instanceof Error ? e.message.slice(0, 300) : String(e));
  }
  return { ...row, ...withOverhead(row) };
}
