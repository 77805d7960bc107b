/**
 * `npm run bench -- follow`: what it costs for steering to follow a workload that moves.
 *
 * Kinds of measurement (--kinds, default handoff,migration), each registered in FOLLOW_KINDS:
 *   handoff     a workload's flow entries (1,000 / 10,000 / 100,000: --entries) exported from
 *               one host's pinned steering maps, through the image's steering file, into a
 *               fresh second host's; count and digest checked (bench/follow-handoff.ts).
 *               Target: 100,000 entries in <= 100 ms.
 *   migration   one migration a -> b per measurement in the routed lab, at 0 / 1,000 / 5,000
 *               connections through a VIP (--connections) plus --direct ones straight to the
 *               workload's address: freeze, steer convergence (inside the freeze or not),
 *               packets forwarded by the old host, entries handed off, longest client stall,
 *               survivors, bytes lost, resets (bench/follow-migration.ts).
 *   churn       --migrations successive migrations a -> b -> c -> a ... of one workload with
 *               --tcp connections and --udp flows alive through two VIPs: broken flows (target
 *               0), bytes lost, longest gap per flow (bench/follow-churn.ts). Not in the default
 *               kinds (100 migrations take a while): --kinds churn.
 *
 * A readable table per kind on stdout, or with --json one JSON line per measured size
 * ({"kind":"handoff","entries","exportMs","importMs","lost",...}). Every row is also appended
 * to <results>/follow.jsonl; a kind may draw its plot there (follow-handoff.svg).
 * Options: --kinds a,b  --entries 1000,10000,100000  --connections 0,1000,5000  --runs 3
 *          --direct 20  --migrations 100 --tcp 1000 --udp 1000
 *          --rnat (the handoff also moves one reverse-NAT entry per flow)  --json  --results DIR
 */
import { appendFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { REPO_ROOT } from '../lib/rpc.js';

export interface FollowOptions {
  kinds: string[];
  /** handoff: flow entries per measurement. */
  entries: number[];
  /** migration: live connections per measurement. */
  connections: number[];
  /** migration: connections straight to the workload's address. */
  direct: number;
  /** churn: successive migrations, TCP connections, UDP flows. */
  migrations: number;
  tcp: number;
  udp: number;
  /** Measurements per size. */
  runs: number;
  /** handoff: also one reverse-NAT entry per flow. */
  rnat: boolean;
  json: boolean;
  /** Folder of follow.jsonl and the plots. */
  results: string;
}

/** What a kind reports through. */
export interface FollowIo {
  /** Progress and notes, on stderr. */
  say(line: string): void;
  /** One summary row: a JSON line on stdout with --json, and appended to follow.jsonl always. */
  emit(row: { kind: string } & Record<string, unknown>): void;
}

export interface FollowKind {
  /**
   * Runs the kind's measurements; returns its readable table (printed without --json) and
   * whether every measurement passed its checks (a lost entry or byte fails the bench).
   */
  run(opts: FollowOptions, io: FollowIo): Promise<{ table: string; ok: boolean }>;
}

/** The kinds of measurement by name, loaded when asked for. */
export const FOLLOW_KINDS: Record<string, () => Promise<FollowKind>> = {
  handoff: async () => (await import('./follow-handoff.js')).handoffKind,
  migration: async () => (await import('./follow-migration.js')).migrationKind,
  churn: async () => (await import('./follow-churn.js')).churnKind,
};

export const DEFAULT_KINDS = ['handoff', 'migration'];

function numbers(what: string): (v: string) => number[] {
  return (v) => {
    const xs = v.split(',').map((s) => Number(s.trim()));
    if (xs.length === 0 || xs.some((x) => !Number.isInteger(x) || x < 0)) throw new InvalidArgumentError(`${what}: a comma-separated list of whole numbers`);
    return xs;
  };
}

export function parseOptions(argv: string[]): FollowOptions {
  const o = new Command()
    .name('follow')
    .option('--kinds <list>', `what to measure (${DEFAULT_KINDS.join(', ')})`, (v) => v.split(',').map((s) => s.trim()).filter(Boolean), DEFAULT_KINDS)
    .option('--entries <list>', 'handoff: flow entries per measurement', numbers('--entries'), [1_000, 10_000, 100_000])
    .option('--connections <list>', 'migration: live connections per measurement', numbers('--connections'), [0, 1_000, 5_000])
    .option('--direct <n>', 'migration: connections straight to the workload address (the old host forwards them)', (v) => numbers('--direct')(v)[0], 20)
    .option('--migrations <n>', 'churn: successive migrations', (v) => numbers('--migrations')(v)[0], 100)
    .option('--tcp <n>', 'churn: TCP connections through the VIP', (v) => numbers('--tcp')(v)[0], 1000)
    .option('--udp <n>', 'churn: UDP flows through the VIP', (v) => numbers('--udp')(v)[0], 1000)
    .option('--runs <n>', 'measurements per size', (v) => numbers('--runs')(v)[0], 3)
    .option('--rnat', 'handoff: also one reverse-NAT entry per flow')
    .option('--json', 'one JSON line per measured size on stdout instead of the tables')
    .option('--results <dir>', 'where follow.jsonl and the plots go', join(REPO_ROOT, 'bench', 'results'))
    .exitOverride()
    .parse(argv, { from: 'user' })
    .opts<{ kinds: string[]; entries: number[]; connections: number[]; direct: number; migrations: number; tcp: number; udp: number; runs: number; rnat?: boolean; json?: boolean; results: string }>();
  if (o.runs < 1) throw new InvalidArgumentError('--runs: at least 1');
  if (o.migrations < 1) throw new InvalidArgumentError('--migrations: at least 1');
  return {
    kinds: o.kinds,
    entries: o.entries,
    connections: o.connections,
    direct: o.direct,
    migrations: o.migrations,
    tcp: o.tcp,
    udp: o.udp,
    runs: o.runs,
    rnat: o.rnat === true,
    json: o.json === true,
    results: o.results,
  };
}

export async function run(argv: string[]): Promise<number> {
  const opts = parseOptions(argv);
  const missing = opts.kinds.filter((k) => !FOLLOW_KINDS[k]);
  mkdirSync(opts.results, { recursive: true });
  const io: FollowIo = {
    say: (line) => process.stderr.write(line + '\n'),
    emit: (row) => {
      appendFileSync(join(opts.results, 'follow.jsonl'), JSON.stringify(row) + '\n');
      if (opts.json) process.stdout.write(JSON.stringify(row) + '\n');
    },
  };
  let ok = true;
  for (const name of opts.kinds) {
    const load = FOLLOW_KINDS[name];
    if (!load) continue;
    const r = await (await load()).run(opts, io);
    ok &&= r.ok;
    if (!opts.json) process.stdout.write(`follow ${name}\n\n${r.table}\n\n`);
  }
  // Said last, so that it is not lost above the tables.
  for (const k of missing) io.say(`follow: kind "${k}" is not built (known: ${Object.keys(FOLLOW_KINDS).join(', ')}); nothing measured for it`);
  io.say(`rows appended to ${join(opts.results, 'follow.jsonl')}`);
  return ok && missing.length === 0 ? 0 : 1;
}
