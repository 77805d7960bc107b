/**
 * `npm run bench -- bad-input`: malformed requests (bench/bad-input-gen.ts) against every public
 * gRPC method of a running lab - the controller API, the steering API and an agent's API - and
 * the checks that matter to an operator:
 *  - every request is answered with INVALID_ARGUMENT, NOT_FOUND or FAILED_PRECONDITION;
 *  - no godwit process crashes;
 *  - nothing changes on any host: the agents' state folders, lock entries, migrations,
 *    workloads, steering services, the processes in each host;
 *  - no file is written anywhere under a name the requests carried (the canary).
 * A table per method on stdout, or one JSON line per method and a summary with --json.
 */
import { randomBytes } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import * as grpc from '@grpc/grpc-js';
import type { ListServicesResponse__Output } from '../proto/gen/godwit/v1/ListServicesResponse.js';
import { EbpfNetLock } from '../agent/linux/netlock-ebpf.js';
import { execCommand } from '../lib/exec.js';
import { MAX_MESSAGE_BYTES, REPO_ROOT, steeringClient, unary } from '../lib/rpc.js';
import { agentPinDir, labUp, startLabWorkload, type Lab } from '../lab/lab.js';
import { processAlive } from '../lab/workload.js';
import { IMAGE_TOKEN_METADATA, signImageToken } from '../lib/migration-token.js';
import { channelCredentials, channelSecurityOptions, INSECURE } from '../lib/tls.js';
import { badRequests, loadMethods, type MethodShape } from './bad-input-gen.js';
import { optionsOrExit } from './cli-options.js';
import { Cleanup } from './lab-cleanup.js';

/** What a malformed request may be answered with. */
export const EXPECTED_CODES: ReadonlySet<grpc.status> = new Set([grpc.status.INVALID_ARGUMENT, grpc.status.NOT_FOUND, grpc.status.FAILED_PRECONDITION]);
/** Long: a loaded 2-core machine answers some requests (starting a process, reading a tree) slowly. */
const CALL_DEADLINE_MS = 60_000;

function expected(code: grpc.status, requestBytes: number): boolean {
  // gRPC's own refusal of an oversized message (lib/rpc.ts MAX_MESSAGE_BYTES).
  return EXPECTED_CODES.has(code) || (code === grpc.status.RESOURCE_EXHAUSTED && requestBytes > MAX_MESSAGE_BYTES);
}

export interface Options {
  perMethod: number;
  seed: number;
  concurrency: number;
  json: boolean;
}

export interface MethodResult {
  kind: 'method';
  method: string;
  requests: number;
  /** status name -> count */
  codes: Record<string, number>;
  /** Requests answered with anything but the expected codes, a few kept as examples. */
  unexpected: number;
  examples: string[];
}

export interface Summary {
  kind: 'summary';
  methods: number;
  requests: number;
  unexpected: number;
  crashed: string[];
  changed: string[];
  escapedFiles: string[];
  clean: boolean;
}

export function parseOptions(argv: string[]): Options {
  const whole = (what: string, min: number) => (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${what}: "${v}" is not a whole number >= ${min}`);
    return n;
  };
  const o = new Command()
    .name('bench bad-input')
    .exitOverride()
    .option('--per-method <n>', 'malformed requests per method', whole('--per-method', 1), 1000)
    .option('--seed <n>', 'generator seed (the same seed makes the same requests)', whole('--seed', 1), 20261202)
    .option('--concurrency <n>', 'requests in flight', whole('--concurrency', 1), 16)
    .option('--json', 'one JSON line per method, then a summary line')
    .parse(argv, { from: 'user' })
    .opts<{ perMethod: number; seed: number; concurrency: number; json?: boolean }>();
  return { perMethod: o.perMethod, seed: o.seed, concurrency: o.concurrency, json: !!o.json };
}

export async function run(argv: string[]): Promise<number> {
  const o = optionsOrExit(parseOptions, argv);
  if ('exitCode' in o) return o.exitCode;
  const lab = await labUp({ hosts: ['a', 'b'] });
  const cleanup = new Cleanup(lab);
  try {
    const { results, summary } = await fuzzLab(lab, o, cleanup);
    if (o.json) {
      for (const r of results) process.stdout.write(JSON.stringify(r) + '\n');
      process.stdout.write(JSON.stringify(summary) + '\n');
    } else {
      process.stdout.write(table(results, summary));
    }
    return summary.clean ? 0 : 1;
  } finally {
    await cleanup.run().catch(() => undefined);
    await lab.down();
  }
}

/** Runs the whole set against a lab with a workload on host a; `cleanup` gets the workload. */
export async function fuzzLab(lab: Lab, o: Options, cleanup: Cleanup): Promise<{ results: MethodResult[]; summary: Summary }> {
  const workload = await startLabWorkload(lab, 'a', 7000);
  cleanup.pids.push(workload.pid);
  const canary = `gwfuzz${randomBytes(4).toString('hex')}`;
  const watched = [...lab.pids.entries()];
  const before = await snapshot(lab, workload.pid);

  const results: MethodResult[] = [];
  for (const [i, m] of loadMethods(['Controller', 'Steering', 'Agent']).entries()) {
    const caller = callerFor(lab, m);
    const client = new grpc.Client(caller.address, caller.credentials, { ...caller.options, 'grpc.max_send_message_length': 256 * 1024 * 1024 });
    try {
      results.push(await fuzzMethod(client, m, [...badRequests(m, o.perMethod, o.seed + i, canary)].map((r) => r.bytes), o.concurrency, caller));
    } finally {
      client.close();
    }
  }

  const after = await snapshot(lab, workload.pid);
  const changed = [...new Set([...Object.keys(before), ...Object.keys(after)])]
    .filter((k) => before[k] !== after[k])
    .map((k) => `${k}: ${lineChanges(before[k] ?? '', after[k] ?? '')}`);
  const crashed = watched.filter(([, pid]) => !processAlive(pid)).map(([name]) => name);
  if (!processAlive(workload.pid)) crashed.push('workload');
  const escapedFiles = await findCanary(canary, lab);
  const requests = results.reduce((s, r) => s + r.requests, 0);
  const unexpected = results.reduce((s, r) => s + r.unexpected, 0);
  return {
    results,
    summary: { kind: 'summary', methods: results.length, requests, unexpected, crashed, changed, escapedFiles, clean: unexpected === 0 && crashed.length === 0 && changed.length === 0 && escapedFiles.length === 0 },
  };
}

/**
 * Who sends a method's requests: the one role allowed to call it (lib/authz.ts), so that they
 * reach the method's own checks. The controller API as the lab's admin client, an agent's API
 * (host a) as the controller, and ReceiveImage as agent b holding the controller's image token
 * for migration TOKEN_MIGRATION from b to a: a request naming that migration reaches the stream's
 * own checks; one naming any other is refused by the token (UNAUTHENTICATED or PERMISSION_DENIED,
 * which for this method are the right answers to a malformed request too).
 */
interface Caller {
  address: string;
  credentials: grpc.ChannelCredentials;
  options: grpc.ChannelOptions;
  metadata: () => grpc.Metadata;
  expectedAlso: ReadonlySet<grpc.status>;
}

/** A migration id the generator uses among its plausible ones (bench/bad-input-gen.ts). */
const TOKEN_MIGRATION = 'm-0000-000000';

function callerFor(lab: Lab, m: MethodShape): Caller {
  const as = (who: Parameters<NonNullable<Lab['pki']>['security']>[0]) => (lab.pki ? lab.pki.security(who) : INSECURE);
  const none = new Set<grpc.status>();
  if (m.service !== 'Agent') {
    const s = as('client-admin');
    return { address: lab.controllerAddress, credentials: channelCredentials('controller', s), options: channelSecurityOptions(s), metadata: () => new grpc.Metadata(), expectedAlso: none };
  }
  if (m.method !== 'ReceiveImage') {
    const s = as('controller');
    return { address: lab.agentAddress('a'), credentials: channelCredentials('agent', s), options: channelSecurityOptions(s), metadata: () => new grpc.Metadata(), expectedAlso: none };
  }
  const s = as('agent-b');
  const controller = lab.pki?.security('controller');
  return {
    address: lab.agentAddress('a'),
    credentials: channelCredentials('agent', s),
    options: channelSecurityOptions(s),
    metadata: () => {
      const md = new grpc.Metadata();
      if (controller) md.set(IMAGE_TOKEN_METADATA, signImageToken(controller, { migrationId: TOKEN_MIGRATION, source: 'b', target: 'a' }));
      return md;
    },
    expectedAlso: new Set([grpc.status.UNAUTHENTICATED, grpc.status.PERMISSION_DENIED]),
  };
}

async function fuzzMethod(client: grpc.Client, m: MethodShape, requests: Buffer[], concurrency: number, caller: Caller): Promise<MethodResult> {
  const codes: Record<string, number> = {};
  const examples: string[] = [];
  let unexpected = 0;
  let next = 0;
  const worker = async () => {
    while (next < requests.length) {
      const bytes = requests[next++];
      const st = await call(client, m, bytes, caller.metadata());
      const name = grpc.status[st.code] ?? String(st.code);
      codes[name] = (codes[name] ?? 0) + 1;
      if (!expected(st.code, bytes.length) && !caller.expectedAlso.has(st.code)) {
        unexpected++;
        if (examples.length < 3) examples.push(`${name}: ${st.details.slice(0, 160)} <- ${bytes.subarray(0, 48).toString('hex')}`);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { kind: 'method', method: `${m.service}.${m.method}`, requests: requests.length, codes, unexpected, examples };
}

const raw = (b: Buffer) => b;

/** One call with the request's bytes as they are; resolves with the status the server answered. */
function call(client: grpc.Client, m: MethodShape, bytes: Buffer, metadata: grpc.Metadata): Promise<{ code: grpc.status; details: string }> {
  const opts = { deadline: Date.now() + CALL_DEADLINE_MS };
  return new Promise((resolve) => {
    const done = (err: grpc.ServiceError | null) => resolve(err ? { code: err.code, details: err.details } : { code: grpc.status.OK, details: '' });
    if (m.clientStream) {
      const s = client.makeClientStreamRequest(m.path, raw, raw, metadata, opts, done);
      s.write(bytes);
      s.end();
    } else if (m.serverStream) {
      // A stream that answers with data is an accepted request: the status is what counts.
      const s = client.makeServerStreamRequest(m.path, raw, raw, bytes, metadata, opts);
      let got = false;
      s.on('data', () => {
        if (!got) resolve({ code: grpc.status.OK, details: 'the stream answered with data' });
        got = true;
        s.cancel();
      });
      s.on('error', (err: grpc.ServiceError) => !got && resolve({ code: err.code, details: err.details }));
      s.on('status', (st: grpc.StatusObject) => !got && resolve({ code: st.code, details: st.details }));
    } else {
      client.makeUnaryRequest(m.path, raw, raw, bytes, metadata, opts, done);
    }
  });
}

/**
 * Everything a request could have changed, as comparable strings: each agent's state folder
 * (names and sizes), its lock entries, the processes in each host, and what the controller
 * knows (migrations, workloads, steering services, hosts' steering generations).
 */
async function snapshot(lab: Lab, workloadPid: number): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const h of lab.topology.hosts) {
    out[`${h.name}: state folder`] = listTree(join(lab.dir, 'hosts', h.name)).join('\n');
    const lock = new EbpfNetLock({ exec: execCommand, iface: h.iface, pinDir: agentPinDir(lab.topology.index, h.name), objectPath: join(REPO_ROOT, 'build', 'bpf', 'lock.o') });
    out[`${h.name}: lock entries`] = JSON.stringify(await lock.list());
    const pids = (await execCommand('ip', ['netns', 'pids', h.netns], { allowFailure: true })).stdout.split(/\s+/).filter(Boolean).map(Number);
    out[`${h.name}: processes`] = pids.filter((p) => p !== workloadPid && processAlive(p)).length.toString();
    const addrs = (await execCommand('ip', ['-n', h.netns, '-o', 'addr', 'show'])).stdout.split('\n').map((l) => l.split(/\s+/).slice(1, 4).join(' '));
    out[`${h.name}: addresses`] = addrs.sort().join('\n');
  }
  out['workload output files'] = listTree(join(lab.dir, 'workloads')).join('\n');
  const migrations = (await lab.controller.listMigrations()).migrations.map((m) => `${m.id} ${m.phase}`);
  out['controller: migrations'] = migrations.sort().join('\n');
  out['controller: workloads'] = JSON.stringify((await lab.controller.listWorkloads()).workloads.map((w) => [w.name, w.host, w.pid]));
  const steering = steeringClient(lab.controllerAddress);
  try {
    const r = await unary<typeof steering, object, ListServicesResponse__Output>(steering, steering.ListServices, {}, 10_000);
    out['controller: steering generation'] = String(r.generation);
    out['controller: steering services'] = JSON.stringify(r.services.map((s) => [s.id, s.vip, s.port, s.backends.length]));
  } finally {
    steering.close();
  }
  out['controller: hosts'] = JSON.stringify((await lab.controller.listHosts()).hosts.map((h) => [h.name, h.ready, String(h.steeringGeneration), h.cordoned]));
  return out;
}

/** What differs between two line lists, briefly: "+added -removed" for the first few lines. */
function lineChanges(before: string, after: string): string {
  const b = new Set(before.split('\n'));
  const a = new Set(after.split('\n'));
  const added = [...a].filter((l) => !b.has(l)).map((l) => `+${l}`);
  const removed = [...b].filter((l) => !a.has(l)).map((l) => `-${l}`);
  return [...added, ...removed].slice(0, 5).join(', ');
}

/** Files under a folder with their sizes, except CRIU's and the agents' logs. */
function listTree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    let names: string[];
    try {
      names = readdirSync(d);
    } catch {
      return;
    }
    for (const n of names) {
      const p = join(d, n);
      const st = statSync(p, { throwIfNoEntry: false });
      if (!st) continue;
      if (st.isDirectory()) walk(p);
      else out.push(`${relative(dir, p)} ${st.size}`);
    }
  };
  walk(dir);
  return out.sort();
}

/** Files or folders whose name carries the canary, anywhere a request could have put one. */
async function findCanary(canary: string, lab: Lab): Promise<string[]> {
  const roots = ['/tmp', '/run', '/var/lib', '/etc', '/root', REPO_ROOT, lab.dir, '/'];
  const r = await execCommand('find', [...roots, '-maxdepth', '6', '-name', `*${canary}*`], { allowFailure: true });
  return [...new Set(r.stdout.split('\n').filter(Boolean))];
}

function table(results: MethodResult[], s: Summary): string {
  const lines = ['method                              requests  unexpected  answers'];
  for (const r of results) {
    const codes = Object.entries(r.codes).sort((a, b) => b[1] - a[1]).map(([c, n]) => `${c} ${n}`).join(', ');
    lines.push(`${r.method.padEnd(36)}${String(r.requests).padStart(8)}  ${String(r.unexpected).padStart(10)}  ${codes}`);
    for (const e of r.examples) lines.push(`    ${e}`);
  }
  lines.push('');
  lines.push(`${s.requests} requests to ${s.methods} methods: ${s.unexpected} unexpected answers`);
  lines.push(`crashed: ${s.crashed.join(', ') || 'none'}`);
  lines.push(`changed: ${s.changed.join(', ') || 'nothing'}`);
  lines.push(`files written under the requests' names: ${s.escapedFiles.join(', ') || 'none'}`);
  lines.push(s.clean ? 'clean' : 'NOT CLEAN');
  return lines.join('\n') + '\n';
}
