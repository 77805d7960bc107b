/**
 * The command line's fleet verbs (registered from controller/cli.ts):
 *
 *   godwit workload register --host a --name db --pid 1234 [--endpoint tcp://ADDR:PORT ...] [--label k=v ...]
 *   godwit workload list                      (also: godwit workloads)
 *   godwit cordon HOST [--reason TEXT] | godwit uncordon HOST
 *   godwit drain HOST [--wait] [--max-per-host N] [--max-in-flight N] [--to HOST ...]
 *   godwit drains [ID]                        a drain's record, or every drain
 *   godwit cancel MIGRATION_ID
 *
 * Labels steer placement: `--label avoid=db` keeps a workload off hosts holding a workload
 * labelled `db` (controller/placement.ts). `drain --wait` prints one line per workload change
 * on stderr and exits 1 when some workload did not move.
 */
import type { Command } from 'commander';
import type { DrainRecord__Output } from '../proto/gen/godwit/v1/DrainRecord.js';
import type { WorkloadInfo__Output } from '../proto/gen/godwit/v1/WorkloadInfo.js';
import { parseEndpoint } from '../lib/endpoint.js';
import { endpointToWire } from '../lib/wire.js';
import { FleetApi } from './fleet-client.js';
import { ControllerApi } from './client.js';
import { parseLabels } from './placement.js';

interface GlobalFlags {
  controller: string;
  json?: boolean;
}

const collect = (v: string, prev: string[]) => [...prev, v];

export function registerFleetCommands(program: Command): void {
  const flags = () => program.opts<GlobalFlags>();
  const print = (value: unknown, human: () => string) => process.stdout.write((flags().json ? JSON.stringify(value) : human()) + '\n');
  const withFleet = async <T>(fn: (api: FleetApi) => Promise<T>): Promise<T> => {
    const api = new FleetApi(flags().controller);
    try {
      return await fn(api);
    } finally {
      api.close();
    }
  };
  const usage = <T>(fn: () => T): T => {
    try {
      return fn();
    } catch (e) {
      throw Object.assign(new Error((e as Error).message), { usage: true });
    }
  };

  const workload = program.command('workload').description('workloads: register a process started otherwise, list them');
  workload
    .command('register')
    .description('register a running process as a workload (drains move it, migrations by name find it)')
    .requiredOption('--host <host>', 'where it runs')
    .requiredOption('--name <name>', 'its name in the registry')
    .requiredOption('--pid <pid>', "host PID of its root process", (v) => Number(v))
    .option('--endpoint <endpoint>', 'an address it owns and takes along, tcp://ADDRESS:PORT (repeatable)', collect, [])
    .option('--label <k=v>', 'a label (repeatable); avoid=LABEL keeps it off hosts holding LABEL', collect, [])
    .action(async (o: { host: string; name: string; pid: number; endpoint: string[]; label: string[] }) => {
      const endpoints = usage(() => o.endpoint.map((e) => endpointToWire(parseEndpoint(e))));
      const w = await withFleet((api) => api.registerWorkload({ host: o.host, name: o.name, pid: o.pid, endpoints, labels: parseLabels(o.label) }));
      print(w, () => `${w.name} registered on ${w.host} (pid ${w.pid})`);
    });
  workload
    .command('list')
    .description('every workload, where it runs now, its labels')
    .action(async () => {
      const c = new ControllerApi(flags().controller);
      try {
        const r = await c.listWorkloads();
        print(r, () => r.workloads.map(formatWorkload).join('\n') || 'no workloads');
      } finally {
        c.close();
      }
    });

  program
    .command('cordon <host>')
    .description('mark a host unschedulable: placement skips it, migrations to it are refused')
    .option('--reason <text>', 'why (shown by godwit hosts)')
    .action(async (host: string, o: { reason?: string }) => {
      const h = await withFleet((api) => api.cordon(host, o.reason ?? ''));
      print(h, () => `${h.name} cordoned${h.cordonReason ? ` (${h.cordonReason})` : ''}`);
    });
  program
    .command('uncordon <host>')
    .description('make a cordoned host schedulable again')
    .action(async (host: string) => {
      const h = await withFleet((api) => api.uncordon(host));
      print(h, () => `${h.name} schedulable`);
    });

  program
    .command('drain <host>')
    .description('cordon a host and move every workload off it, each to the least loaded host that may take it')
    .option('--wait', 'follow the drain until it ends (exit 1 if some workload did not move)')
    .option('--max-per-host <n>', 'migrations at once into any one host (default 2)', (v) => Number(v))
    .option('--max-in-flight <n>', 'migrations at once across the fleet (default 4)', (v) => Number(v))
    .option('--to <host>', 'a host the workloads may go to (repeatable; default any)', collect, [])
    .action(async (host: string, o: { wait?: boolean; maxPerHost?: number; maxInFlight?: number; to: string[] }) => {
      const d = await withFleet(async (api) => {
        const started = await api.drain({ host, maxPerHost: o.maxPerHost ?? 0, maxInFlight: o.maxInFlight ?? 0, targets: o.to });
        if (!o.wait) return started;
        const seen = new Map<string, string>();
        return api.waitDrain(started.id, (r) => {
          for (const w of r.workloads) {
            const line = `${w.name}: ${w.state}${w.targetHost ? ` -> ${w.targetHost}` : ''}${w.migrationId ? ` (${w.migrationId})` : ''}${w.error ? `: ${w.error}` : ''}`;
            if (seen.get(w.name) !== line && !flags().json) process.stderr.write(line + '\n');
            seen.set(w.name, line);
          }
        });
      });
      print(d, () => formatDrain(d));
      if (d.state === 'PARTIAL') process.exitCode = 1;
    });

  program
    .command('drains [id]')
    .description("a drain's record (each workload: where it went, or why it did not), or every drain")
    .action(async (id: string | undefined) => {
      if (id) {
        const d = await withFleet((api) => api.getDrain(id));
        print(d, () => formatDrain(d));
        return;
      }
      const r = await withFleet((api) => api.listDrains());
      print(r, () => r.drains.map(formatDrain).join('\n') || 'no drains');
    });

  program
    .command('cancel <id>')
    .description('stop a migration before its pivot (RESTORE): it rolls back and the workload stays on the source')
    .action(async (id: string) => {
      const m = await withFleet((api) => api.cancelMigration(id));
      print(m, () => `${m.id}: cancel accepted in phase ${m.phase}; it rolls back at the next phase boundary (godwit watch ${m.id})`);
    });
}

export function formatWorkload(w: WorkloadInfo__Output): string {
  const labels = Object.entries(w.labels ?? {}).map(([k, v]) => (v ? `${k}=${v}` : k));
  return [
    w.name.padEnd(16),
    w.host.padEnd(8),
    `pid ${String(w.pid).padEnd(8)}`,
    w.endpoints.map((e) => `${e.address}:${e.port}`).join(',') || '-',
    labels.length ? `[${labels.join(' ')}]` : '',
    w.registered ? '(registered)' : w.command.join(' '),
  ]
    .filter(Boolean)
    .join('  ');
}

export function formatDrain(d: DrainRecord__Output): string {
  const lines = [`${d.id}  drain of ${d.host}  ${d.state}  ${d.moved} moved, ${d.failed} failed  (${Math.round(d.updatedAtMs - d.createdAtMs)} ms)`];
  for (const w of d.workloads)
    lines.push(`  ${w.name.padEnd(16)} ${String(w.state).padEnd(7)} ${w.targetHost ? `-> ${w.targetHost.padEnd(8)}` : ''.padEnd(11)} ${w.migrationId}${w.freezeMs ? `  freeze ${w.freezeMs.toFixed(0)} ms` : ''}${w.error ? `  ${w.error}` : ''}`);
  return lines.join('\n');
}
