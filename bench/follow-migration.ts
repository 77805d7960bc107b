/**
 * `bench follow`, kind "migration": one migration a -> b in the routed lab per measurement, with
 * N live connections through a service VIP (the router spreads them over hosts a, b and c) and a
 * few straight to the workload's address (the router keeps delivering that to a: after the move,
 * a's data plane forwards them). Per measurement: the freeze, the steering convergence and
 * whether it finished inside the freeze, packets the old host forwarded, the entries handed off,
 * and what the clients saw (longest stall, survivors, bytes lost, resets).
 *
 * One lab for the whole run; every measurement uses a fresh workload address and VIP, and removes
 * its workload, service and address afterwards.
 */
import { execCommand } from '../lib/exec.js';
import { SteeringApi } from '../controller/steering-client.js';
import { migrateHop } from '../lab/hop.js';
import { labUp, startLabWorkload, type Lab } from '../lab/lab.js';
import { startTraffic, type TrafficHandle, type TrafficReport } from '../lab/traffic.js';
import { stopWorkload } from '../lab/workload.js';
import type { FollowKind } from './follow.js';

export interface FollowMigrationRow {
  kind: 'migration';
  connections: number;
  run: number;
  ok: boolean;
  error: string;
  freezeMs: number;
  steerMs: number;
  /** Every host acked before the target unlocked, without UNLOCK having to wait for it. */
  steerInsideFreeze: boolean;
  steerWaitedMs: number;
  handedOff: number;
  forwarded: number;
  maxStallMs: number;
  survived: number;
  bytesLost: number;
  /** Connections the clients saw reset or closed. */
  resets: number;
}

export interface FollowMigrationOptions {
  connections: number[];
  runs: number;
  /** Connections straight to the workload's address (forwarded by the old host after the move). */
  direct: number;
  log: (line: string) => void;
  /** Called with each row as it completes. */
  onRow?: (row: FollowMigrationRow) => void;
}

const PORT = 7000;
const HOSTS = ['a', 'b', 'c'];
const WARMUP_MS = 1_000;
const DRAIN_TIMEOUT_MS = 60_000;

export async function runFollowMigrations(o: FollowMigrationOptions): Promise<FollowMigrationRow[]> {
  const rows: FollowMigrationRow[] = [];
  const lab = await labUp({ hosts: HOSTS, fabric: 'routed' });
  const api = new SteeringApi(lab.controllerAddress);
  try {
    let k = 0;
    for (const n of o.connections) {
      for (let run = 1; run <= o.runs; run++, k++) {
        o.log(`follow migration: N=${n} run ${run} ...`);
        const row = await measure(lab, api, k, n, run, o.direct);
        rows.push(row);
        o.onRow?.(row);
        o.log(
          `  ${row.ok ? 'ok' : 'FAILED'}: freeze ${row.freezeMs.toFixed(0)} ms, steer ${row.steerMs.toFixed(1)} ms (${row.steerInsideFreeze ? 'inside' : 'OUTSIDE'} the freeze), ` +
            `forwarded ${row.forwarded}, handed off ${row.handedOff}, max stall ${row.maxStallMs.toFixed(0)} ms, ${row.survived}/${n + o.direct} survived, ${row.bytesLost} B lost, ${row.resets} resets${row.ok ? '' : ` — ${row.error}`}`,
        );
      }
    }
  } finally {
    api.close();
    await lab.down();
  }
  return rows;
}

async function measure(lab: Lab, api: SteeringApi, k: number, n: number, run: number, directCount: number): Promise<FollowMigrationRow> {
  const row: FollowMigrationRow = {
    kind: 'migration',
    connections: n,
    run,
    ok: false,
    error: '',
    freezeMs: 0,
    steerMs: 0,
    steerInsideFreeze: false,
    steerWaitedMs: 0,
    handedOff: 0,
    forwarded: 0,
    maxStallMs: 0,
    survived: 0,
    bytesLost: 0,
    resets: 0,
  };
  const traffic: TrafficHandle[] = [];
  const pids: number[] = [];
  const vip = lab.topology.vip(k);
  const service = { protocol: 'TCP' as const, vip, port: PORT };
  let address = '';
  try {
    const w = await startLabWorkload(lab, 'a', PORT, k);
    pids.push(w.pid);
    address = w.endpoint.address;
    await api.createService({ service });
    const c = await api.updateService({ service, addBackend: { backend: { address, port: PORT }, weight: 1, host: 'a' }, wait: { wait: true, timeoutMs: 30_000 } });
    if (!c.converged) throw new Error(`hosts ${c.laggingHosts.join(', ')} did not take the service's rule`);
    const viaVip = n > 0 ? startTraffic(lab.topology.client, { address: vip, port: PORT }, { connections: n, seed: run, connectTimeoutMs: 120_000 }) : undefined;
    const direct = directCount > 0 ? startTraffic(lab.topology.client, { address, port: PORT }, { connections: directCount, seed: 1000 + run }) : undefined;
    for (const t of [viaVip, direct]) if (t) traffic.push(t);
    await Promise.all(traffic.map((t) => t.ready));
    await new Promise((r) => setTimeout(r, WARMUP_MS));
    const hop = await migrateHop(lab.controller, viaVip ?? direct, { from: 'a', to: 'b', pid: w.pid, endpoints: [w.endpoint] });
    if (hop.pid) pids.push(hop.pid);
    Object.assign(row, {
      ok: hop.phase === 'DONE',
      error: hop.error,
      freezeMs: hop.freezeMs,
      steerMs: hop.steerMs,
      steerInsideFreeze: hop.steerInsideFreeze,
      steerWaitedMs: hop.steerWaitedMs,
      handedOff: hop.handedOff,
      forwarded: hop.forwarded,
    });
    const finals: TrafficReport[] = [];
    for (const t of traffic) finals.push(await t.drain(DRAIN_TIMEOUT_MS));
    row.maxStallMs = Math.max(0, ...finals.map((s) => s.maxStallMs));
    row.survived = finals.reduce((x, s) => x + s.alive, 0);
    row.bytesLost = finals.reduce((x, s) => x + s.bytesLost, 0);
    row.resets = finals.reduce((x, s) => x + s.closed, 0);
    if (row.ok && finals.some((s) => !s.drained)) row.error = 'client: drain incomplete';
  } catch (e) {
    row.ok = false;
    row.error = row.error || (e instanceof Error ? e.message : String(e));
  } finally {
    for (const t of traffic) await t.stop().catch(() => undefined);
    for (const p of pids) await stopWorkload(p).catch(() => undefined);
    await api.deleteService({ service, force: true }).catch(() => undefined);
    if (address) for (const h of lab.topology.hosts) await execCommand('ip', ['-n', h.netns, 'addr', 'del', `${address}/32`, 'dev', h.iface], { allowFailure: true });
  }
  for (const key of ['freezeMs', 'steerMs', 'steerWaitedMs', 'maxStallMs'] as const) row[key] = Math.round(row[key] * 10) / 10;
  return row;
}

/** The readable table of migration rows. */
export function followMigrationTable(rows: FollowMigrationRow[]): string {
  const cols: [string, (r: FollowMigrationRow) => string][] = [
    ['connections', (r) => String(r.connections)],
    ['run', (r) => String(r.run)],
    ['result', (r) => (r.ok ? 'ok' : 'FAILED')],
    ['freeze ms', (r) => r.freezeMs.toFixed(0)],
    ['steer ms', (r) => r.steerMs.toFixed(1)],
    ['inside freeze', (r) => (r.steerInsideFreeze ? 'yes' : 'no')],
    ['forwarded', (r) => String(r.forwarded)],
    ['handed off', (r) => String(r.handedOff)],
    ['max stall ms', (r) => r.maxStallMs.toFixed(0)],
    ['stall - freeze', (r) => (r.maxStallMs - r.freezeMs).toFixed(0)],
    ['survived', (r) => String(r.survived)],
    ['bytes lost', (r) => String(r.bytesLost)],
    ['resets', (r) => String(r.resets)],
  ];
  const head = cols.map(([h]) => h);
  const body = rows.map((r) => cols.map(([, f]) => f(r)));
  const width = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => '| ' + cells.map((c, i) => c.padStart(width[i])).join(' | ') + ' |';
  return [line(head), '|' + width.map((w) => '-'.repeat(w + 1) + ':').join('|') + '|', ...body.map(line)].join('\n');
}

/**
 * The kind as `bench follow` runs it. Passes when every migration ended DONE with every
 * connection intact (no byte lost, no reset); the freeze and stall targets are read off the table.
 */
export const migrationKind: FollowKind = {
  async run(opts, io) {
    const rows = await runFollowMigrations({ connections: opts.connections, runs: opts.runs, direct: opts.direct, log: io.say, onRow: (r) => io.emit({ ...r }) });
    const ok = rows.every((r) => r.ok && r.bytesLost === 0 && r.resets === 0 && r.survived === r.connections + opts.direct);
    return { table: followMigrationTable(rows), ok };
  },
};
