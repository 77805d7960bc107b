/**
 * One case of the fault matrix: a migration a -> b (or back) of a workload with live checked
 * connections, one part of the system killed with SIGKILL at one point of it, the part started
 * again (or, for the controller, a standby taking over), and then what the issue asks checked
 * from the hosts themselves: the workload runs exactly once, every connection lives with no byte
 * lost or duplicated, nothing is left behind, the migration ended, its events are in order.
 *
 * Points inside an agent's call (the freeze is pipelined: DUMP carries TRANSFER, RESTORE may
 * carry UNLOCK) are found on the hosts, not in the controller's events: CRIU's log in the
 * migration's image folder (started / finished) and the target's image folder filling up.
 */
import { readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CriuNetfilter } from '../agent/linux/criu-netfilter.js';
import { EbpfNetLock } from '../agent/linux/netlock-ebpf.js';
import { nsExecutor } from '../agent/linux/netns-exec.js';
import type { SteeringTable } from '../agent/steering.js';
import { ControllerApi } from '../controller/client.js';
import { FORWARD, TERMINAL, type Phase } from '../controller/migration-machine.js';
import type { Bus } from '../lib/bus.js';
import type { Endpoint } from '../lib/endpoint.js';
import { execCommand } from '../lib/exec.js';
import { REPO_ROOT } from '../lib/rpc.js';
import { STEERING_BUCKET, STEERING_KV, STEERING_TABLE_KEY } from '../lib/subjects.js';
import { endpointToWire } from '../lib/wire.js';
import { settle } from '../lab/hop.js';
import { agentPinDir, type Lab } from '../lab/lab.js';
import type { TrafficHandle, TrafficWindow } from '../lab/traffic.js';

export const FAULT_PARTS = ['controller', 'source-agent', 'target-agent', 'nats'] as const;
export type FaultPart = (typeof FAULT_PARTS)[number];
export const FAULT_POINTS = ['after-lock', 'during-dump', 'after-dump', 'during-transfer', 'after-transfer', 'during-restore', 'after-restore', 'during-unlock'] as const;
export type FaultPoint = (typeof FAULT_POINTS)[number];

export type Outcome = 'DONE' | 'FAILED' | 'NEEDS_ATTENTION' | 'UNFINISHED';

export interface FaultCase {
  killed: FaultPart;
  point: FaultPoint;
  /** Controller only: a standby takes over instead of the killed controller coming back. */
  standby: boolean;
}

export interface FaultRow extends FaultCase {
  migrationId: string;
  from: string;
  to: string;
  /** The point was reached and the part killed there (false: the migration passed it unseen). */
  killedAtPoint: boolean;
  outcome: Outcome;
  error: string;
  /** Every check held. */
  safe: boolean;
  exactlyOnce: boolean;
  /** Where the workload runs after the case: a host name, 'none', or several joined by '+'. */
  survived: string;
  connections: number;
  alive: number;
  bytesLost: number;
  bytesDuplicated: number;
  /** What was left on the hosts after the migration ended (empty: nothing). */
  leftovers: string[];
  eventsInOrder: boolean;
  /** The part back (restarted, or the standby leading) to the migration's end, ms. */
  recoveredMs: number;
  /** 'single' nats-server, or 'cluster-N' (a nats case kills one server of N). */
  nats: string;
}

/** The lab as the matrix drives it; `place` follows the workload from case to case. */
export interface FaultEnv {
  lab: Lab;
  bus: Bus;
  traffic: TrafficHandle;
  connections: number;
  endpoint: Endpoint;
  place: { host: string; pid: number };
  /** Controllers by lab service name, with their API; `leader` names the one that leads. */
  controllers: Map<string, { address: string; api: ControllerApi }>;
  leader: string;
  /** Longest a case may take from the part's return to the migration's end. */
  recoveryTimeoutMs: number;
  /** The lab service a nats case kills: 'nats', or one server of a cluster ('nats-1'). */
  natsService: string;
  natsCluster: number;
  log: (line: string) => void;
}

export const STANDBY_SERVICE = 'controller-standby';
const STANDBY_PORT = 50052;
const POLL_MS = 5;
/** Longest wait for a point (a migration that fails early never reaches the later ones). */
const POINT_TIMEOUT_MS = 120_000;

export async function runFaultCase(env: FaultEnv, c: FaultCase): Promise<FaultRow> {
  const { lab } = env;
  // Where the workload runs now, from the hosts (an earlier case may have ended anywhere).
  const now = [...(await echoServersByHost(lab)).entries()].filter(([, pids]) => pids.length > 0);
  if (now.length !== 1 || now[0][1].length !== 1) throw new Error(`the workload does not run exactly once before the case: ${JSON.stringify([...now])}`);
  env.place = { host: now[0][0], pid: now[0][1][0] };
  const from = env.place.host;
  const to = lab.topology.hosts.map((h) => h.name).find((h) => h !== from)!;
  if (c.standby) await startStandby(env);
  const before = await env.traffic.window();
  const api = env.controllers.get(env.leader)!.api;
  const accepted = await retryUnavailable(() =>
    api.migrate({ sourceHost: from, targetHost: to, workload: { pid: env.place.pid, endpoints: [endpointToWire(env.endpoint)] } }),
  );
  const id = accepted.id;
  env.log(`case ${c.killed} @ ${c.point}${c.standby ? ' (standby)' : ''}: migration ${id} ${from} -> ${to}`);
  const killedAtPoint = await reachPoint(env, id, c.point, from, to);
  const service = serviceOf(env, c.killed, from, to);
  await lab.crash(service);
  env.log(`  killed ${service}${killedAtPoint ? '' : ' (point not seen: the migration had passed it or ended)'}`);
  const backAt = await bringBack(env, c, service);
  const end = await waitForEnd(env, id);
  const recoveredMs = Date.now() - backAt;
  const v = await verdict(env, { id, from, to, end, before });
  if (c.standby) await handBackLead(env);
  return {
    ...c,
    migrationId: id,
    from,
    to,
    killedAtPoint,
    outcome: v.outcome,
    error: end.error,
    safe: v.safe,
    exactlyOnce: v.exactlyOnce,
    survived: v.survived,
    connections: env.connections,
    alive: v.alive,
    bytesLost: v.bytesLost,
    bytesDuplicated: v.bytesDuplicated,
    leftovers: v.leftovers,
    eventsInOrder: v.eventsInOrder,
    recoveredMs,
    nats: env.natsCluster > 1 ? `cluster-${env.natsCluster}` : 'single',
  };
}

export type Verdict = Pick<FaultRow, 'outcome' | 'safe' | 'exactlyOnce' | 'survived' | 'alive' | 'bytesLost' | 'bytesDuplicated' | 'leftovers' | 'eventsInOrder'>;

/**
 * What the issue asks of a migration that has ended, checked from the hosts themselves: it runs
 * exactly once, where its outcome says (DONE: the target; FAILED: the source), every connection
 * alive with no byte lost or duplicated since `before`, nothing left behind, the end recorded
 * with its cause, and the events in order. Follows the workload (env.place) to where it runs.
 */
export async function verdict(env: FaultEnv, m: { id: string; from: string; to: string; end: { phase: string; error: string }; before: TrafficWindow }): Promise<Verdict> {
  const { id, from, to, end, before } = m;
  await settle(env.traffic, 180_000);
  const after = await env.traffic.window();
  const running = await echoServersByHost(env.lab);
  const hosts = [...running.entries()].filter(([, pids]) => pids.length > 0);
  const all = hosts.flatMap(([, pids]) => pids);
  const exactlyOnce = all.length === 1;
  const survived = hosts.length === 0 ? 'none' : hosts.map(([h, pids]) => (pids.length > 1 ? `${h}x${pids.length}` : h)).join('+');
  // Where it should run by the outcome: DONE on the target, FAILED back on the source.
  const expected = end.phase === 'DONE' ? to : end.phase === 'FAILED' ? from : undefined;
  const whereOk = expected === undefined || survived === expected;
  const leftovers = await leftoversAfter(env, id, exactlyOnce ? hosts[0][0] : undefined);
  const events = await storedEventsToEnd(env, id, end.phase);
  const eventsInOrder = checkEvents(events, end.phase);
  if (!eventsInOrder) env.log(`  events out of order or missing: ${events.map((e) => `${e.phase}/${e.kind}`).join(' ')}`);
  const bytesLost = after.bytesLost - before.bytesLost;
  const bytesDuplicated = after.bytesDuplicated - before.bytesDuplicated;
  const outcome = end.phase as Outcome;
  const ended = outcome === 'DONE' || outcome === 'NEEDS_ATTENTION' || (outcome === 'FAILED' && end.error !== '');
  const safe = exactlyOnce && whereOk && after.alive === env.connections && bytesLost === 0 && bytesDuplicated === 0 && after.corrupted === 0 && leftovers.length === 0 && ended && eventsInOrder;
  if (exactlyOnce) env.place = { host: hosts[0][0], pid: all[0] };
  return {
    outcome,
    safe,
    exactlyOnce,
    survived,
    alive: after.alive,
    bytesLost,
    bytesDuplicated,
    leftovers: whereOk ? leftovers : [`workload on ${survived} after ${outcome}`, ...leftovers],
    eventsInOrder,
  };
}

function serviceOf(env: FaultEnv, part: FaultPart, from: string, to: string): string {
  if (part === 'controller') return env.leader;
  if (part === 'nats') return env.natsService;
  return `agent-${part === 'source-agent' ? from : to}`;
}

/** The killed part back: started again, or (standby) the standby leading and the killed one back as a standby. */
async function bringBack(env: FaultEnv, c: FaultCase, service: string): Promise<number> {
  const { lab } = env;
  if (c.killed === 'controller' && c.standby) {
    const standby = [...env.controllers.keys()].find((s) => s !== service)!;
    await waitUntil('the standby leads', 60_000, async () => (await leads(env, standby)) === true);
    const at = Date.now();
    env.leader = standby;
    await lab.restart(service);
    env.log(`  ${standby} took over; ${service} restarted as a standby`);
    return at;
  }
  await lab.restart(service);
  env.log(`  ${service} restarted`);
  return Date.now();
}

/** Whether the controller leads: a standby refuses Migrate's validation... so ask with an invalid request. */
async function leads(env: FaultEnv, service: string): Promise<boolean | undefined> {
  const api = env.controllers.get(service)!.api;
  try {
    await api.migrate({ sourceHost: '', targetHost: '' });
    return true;
  } catch (err) {
    const code = (err as { code?: number }).code;
    if (code === 3) return true; // INVALID_ARGUMENT: past the leader check
    if (code === 14 && /standby/.test(String((err as { details?: string }).details))) return false;
    return undefined; // not reachable
  }
}

export async function startStandby(env: FaultEnv): Promise<void> {
  if (env.controllers.has(STANDBY_SERVICE)) return;
  const address = await env.lab.addController('standby', STANDBY_PORT);
  env.controllers.set(STANDBY_SERVICE, { address, api: new ControllerApi(address) });
  await waitUntil('the second controller stands by', 30_000, async () => (await leads(env, STANDBY_SERVICE)) === false);
}

/** After a standby case: the standby (leading now) stops cleanly, releasing the lease; the lab's own controller leads again. */
export async function handBackLead(env: FaultEnv): Promise<void> {
  const { lab } = env;
  if (env.leader === 'controller') {
    await stopGracefully(lab, STANDBY_SERVICE);
  } else {
    await stopGracefully(lab, env.leader);
    // The lab's own controller came back as a standby; it takes the released lease at its next round.
    await waitUntil('the lab controller leads again', 60_000, async () => (await leads(env, 'controller')) === true);
  }
  env.controllers.get(STANDBY_SERVICE)?.api.close();
  env.controllers.delete(STANDBY_SERVICE);
  env.leader = 'controller';
}

async function stopGracefully(lab: Lab, service: string): Promise<void> {
  const pid = lab.pids.get(service);
  if (!pid) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  await waitUntil(`${service} exits`, 20_000, async () => !alive(pid)).catch(() => process.kill(pid, 'SIGKILL'));
  lab.pids.delete(service);
}

/** Waits until the migration reaches `point`; false if it ended (or the wait ran out) first. */
export async function reachPoint(env: FaultEnv, id: string, point: FaultPoint, from: string, to: string): Promise<boolean> {
  const { lab } = env;
  const images = (host: string) => join(lab.dir, 'hosts', host, 'images', id);
  const log = (host: string, name: string) => readFile(join(images(host), name), 'utf8').catch(() => undefined);
  const event = subscribeEvents(env, id);
  try {
    const deadline = Date.now() + POINT_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (event.ended()) return false;
      switch (point) {
        case 'after-lock':
          if (event.seen('LOCK', 'SUCCEEDED')) return true;
          break;
        case 'during-dump':
          if ((await log(from, 'dump.log')) !== undefined) return true;
          break;
        case 'after-dump':
          if (/Dumping finished successfully/.test((await log(from, 'dump.log')) ?? '')) return true;
          break;
        case 'during-transfer':
          if (countFiles(images(to)) > 0) return true;
          break;
        case 'after-transfer':
          if (event.seen('TRANSFER', 'SUCCEEDED')) return true;
          break;
        case 'during-restore':
          if ((await log(to, 'restore.log')) !== undefined) return true;
          break;
        case 'after-restore':
          if (/Restore finished successfully/.test((await log(to, 'restore.log')) ?? '')) return true;
          break;
        case 'during-unlock':
          // The unlock runs in RESTORE's call when steering had converged (pipelined), else as its own
          // UNLOCK call: the earliest sign of either.
          if (event.seen('UNLOCK', 'STARTED') || /Restore finished successfully/.test((await log(to, 'restore.log')) ?? '')) return true;
          break;
      }
      await sleep(POLL_MS);
    }
    return false;
  } finally {
    event.stop();
  }
}

function subscribeEvents(env: FaultEnv, id: string) {
  const seen = new Set<string>();
  let ended = false;
  const stop = env.bus.subscribe<{ phase: string; kind: string; migration?: { phase: string } }>(`godwit.events.migration.${id}.*`, (e) => {
    seen.add(`${e.phase}/${e.kind}`);
    if (e.migration && (TERMINAL as readonly string[]).includes(e.migration.phase)) ended = true;
  });
  return { seen: (phase: string, kind: string) => seen.has(`${phase}/${kind}`), ended: () => ended, stop };
}

function countFiles(dir: string): number {
  try {
    return readdirSync(dir).length;
  } catch {
    return 0;
  }
}

/** The migration's final state, asked of every controller (the leader may have changed). */
export async function waitForEnd(env: FaultEnv, id: string): Promise<{ phase: string; error: string }> {
  const deadline = Date.now() + env.recoveryTimeoutMs;
  let last = { phase: 'UNFINISHED', error: 'no controller answered' };
  while (Date.now() < deadline) {
    for (const { api } of env.controllers.values()) {
      const m = await api.getMigration(id).catch(() => undefined);
      if (!m) continue;
      last = { phase: String(m.phase), error: m.error };
      if ((TERMINAL as readonly string[]).includes(last.phase)) return last;
    }
    await sleep(500);
  }
  return { phase: 'UNFINISHED', error: `still ${last.phase} after ${env.recoveryTimeoutMs} ms` };
}

/**
 * Events as the stream kept them: SUCCEEDED phases in the machine's order with none skipped (a
 * phase asked again after a resume may repeat), the rollback after them, and the end last.
 */
export function checkEvents(events: { phase: Phase; kind: string }[], end: string): boolean {
  const done = events.filter((e) => e.kind === 'SUCCEEDED' && e.phase !== 'PENDING' && e.phase !== 'DONE').map((e) => e.phase);
  const deduped = done.filter((p, i) => p !== done[i - 1]);
  const forward = deduped.filter((p) => p !== 'ROLLBACK');
  if (!forward.every((p, i) => p === FORWARD[i])) return false;
  const rollbackAt = deduped.indexOf('ROLLBACK');
  if (rollbackAt >= 0 && rollbackAt !== deduped.length - 1) return false;
  if (end === 'DONE') return forward.length === FORWARD.length && events.some((e) => e.phase === 'DONE');
  if (end === 'FAILED') return rollbackAt >= 0 && events.some((e) => e.phase === 'FAILED');
  return end === 'NEEDS_ATTENTION' && events.some((e) => e.phase === 'NEEDS_ATTENTION');
}

/** What the migration left on the hosts: lock entries, CRIU rules, image folders, stray addresses, steering elsewhere. */
async function leftoversAfter(env: FaultEnv, id: string, runsOn: string | undefined): Promise<string[]> {
  const { lab, endpoint } = env;
  const out: string[] = [];
  for (const h of lab.topology.hosts) {
    const lock = new EbpfNetLock({ exec: execCommand, iface: 'eth0', pinDir: agentPinDir(lab.topology.index, h.name), objectPath: join(REPO_ROOT, 'build', 'bpf', 'lock.o') });
    const entries = await lock.list();
    if (entries.length > 0) out.push(`${h.name}: ${entries.length} lock entr${entries.length === 1 ? 'y' : 'ies'}`);
    const netfilter = new CriuNetfilter(nsExecutor(h.netns, execCommand));
    const [rules, tables] = await Promise.all([netfilter.iptablesRules(), netfilter.tables()]);
    if (rules.length + tables.length > 0) out.push(`${h.name}: CRIU lock (${rules.length} rules, ${tables.length} tables)`);
    const images = countFiles(join(lab.dir, 'hosts', h.name, 'images', id));
    if (images > 0 || folderExists(join(lab.dir, 'hosts', h.name, 'images', id))) out.push(`${h.name}: image folder of ${id}`);
    const r = await execCommand('ip', ['-n', h.netns, '-j', '-4', 'addr', 'show', 'dev', 'eth0']);
    const has = (JSON.parse(r.stdout) as { addr_info: { local: string }[] }[]).some((l) => l.addr_info.some((a) => a.local === endpoint.address));
    if (has && h.name !== runsOn) out.push(`${h.name}: workload address ${endpoint.address} without the workload`);
  }
  const table = await natsRetry(async () => (await env.bus.kv<SteeringTable>(STEERING_BUCKET, STEERING_KV)).get(STEERING_TABLE_KEY));
  const steered = table?.value.addresses?.find((x) => x.address === endpoint.address)?.host;
  if (steered && runsOn && steered !== runsOn) out.push(`steering sends ${endpoint.address} to ${steered}, the workload runs on ${runsOn}`);
  return out;
}

function folderExists(dir: string): boolean {
  try {
    readdirSync(dir);
    return true;
  } catch {
    return false;
  }
}

async function echoServersByHost(lab: Lab): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>();
  for (const h of lab.topology.hosts) {
    const r = await execCommand('ip', ['netns', 'pids', h.netns], { allowFailure: true });
    const pids: number[] = [];
    for (const pid of r.stdout.split(/\s+/).filter(Boolean).map(Number)) {
      const comm = await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '');
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
      if (comm.trim() === 'echo-server' && !/\) Z /.test(stat)) pids.push(pid);
    }
    out.set(h.name, pids);
  }
  return out;
}

/** Longest the migration's end event may take to be stored after its record says it ended. */
const EVENTS_LAG_MS = 30_000;

/**
 * The migration's events as the stream holds them, once its end is among them: the controller
 * stores events in order with retries, so right after a nats case (a cluster electing a new
 * stream leader) the last ones may be stored a few seconds after the record says it ended.
 */
async function storedEventsToEnd(env: FaultEnv, id: string, endPhase: string): Promise<{ phase: Phase; kind: string }[]> {
  const deadline = Date.now() + EVENTS_LAG_MS;
  for (;;) {
    const events = await natsRetry(() => env.bus.storedEvents<{ phase: Phase; kind: string }>(`godwit.events.migration.${id}.*`));
    if (events.some((e) => e.phase === endPhase) || Date.now() > deadline) return events;
    await sleep(500);
  }
}

/**
 * A call tried again while `again` says its error is passing, up to `timeoutMs`. The matrix's
 * own reads from NATS retry any error: right after a nats case the bench's connection may still
 * be moving to another server, or the cluster electing a stream leader (a TIMEOUT then is the
 * bench's wait, not the product's failure). Calls to a controller retry UNAVAILABLE only (a
 * standby, or a leader not settled yet).
 */
async function retrying<T>(call: () => Promise<T>, again: (err: unknown) => boolean, pauseMs: number, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await call();
    } catch (err) {
      if (!again(err) || Date.now() > deadline) throw err;
      await sleep(pauseMs);
    }
  }
}

const natsRetry = <T>(read: () => Promise<T>) => retrying(read, () => true, 1_000);
const retryUnavailable = <T>(call: () => Promise<T>) => retrying(call, (err) => (err as { code?: number }).code === 14, 500);

async function waitUntil(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(200);
  }
  throw new Error(`timed out waiting until ${what}`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Leader lease of the matrix's controllers: short, so that a takeover is quick (the default is 6 s). */
export const FAULT_LEASE_MS = 3_000;
const FAULT_PORT = 7000;

/** A lab with hosts a and b, the workload on a with `connections` live checked connections, and a bus to its NATS. */
export async function setupFaultEnv(opts: { connections: number; recoveryTimeoutMs?: number; natsCluster?: number; controllerFlags?: string[]; log?: (line: string) => void }): Promise<FaultEnv> {
  const { labUp, startLabWorkload } = await import('../lab/lab.js');
  const { startTraffic } = await import('../lab/traffic.js');
  const { Bus } = await import('../lib/bus.js');
  const cluster = opts.natsCluster && opts.natsCluster > 1 ? opts.natsCluster : 0;
  const lab = await labUp({ hosts: ['a', 'b'], controllerFlags: ['--lease-ms', String(FAULT_LEASE_MS), ...(opts.controllerFlags ?? [])], ...(cluster ? { natsCluster: cluster } : {}) });
  try {
    const { pid, endpoint } = await startLabWorkload(lab, 'a', FAULT_PORT);
    const bus = await Bus.connect({ servers: lab.natsUrl, name: 'godwit-faults' });
    const traffic = startTraffic(lab.topology.client, { address: endpoint.address, port: FAULT_PORT }, { connections: opts.connections });
    await traffic.ready;
    return {
      lab,
      bus,
      traffic,
      connections: opts.connections,
      endpoint,
      place: { host: 'a', pid },
      controllers: new Map([['controller', { address: lab.controllerAddress, api: lab.controller }]]),
      leader: 'controller',
      recoveryTimeoutMs: opts.recoveryTimeoutMs ?? 300_000,
      natsService: cluster ? 'nats-1' : 'nats',
      natsCluster: cluster || 1,
      log: opts.log ?? (() => undefined),
    };
  } catch (err) {
    await lab.down();
    throw err;
  }
}

/** Removes it all (the lab's down() ends every process it started, the workload with its namespaces). */
export async function teardownFaultEnv(env: FaultEnv | undefined): Promise<void> {
  if (!env) return;
  await env.traffic.stop().catch(() => undefined);
  await env.bus.close().catch(() => undefined);
  for (const [name, c] of env.controllers) if (name !== 'controller') c.api.close();
  // The services' logs, kept where GODWIT_FAULT_LOGS says (the lab's folder goes with it).
  const keep = process.env.GODWIT_FAULT_LOGS;
  if (keep) await execCommand('cp', ['-r', join(env.lab.dir, 'logs'), join(keep, `lab-${Date.now()}`)], { allowFailure: true });
  await env.lab.down();
}
