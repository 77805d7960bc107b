/**
 * godwit: the operator's command line, a thin client of the controller's gRPC API.
 *
 *   godwit hosts
 *   godwit migrate --from a --to b --pid 1234 --endpoint tcp://198.18.1.200:7000 [--wait]
 *                  [--lock-mode EBPF|IPTABLES|NFTABLES] [--allow-unsafe-lock]
 *   godwit get <id> | godwit list | godwit watch <id>
 *
 * --json prints the API's own messages; otherwise a short human summary. A gRPC error is printed
 * as "CODE: details" and the exit status is 2 for a rejected request, 1 for anything else.
 */
import { Command } from 'commander';
import { status } from '@grpc/grpc-js';
import type { Migration__Output } from '../proto/gen/godwit/v1/Migration.js';
import type { LockMode } from '../proto/gen/godwit/v1/LockMode.js';
import { parseEndpoint } from '../lib/endpoint.js';
import { isServiceError } from '../lib/rpc.js';
import { endpointToWire } from '../lib/wire.js';
import { ControllerApi } from './client.js';

const program = new Command()
  .name('godwit')
  .option('--controller <addr>', 'controller gRPC address', process.env.GODWIT_CONTROLLER ?? '127.0.0.1:50050')
  .option('--json', 'print JSON');

const api = () => new ControllerApi(program.opts<{ controller: string }>().controller);
const json = () => Boolean(program.opts<{ json?: boolean }>().json);
const print = (value: unknown, human: () => string) => process.stdout.write((json() ? JSON.stringify(value) : human()) + '\n');

function summary(m: Migration__Output): string {
  const r = m.request!;
  const lines = [`${m.id}  ${r.sourceHost} -> ${r.targetHost}  pid ${r.workload?.pid}  ${m.phase}`];
  for (const t of m.timings) lines.push(`  ${String(t.phase).padEnd(9)} ${t.durationMs.toFixed(0).padStart(6)} ms ${t.ok ? '' : `FAILED: ${t.error}`}`);
  if (m.freezeMs) lines.push(`  freeze ${m.freezeMs.toFixed(0)} ms`);
  if (Number(m.deliveredPackets) > 0) lines.push(`  ${m.deliveredPackets} packet(s) held during the freeze, delivered after it`);
  if (m.restoredPid) lines.push(`  workload pid now ${m.restoredPid}`);
  if (m.error) lines.push(`  error: ${m.error}`);
  for (const w of m.warnings) lines.push(`  warning: ${w}`);
  return lines.join('\n');
}

program.command('hosts').action(async () => {
  const c = api();
  const r = await c.listHosts();
  print(r, () => r.hosts.map((h) => `${h.name.padEnd(12)} ${h.ready ? 'ready' : 'SILENT'}  ${h.grpcAddress}  criu ${h.criuVersion}`).join('\n') || 'no hosts');
  c.close();
});

program
  .command('migrate')
  .requiredOption('--from <host>', 'source host')
  .requiredOption('--to <host>', 'target host')
  .requiredOption('--pid <pid>', 'host PID of the workload\'s root process', (v) => Number(v))
  .requiredOption('--endpoint <endpoint...>', 'endpoint(s) the workload owns, tcp://ADDRESS:PORT')
  .option('--lease-ms <ms>', 'lock lease', (v) => Number(v))
  .option('--lock-mode <mode>', 'EBPF (default), IPTABLES or NFTABLES (CRIU\'s own lock)', (v) => v.toUpperCase())
  .option('--allow-unsafe-lock', 'run IPTABLES / NFTABLES even at a connection count where CRIU\'s lock is known to fail')
  .option('--wait', 'follow the migration until it ends')
  .action(async (o: { from: string; to: string; pid: number; endpoint: string[]; leaseMs?: number; lockMode?: string; allowUnsafeLock?: boolean; wait?: boolean }) => {
    const c = api();
    let endpoints;
    try {
      endpoints = o.endpoint.map((e) => endpointToWire(parseEndpoint(e)));
    } catch (e) {
      throw Object.assign(new Error((e as Error).message), { usage: true });
    }
    if (o.lockMode !== undefined && !['EBPF', 'IPTABLES', 'NFTABLES'].includes(o.lockMode))
      throw Object.assign(new Error(`--lock-mode ${o.lockMode} is not one of EBPF, IPTABLES, NFTABLES`), { usage: true });
    const lockMode = o.lockMode as LockMode | undefined;
    let m = await c.migrate({
      sourceHost: o.from,
      targetHost: o.to,
      workload: { pid: o.pid, endpoints },
      lockLeaseMs: o.leaseMs,
      lockMode,
      allowUnsafeLock: o.allowUnsafeLock === true,
    });
    if (o.wait) {
      m = await c.wait(m.id, (e) => !json() && e.kind !== 'SNAPSHOT' && process.stderr.write(`${e.phase} ${e.kind}${e.detail ? `: ${e.detail}` : ''}\n`));
    }
    print(m, () => summary(m));
    c.close();
    if (m.phase === 'FAILED') process.exitCode = 1;
  });

program.command('get <id>').action(async (id: string) => {
  const c = api();
  const m = await c.getMigration(id);
  print(m, () => summary(m));
  c.close();
});

program.command('list').action(async () => {
  const c = api();
  const r = await c.listMigrations();
  print(r, () => r.migrations.map(summary).join('\n') || 'no migrations');
  c.close();
});

program.command('watch <id>').action(async (id: string) => {
  const c = api();
  for await (const e of c.watch(id)) print(e, () => `${new Date(e.atMs).toISOString()} ${e.phase} ${e.kind}${e.durationMs ? ` ${e.durationMs.toFixed(0)} ms` : ''}${e.detail ? `: ${e.detail}` : ''}`);
  c.close();
});

program.parseAsync().catch((err: unknown) => {
  if (isServiceError(err)) {
    process.stderr.write(`${status[err.code]}: ${err.details}\n`);
    process.exit([status.INVALID_ARGUMENT, status.NOT_FOUND, status.FAILED_PRECONDITION, status.UNIMPLEMENTED].includes(err.code) ? 2 : 1);
  }
  process.stderr.write(`godwit: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit((err as { usage?: boolean }).usage ? 2 : 1);
});
