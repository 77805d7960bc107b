/**
 * `npm run bench -- faults`: the fault matrix. In a lab with live checked connections (default
 * 200), each of {controller, source agent, target agent, nats-server} is killed with SIGKILL at
 * each point of a migration (bench/fault-case.ts names them), then started again; for the
 * controller also with a standby taking over. One row per case: outcome, whether the workload
 * runs exactly once, connections and bytes, what was left on the hosts, events in order.
 *
 * Options: --parts controller,nats  --points after-lock,during-dump  --no-standby
 *          --connections N  --quick (CI's subset: one case or more per killed part)  --json (one
 *          line per case on stdout; the table then goes to stderr)  --results DIR
 * Every row is appended to bench/results/faults.jsonl.
 */
import { appendFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { REPO_ROOT } from '../lib/rpc.js';
import { FAULT_PARTS, FAULT_POINTS, runFaultCase, setupFaultEnv, teardownFaultEnv, type FaultCase, type FaultEnv, type FaultPart, type FaultPoint, type FaultRow } from './fault-case.js';
import { faultTable, jsonLine, matrixCases, QUICK_CASES, summaryLine } from './faults-report.js';
import { optionsOrExit } from './cli-options.js';

interface Options {
  parts: FaultPart[];
  points: FaultPoint[];
  standby: boolean;
  connections: number;
  quick: boolean;
  json: boolean;
  results: string;
  natsCluster?: number;
}

function listOf<T extends string>(all: readonly T[]) {
  return (text: string): T[] => {
    const xs = text.split(',').map((s) => s.trim()).filter(Boolean);
    for (const x of xs) if (!all.includes(x as T)) throw new InvalidArgumentError(`"${x}" is not one of ${all.join(', ')}`);
    return xs as T[];
  };
}

function parse(argv: string[]): Options {
  return new Command()
    .name('bench faults')
    .exitOverride()
    .option('--parts <list>', `parts to kill: ${FAULT_PARTS.join(',')}`, listOf(FAULT_PARTS), [...FAULT_PARTS])
    .option('--points <list>', `points to kill at: ${FAULT_POINTS.join(',')}`, listOf(FAULT_POINTS), [...FAULT_POINTS])
    .option('--no-standby', 'no controller cases where a standby takes over')
    .option('--connections <n>', 'live checked connections', (v) => Number(v), 200)
    .option('--quick', 'CI subset: one case or more per killed part', false)
    .option('--json', 'one JSON line per case on stdout', false)
    .option('--nats-cluster <n>', 'also run the nats cases on a lab with N clustered nats-servers, killing one', (v) => Number(v))
    .option('--results <dir>', 'where faults.jsonl goes', join(REPO_ROOT, 'bench', 'results'))
    .parse(argv, { from: 'user' })
    .opts<Options>();
}

export async function run(argv: string[]): Promise<number> {
  const o = optionsOrExit(parse, argv);
  if ('exitCode' in o) return o.exitCode;
  const cases: FaultCase[] = o.quick ? [...QUICK_CASES] : matrixCases(o.parts, o.points, o.standby);
  const say = (line: string) => process.stderr.write(`${line}\n`);
  mkdirSync(o.results, { recursive: true });
  const rows: FaultRow[] = [];
  const runs: { cases: FaultCase[]; natsCluster?: number }[] = [{ cases }];
  if (o.natsCluster) runs.push({ cases: cases.filter((c) => c.killed === 'nats'), natsCluster: o.natsCluster });
  for (const r of runs) if (r.cases.length > 0) await runAll(o, r.cases, r.natsCluster, rows, say);
  const out = o.json ? say : (s: string) => process.stdout.write(`${s}\n`);
  out(faultTable(rows));
  out(summaryLine(rows));
  return rows.every((r) => r.safe) ? 0 : 1;
}

async function runAll(o: Options, cases: FaultCase[], natsCluster: number | undefined, rows: FaultRow[], say: (line: string) => void): Promise<void> {
  let env: FaultEnv | undefined;
  // A lab can fail to come up on a machine where other labs come and go (a namespace gone under
  // it): a few tries before the run gives up.
  const setup = async (): Promise<FaultEnv> => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await setupFaultEnv({ connections: o.connections, log: say, natsCluster });
      } catch (err) {
        if (attempt >= 3) throw err;
        say(`lab did not come up (${err instanceof Error ? err.message : String(err)}); trying again`);
      }
    }
  };
  try {
    env = await setup();
    for (const c of cases) {
      let row: FaultRow;
      try {
        row = await runFaultCase(env, c);
      } catch (err) {
        // A case that could not be run at all (the lab broke): say so, and start a fresh lab.
        say(`case ${c.killed} @ ${c.point} could not run: ${err instanceof Error ? err.message : String(err)}`);
        row = { ...c, migrationId: '', from: '', to: '', killedAtPoint: false, outcome: 'UNFINISHED', error: String(err), safe: false, exactlyOnce: false, survived: '?', connections: o.connections, alive: 0, bytesLost: 0, bytesDuplicated: 0, leftovers: ['case did not run'], eventsInOrder: false, recoveredMs: 0, nats: natsCluster ? `cluster-${natsCluster}` : 'single' };
        await teardownFaultEnv(env);
        env = undefined;
        env = await setup();
      }
      rows.push(row);
      appendFileSync(join(o.results, 'faults.jsonl'), `${JSON.stringify({ at: new Date().toISOString(), ...row })}\n`);
      if (o.json) process.stdout.write(`${jsonLine(row)}\n`);
      say(`  -> ${row.outcome} safe=${row.safe} once=${row.exactlyOnce} on=${row.survived} alive=${row.alive}/${row.connections} lost=${row.bytesLost} leftovers=${row.leftovers.length} events=${row.eventsInOrder}`);
    }
  } finally {
    await teardownFaultEnv(env);
  }
}
