/**
 * godwit: the operator's command line, a thin client of the controller's gRPC API.
 *
 *   godwit hosts
 *   godwit run --host a [--name web] [--user U] [--endpoint tcp://ADDR:PORT ...] [--cwd DIR] -- CMD ARGS...
 *   godwit workloads
 *   godwit logs NAME|MIGRATION_ID
 *   godwit migrate --workload web --to b [--wait]
 *   godwit migrate --from a --to b --pid 1234 --endpoint tcp://198.18.1.200:7000 [--wait]
 *                  [--lock-mode EBPF|IPTABLES|NFTABLES] [--allow-unsafe-lock] [--post-copy]
 *   godwit get <id> | godwit list | godwit watch <id>
 *   godwit retry <id> [--wait]          a migration in NEEDS_ATTENTION rolled back again, its hosts back
 *   godwit workload register|list, cordon, uncordon, drain, drains, cancel   (controller/cli-fleet.ts)
 *
 * Packet steering, with ipvsadm's verbs (`ipvsadm -A -t`, `-a -t ... -r ... -w`, `-Ln --stats`):
 *   godwit service create tcp://VIP:PORT                                      (ipvsadm -A -t VIP:PORT)
 *   godwit service add-backend VIP:PORT --real ADDR:PORT --host H [--weight W] (ipvsadm -a -t VIP:PORT -r ADDR:PORT -w W)
 *   godwit service set-weight VIP:PORT --real ADDR:PORT --weight W             (ipvsadm -e ...)
 *   godwit service drain-backend VIP:PORT --real ADDR:PORT                     (weight 0 in IPVS: no new flows)
 *   godwit service remove-backend VIP:PORT --real ADDR:PORT [--force]          (ipvsadm -d -t VIP:PORT -r ADDR:PORT)
 *   godwit service delete VIP:PORT [--force]                                   (ipvsadm -D -t VIP:PORT)
 *   godwit service list | godwit service get VIP:PORT                          (ipvsadm -Ln --stats)
 * Changes take --wait [--wait-timeout MS]: return once every ready host holds the change.
 *
 * --json prints the API's own messages; otherwise a short human summary. A gRPC error is printed
 * as "CODE: details"; exit statuses are EXIT_CODES below (also in --help and the README).
 */
import { Command } from 'commander';
import { status } from '@grpc/grpc-js';
import type { Migration__Output } from '../proto/gen/godwit/v1/Migration.js';
import type { LockMode } from '../proto/gen/godwit/v1/LockMode.js';
import { parseEndpoint } from '../lib/endpoint.js';
import { isServiceError } from '../lib/rpc.js';
import { endpointToWire } from '../lib/wire.js';
import { ControllerApi } from './client.js';
import { PhaseProgress } from './cli-progress.js';
import type { SteeringChange__Output } from '../proto/gen/godwit/v1/SteeringChange.js';
import type { WaitOptions } from '../proto/gen/godwit/v1/WaitOptions.js';
import { SteeringApi } from './steering-client.js';
import { formatChange, formatKey, formatServices, parseBackendKey, parseServiceKey } from './steering-format.js';
import { certsCommand } from './certs.js';
import { withSecurityOptions } from '../lib/security-flags.js';
import { securityFromFlags } from '../lib/tls.js';
import { registerFleetCommands } from './cli-fleet.js';
import { parseLabels } from './placement.js';

/** What the exit status says; `godwit --help` and the README list these. */
const EXIT_CODES = `Exit status:
  0  done (a migration: DONE; a --wait: every host holds the change)
  1  the operation ran and failed (migration FAILED or NEEDS_ATTENTION, a --wait that did not converge), or an internal error
  2  the request was rejected: bad usage or INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, UNIMPLEMENTED
  3  the controller could not be reached or did not answer in time (UNAVAILABLE, DEADLINE_EXCEEDED)`;

const program = withSecurityOptions(new Command())
  .name('godwit')
  .description('Live-migrate running Linux processes between hosts with their TCP connections intact: the operator\'s client of the godwit controller')
  .option('--controller <addr>', 'controller gRPC address (env GODWIT_CONTROLLER)', process.env.GODWIT_CONTROLLER ?? '127.0.0.1:50050')
  .option('--json', 'print the API\'s messages as JSON (one per line for streams) instead of a summary')
  .addHelpText('after', `\n${EXIT_CODES}\n`);

// Credentials before any command that talks to the controller (`certs` makes them, so needs none).
program.hook('preAction', (_p, cmd) => void (cmd.parent?.name() === 'certs' || securityFromFlags(program.opts(), { info: () => undefined, error: (_o: object, msg: string) => void process.stderr.write(`godwit: ${msg}\n`) })));
program.addCommand(certsCommand());

const api = () => new ControllerApi(program.opts<{ controller: string }>().controller);
const json = () => Boolean(program.opts<{ json?: boolean }>().json);
const print = (value: unknown, human: () => string) => process.stdout.write((json() ? JSON.stringify(value) : human()) + '\n');

function summary(m: Migration__Output): string {
  const r = m.request!;
  const lines = [`${m.id}  ${r.sourceHost} -> ${r.targetHost}  pid ${r.workload?.pid}  ${m.phase}`];
  for (const t of m.timings) {
    lines.push(`  ${String(t.phase).padEnd(9)} ${t.durationMs.toFixed(0).padStart(6)} ms ${t.ok ? '' : `FAILED: ${t.error}`}`);
    for (const s of t.steps) lines.push(`      ${s.ms.toFixed(1).padStart(7)} ms  ${s.host}: ${s.step}`);
  }
  if (m.freezeMs) lines.push(`  freeze ${m.freezeMs.toFixed(0)} ms`);
  if (r.postCopy) lines.push(`  post-copy: ${m.lazyPagesMs ? `every page on the target ${m.lazyPagesMs.toFixed(0)} ms after the dump` : 'memory still arriving'}`);
  if (Number(m.deliveredPackets) > 0) lines.push(`  ${m.deliveredPackets} packet(s) held during the freeze, delivered after it`);
  const st = m.steer;
  if (st && Number(st.generation) > 0) {
    const where = st.converged ? (st.insideFreeze ? 'inside the freeze' : `unlock waited ${st.waitedMs.toFixed(0)} ms for it`) : `hosts ${st.laggingHosts.join(', ')} had not acked`;
    lines.push(`  steering: generation ${st.generation}, every host in ${st.convergeMs.toFixed(0)} ms (${where})`);
    if (Number(m.handedOff) > 0) lines.push(`  ${m.handedOff} steering entr(ies) handed off with the image`);
    if (Number(m.forwarded) > 0) lines.push(`  ${m.forwarded} packet(s) forwarded by the source to the target`);
    if (Number(st.revertedGeneration) > 0) lines.push(`  steering placed back on the source in generation ${st.revertedGeneration}`);
  } else if (st?.skipped) lines.push(`  steering: ${st.skipped}`);
  if (m.restoredPid) lines.push(`  workload pid now ${m.restoredPid}`);
  if (m.error) lines.push(`  error: ${m.error}`, `  (godwit logs ${m.id}: CRIU's full logs from both hosts)`);
  if (m.attention) lines.push(`  needs attention: ${m.attention}`);
  for (const w of m.warnings) lines.push(`  warning: ${w}`);
  return lines.join('\n');
}

program.command('hosts').description('the fleet: every host the controller hears, ready or silent').action(async () => {
  const c = api();
  const r = await c.listHosts();
  print(r, () => r.hosts.map((h) => `${h.name.padEnd(12)} ${h.ready ? 'ready' : 'SILENT'}  ${h.grpcAddress}  criu ${h.criuVersion}  ${h.workloads} workload(s)${h.cordoned ? `  CORDONED${h.cordonReason ? ` (${h.cordonReason})` : ''}` : ''}`).join('\n') || 'no hosts');
  c.close();
});

program
  .command('run')
  .description('start a command on a host the way CRIU can move it, registered as a workload')
  .requiredOption('--host <host>', 'where it starts')
  .option('--name <name>', 'the workload\'s name (default: the command\'s base name)')
  .option('--user <user>', 'run the command as this user (its init stays root)')
  .option('--endpoint <endpoint...>', 'address(es) it owns and takes along, tcp://ADDRESS:PORT (brought up on the host)', [])
  .option('--cwd <dir>', 'working directory (default /)')
  .option('--label <k=v...>', 'labels for placement (avoid=LABEL keeps it off hosts holding LABEL)', [])
  .argument('<command...>', 'the command and its arguments (after --)')
  .action(async (command: string[], o: { host: string; name?: string; user?: string; endpoint: string[]; cwd?: string; label: string[] }) => {
    const endpoints = usage(() => o.endpoint.map((e) => endpointToWire(parseEndpoint(e))));
    const c = api();
    const w = await c.runWorkload({ host: o.host, name: o.name ?? '', user: o.user ?? '', endpoints, command, cwd: o.cwd ?? '', labels: parseLabels(o.label) });
    const eps = w.endpoints.map((e) => `${String(e.protocol).toLowerCase()}://${e.address}:${e.port}`);
    if (json()) process.stdout.write(JSON.stringify({ workload: w.name, host: w.host, pid: w.pid, endpoints: eps }) + '\n');
    else process.stdout.write(`${w.name} running on ${w.host} as pid ${w.pid}${eps.length ? ` (${eps.join(', ')})` : ''}; output: godwit logs ${w.name}\n`);
    c.close();
  });

program.command('workloads').description('workloads, where they run now (also: godwit workload list)').action(async () => {
  const c = api();
  const r = await c.listWorkloads();
  print(r, () =>
    r.workloads.map((w) => `${w.name.padEnd(16)} ${w.host.padEnd(8)} pid ${String(w.pid).padEnd(8)} ${w.endpoints.map((e) => `${e.address}:${e.port}`).join(',')}  ${w.command.join(' ')}`).join('\n') || 'no workloads',
  );
  c.close();
});

program
  .command('logs <name>')
  .description("a workload's output (NAME), or CRIU's logs of a migration from both hosts (MIGRATION_ID)")
  .option('--max-bytes <n>', "a workload's output: the last N bytes (default 1 MiB)", (v) => Number(v))
  .action(async (name: string, o: { maxBytes?: number }) => {
    const c = api();
    const r = await c.getLogs(name, o.maxBytes ?? 0);
    print(r, () =>
      r.files
        .map((f) => (f.name === 'output' && r.files.length === 1 ? f.text.replace(/\n$/, '') : `==> ${f.host}: ${f.name || '(no logs)'}${f.error ? ` (${f.error})` : ''} <==\n${f.text.replace(/\n$/, '')}`))
        .join('\n'),
    );
    c.close();
  });

program
  .command('migrate')
  .description('move a workload to another host, its connections intact; --wait follows it phase by phase')
  .option('--workload <name>', 'a workload started with godwit run (instead of --from, --pid, --endpoint)')
  .option('--from <host>', 'source host')
  .requiredOption('--to <host>', 'target host')
  .option('--pid <pid>', 'host PID of the workload\'s root process', (v) => Number(v))
  .option('--endpoint <endpoint...>', 'endpoint(s) the workload owns, tcp://ADDRESS:PORT')
  .option('--lease-ms <ms>', 'lock lease', (v) => Number(v))
  .option('--lock-mode <mode>', 'EBPF (default), IPTABLES or NFTABLES (CRIU\'s own lock)', (v) => v.toUpperCase())
  .option('--allow-unsafe-lock', 'run IPTABLES / NFTABLES even at a connection count where CRIU\'s lock is known to fail')
  .option('--post-copy', 'resume the workload on the target before its memory has arrived (EBPF lock, userfaultfd on the target); the workload is lost if the source dies before every page arrived')
  .option('--wait', 'follow the migration until it ends: one line per phase (live on a terminal); exit 1 if it FAILED')
  .action(async (o: { workload?: string; from?: string; to: string; pid?: number; endpoint?: string[]; leaseMs?: number; lockMode?: string; allowUnsafeLock?: boolean; postCopy?: boolean; wait?: boolean }) => {
    if (!o.workload && (!o.from || !o.pid || !o.endpoint))
      throw Object.assign(new Error('give --workload NAME, or --from, --pid and --endpoint'), { usage: true });
    const endpoints = usage(() => (o.endpoint ?? []).map((e) => endpointToWire(parseEndpoint(e))));
    const c = api();
    if (o.lockMode !== undefined && !['EBPF', 'IPTABLES', 'NFTABLES'].includes(o.lockMode))
      throw Object.assign(new Error(`--lock-mode ${o.lockMode} is not one of EBPF, IPTABLES, NFTABLES`), { usage: true });
    const lockMode = o.lockMode as LockMode | undefined;
    let m = await c.migrate({
      workloadName: o.workload ?? '',
      sourceHost: o.from ?? '',
      targetHost: o.to,
      workload: o.pid || endpoints.length > 0 ? { pid: o.pid ?? 0, endpoints } : undefined,
      lockLeaseMs: o.leaseMs,
      lockMode,
      allowUnsafeLock: o.allowUnsafeLock === true,
      postCopy: o.postCopy === true,
    });
    if (o.wait) m = await followToEnd(c, m);
    print(m, () => summary(m));
    c.close();
    if (m.phase === 'FAILED' || m.phase === 'NEEDS_ATTENTION') process.exitCode = 1;
  });

program
  .command('retry <id>')
  .description('roll back again a migration in NEEDS_ATTENTION, once both its hosts have an agent again; --wait follows it')
  .option('--wait', 'follow the rollback until it ends (FAILED: the workload runs on its source again); exit 1 if it needs attention again')
  .action(async (id: string, o: { wait?: boolean }) => {
    const c = api();
    let m = await c.retryMigration(id);
    if (o.wait) m = await followToEnd(c, m);
    print(m, () => summary(m));
    c.close();
    // A retried rollback that worked ends FAILED (the migration did not happen; the workload is back on its source).
    if (m.phase === 'NEEDS_ATTENTION') process.exitCode = 1;
  });

/** --wait: one line per phase on stderr (live on a terminal) until the migration ends; its final state. */
async function followToEnd(c: ControllerApi, m: Migration__Output): Promise<Migration__Output> {
  const progress = json() ? undefined : new PhaseProgress(process.stderr);
  try {
    return await c.wait(m.id, (e) => progress?.event(e));
  } finally {
    progress?.end();
  }
}

program.command('get <id>').description('one migration: its phases, step times, freeze and steering').action(async (id: string) => {
  const c = api();
  const m = await c.getMigration(id);
  print(m, () => summary(m));
  c.close();
});

program.command('list').description('every migration the controller has recorded').action(async () => {
  const c = api();
  const r = await c.listMigrations();
  print(r, () => r.migrations.map(summary).join('\n') || 'no migrations');
  c.close();
});

program.command('watch <id>').description('a migration\'s events as they happen, until it ends').action(async (id: string) => {
  const c = api();
  for await (const e of c.watch(id)) print(e, () => `${new Date(e.atMs).toISOString()} ${e.phase} ${e.kind}${e.durationMs ? ` ${e.durationMs.toFixed(0)} ms` : ''}${e.detail ? `: ${e.detail}` : ''}`);
  c.close();
});

const steering = () => new SteeringApi(program.opts<{ controller: string }>().controller);

/** Shape errors in what the user typed are usage errors (exit 2), like the controller's INVALID_ARGUMENT. */
function usage<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw Object.assign(new Error((e as Error).message), { usage: true });
  }
}

interface WaitFlags {
  wait?: boolean;
  waitTimeout?: number;
}

const waitOptions = (o: WaitFlags): WaitOptions => ({ wait: o.wait === true, timeoutMs: o.waitTimeout ?? 0 });

/** Prints an accepted change; a wait that did not converge exits 1 (the change itself stands). */
function printChange(what: string, c: SteeringChange__Output): void {
  print(c, () => formatChange(what, c));
  if (c.waited && !c.converged) process.exitCode = 1;
}

const service = program.command('service').description('packet steering: services (VIP:port) and their backends, as ipvsadm manages them');
const withWait = (cmd: Command) =>
  cmd
    .option('--wait', 'return once every ready host holds the change')
    .option('--wait-timeout <ms>', 'how long --wait waits (default 10000)', (v) => Number(v));

withWait(service.command('create <service>').description('add a virtual service: tcp://VIP:PORT or udp://VIP:PORT (ipvsadm -A)')).action(
  async (key: string, o: WaitFlags) => {
    const k = usage(() => parseServiceKey(key));
    const c = steering();
    printChange(`created ${formatKey(k)}`, await c.createService({ service: k, wait: waitOptions(o) }));
    c.close();
  },
);

withWait(
  service
    .command('add-backend <service>')
    .description('add a real server to a service (ipvsadm -a -t VIP:PORT -r ADDR:PORT -w W)')
    .requiredOption('-r, --real <addr:port>', 'the workload endpoint')
    .requiredOption('--host <host>', 'the host where the workload runs')
    .option('-w, --weight <w>', 'share of new flows, 1-1000', (v) => Number(v), 1),
).action(async (key: string, o: WaitFlags & { real: string; host: string; weight: number }) => {
  const k = usage(() => parseServiceKey(key));
  const backend = usage(() => parseBackendKey(o.real));
  const c = steering();
  const r = await c.updateService({ service: k, addBackend: { backend, host: o.host, weight: o.weight }, wait: waitOptions(o) });
  printChange(`added ${o.real} (host ${o.host}, weight ${o.weight}) to ${formatKey(k)}`, r);
  c.close();
});

withWait(
  service
    .command('set-weight <service>')
    .description('change a real server\'s weight (ipvsadm -e -t VIP:PORT -r ADDR:PORT -w W)')
    .requiredOption('-r, --real <addr:port>', 'the workload endpoint')
    .requiredOption('-w, --weight <w>', 'share of new flows, 1-1000', (v) => Number(v)),
).action(async (key: string, o: WaitFlags & { real: string; weight: number }) => {
  const k = usage(() => parseServiceKey(key));
  const backend = usage(() => parseBackendKey(o.real));
  const c = steering();
  printChange(`weight of ${o.real} in ${formatKey(k)} set to ${o.weight}`, await c.updateService({ service: k, setWeight: { backend, weight: o.weight }, wait: waitOptions(o) }));
  c.close();
});

withWait(
  service
    .command('drain-backend <service>')
    .description('keep a real server\'s established flows, send it no new ones')
    .requiredOption('-r, --real <addr:port>', 'the workload endpoint'),
).action(async (key: string, o: WaitFlags & { real: string }) => {
  const k = usage(() => parseServiceKey(key));
  const backend = usage(() => parseBackendKey(o.real));
  const c = steering();
  printChange(`draining ${o.real} of ${formatKey(k)}`, await c.updateService({ service: k, drainBackend: { backend }, wait: waitOptions(o) }));
  c.close();
});

withWait(
  service
    .command('remove-backend <service>')
    .description('remove a real server (ipvsadm -d -t VIP:PORT -r ADDR:PORT); its flows end')
    .requiredOption('-r, --real <addr:port>', 'the workload endpoint')
    .option('--force', 'remove the last backend even though hosts hold live flows to it'),
).action(async (key: string, o: WaitFlags & { real: string; force?: boolean }) => {
  const k = usage(() => parseServiceKey(key));
  const backend = usage(() => parseBackendKey(o.real));
  const c = steering();
  printChange(`removed ${o.real} from ${formatKey(k)}`, await c.updateService({ service: k, removeBackend: { backend }, force: o.force === true, wait: waitOptions(o) }));
  c.close();
});

withWait(
  service
    .command('delete <service>')
    .description('delete a virtual service (ipvsadm -D -t VIP:PORT)')
    .option('--force', 'delete even though hosts hold live flows to its backends'),
).action(async (key: string, o: WaitFlags & { force?: boolean }) => {
  const k = usage(() => parseServiceKey(key));
  const c = steering();
  printChange(`deleted ${formatKey(k)}`, await c.deleteService({ service: k, force: o.force === true, wait: waitOptions(o) }));
  c.close();
});

service
  .command('list')
  .description('services, backends and their counters summed over hosts (ipvsadm -Ln --stats)')
  .action(async () => {
    const c = steering();
    const r = await c.listServices();
    print(r, () => {
      const text = formatServices(r.services, r.generation);
      return r.unreachableHosts.length > 0 ? `${text}\n(counters missing from hosts: ${r.unreachableHosts.join(', ')})` : text;
    });
    c.close();
  });

service
  .command('get <service>')
  .description('one service, its backends and counters')
  .action(async (key: string) => {
    const k = usage(() => parseServiceKey(key));
    const c = steering();
    const s = await c.getService(k);
    print(s, () => formatServices([s]));
    c.close();
  });

registerFleetCommands(program);

program.parseAsync().catch((err: unknown) => {
  if (isServiceError(err)) {
    process.stderr.write(`${status[err.code]}: ${err.details}\n`);
    if ([status.UNAVAILABLE, status.DEADLINE_EXCEEDED].includes(err.code)) process.exit(3);
    process.exit([status.INVALID_ARGUMENT, status.NOT_FOUND, status.ALREADY_EXISTS, status.FAILED_PRECONDITION, status.UNIMPLEMENTED].includes(err.code) ? 2 : 1);
  }
  process.stderr.write(`godwit: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit((err as { usage?: boolean }).usage ? 2 : 1);
});
