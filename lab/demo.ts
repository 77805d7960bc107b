/**
 * The main job: a real migration in a local lab. Lab up; an unmodified echo server as the
 * workload with N client connections that check every echoed byte; migrate it A -> B -> A
 * through the controller's gRPC API; a table per hop; lab down (always).
 *
 * In the routed fabric (the default) the hosts sit on subnets of their own behind a router, so
 * no gratuitous ARP can carry the workload's address: the clients connect to a service VIP that
 * the router spreads over every host, and steering is what keeps them reaching the workload
 * wherever it runs. `--fabric bridge` runs the same on one L2 segment, clients straight to the
 * workload's address.
 *
 *   npm run demo                      table
 *   npm run demo -- --json            the same as one JSON object on the last line
 */
import { Command, Option } from 'commander';
import { SteeringApi } from '../controller/steering-client.js';
import { labUp, type Lab } from './lab.js';
import { runLabWorkload } from './run-lab-workload.js';
import { LAB_FABRICS, type LabFabric } from './topology.js';
import { migrateHop, type HopResult } from './hop.js';
import { startTraffic, type TrafficHandle } from './traffic.js';

const o = new Command()
  .name('demo')
  .option('--connections <n>', 'client connections', (v) => Number(v), 200)
  .option('--route <hosts>', 'hosts the workload visits, in order', 'a,b,a')
  .option('--port <n>', 'the workload\'s port', (v) => Number(v), 7000)
  .addOption(new Option('--fabric <fabric>', 'routed: clients through a VIP, hosts behind a router; bridge: one L2 segment').choices(LAB_FABRICS).default('routed'))
  .option('--json', 'print one JSON object as the last line')
  .parse()
  .opts<{ connections: number; route: string; port: number; fabric: LabFabric; json?: boolean }>();

const say = (line: string) => process.stderr.write(line + '\n');

async function main(): Promise<number> {
  const route = o.route.split(',').map((s) => s.trim());
  const hosts = [...new Set(route)];
  let lab: Lab | undefined;
  let traffic: TrafficHandle | undefined;
  const onSignal = () => void cleanup().then(() => process.exit(130));
  const cleanup = async () => {
    await traffic?.stop().catch(() => undefined);
    await lab?.down().catch((e: Error) => say(`lab down: ${e.message}`));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    say(`lab: bringing up hosts ${hosts.join(', ')}, a client, nats-server and the controller`);
    lab = await labUp({ hosts, fabric: o.fabric });
    say(`security: mutual TLS on every gRPC hop and on NATS, one certificate per role and host (${lab.pki?.dir ?? 'none'})`);
    const workload = await runLabWorkload(lab, route[0], o.port);
    const { endpoint } = workload;
    say(`workload: godwit run --host ${route[0]} --name ${workload.name} -- echo-server ${endpoint.address} ${o.port}: pid ${workload.pid}`);
    const target = o.fabric === 'routed' ? await serviceFor(lab, route[0], endpoint.address) : endpoint.address;
    traffic = startTraffic(lab.topology.client, { address: target, port: o.port }, { connections: o.connections });
    await traffic.ready;
    say(`client: ${o.connections} connections sending and checking every byte`);
    await sleep(1_000);

    const hops: HopResult[] = [];
    let pid = workload.pid;
    for (let i = 1; i < route.length; i++) {
      say(`hop ${i}: ${route[i - 1]} -> ${route[i]} ...`);
      const hop = await migrateHop(lab.controller, traffic, { from: route[i - 1], to: route[i], pid, endpoints: [endpoint] });
      hops.push(hop);
      if (hop.phase !== 'DONE') {
        say(`hop ${i} ended ${hop.phase}: ${hop.error}`);
        break;
      }
      pid = hop.pid;
    }
    const final = await traffic.drain(10_000);
    if (!final.drained) say(`client: drain incomplete after ${final.drainMs} ms: ${JSON.stringify({ ...final, errors: final.errors.slice(0, 3) })}`);
    const summary = {
      fabric: o.fabric,
      connections: o.connections,
      survived: final.alive,
      bytesLost: final.bytesLost,
      bytesDuplicated: final.bytesDuplicated,
      corrupted: final.corrupted,
      bytesChecked: final.verifiedBytes,
      freezeMs: hops.map((h) => round(h.freezeMs)),
      maxStallMs: round(Math.max(0, ...hops.map((h) => h.maxStallMs))),
      hops: hops.map(roundHop),
    };
    process.stdout.write(renderTable(hops) + '\n');
    if (hops.some((h) => h.steerMs > 0 && !h.steerInsideFreeze)) process.stdout.write('* steering convergence did not finish inside the freeze: the unlock waited for it\n');
    process.stdout.write(
      `\n${summary.survived}/${summary.connections} connections survived ${hops.length} hop(s); ` +
        `${summary.bytesChecked} bytes echoed and checked, ${summary.bytesLost} lost, ${summary.bytesDuplicated} duplicated, ${summary.corrupted} corrupted connections\n`,
    );
    if (o.json) process.stdout.write(JSON.stringify(summary) + '\n');
    const ok = hops.length === route.length - 1 && hops.every((h) => h.phase === 'DONE') && final.alive === o.connections && final.bytesLost === 0 && final.bytesDuplicated === 0 && final.corrupted === 0;
    return ok ? 0 : 1;
  } finally {
    await cleanup();
  }
}

/**
 * A service whose VIP the router spreads over every host, with the workload as its one backend:
 * what the clients connect to. Returns the VIP once every host holds the rule.
 */
async function serviceFor(lab: Lab, host: string, address: string): Promise<string> {
  const api = new SteeringApi(lab.controllerAddress);
  try {
    const vip = lab.topology.vip(0);
    const service = { protocol: 'TCP' as const, vip, port: o.port };
    await api.createService({ service });
    const c = await api.updateService({ service, addBackend: { backend: { address, port: o.port }, weight: 1, host }, wait: { wait: true, timeoutMs: 30_000 } });
    if (!c.converged) throw new Error(`hosts ${c.laggingHosts.join(', ')} did not take the service's rule`);
    say(`service: tcp://${vip}:${o.port} -> ${address}:${o.port} on ${host}, held by every host (generation ${c.generation})`);
    return vip;
  } finally {
    api.close();
  }
}

function renderTable(hops: HopResult[]): string {
  const cols: [string, (h: HopResult) => string][] = [
    ['hop', (h) => `${h.from} -> ${h.to}`],
    ['result', (h) => h.phase],
    ['lock ms', (h) => fmt(h.lockMs)],
    ['dump ms', (h) => fmt(h.dumpMs)],
    ['transfer ms', (h) => fmt(h.transferMs)],
    ['restore ms', (h) => fmt(h.restoreMs)],
    ['unlock ms', (h) => fmt(h.unlockMs)],
    ['freeze ms', (h) => fmt(h.freezeMs)],
    ['max stall ms', (h) => fmt(h.maxStallMs)],
    ['image MiB', (h) => (h.imageBytes / 1048576).toFixed(1)],
    ['delivered pkts', (h) => String(h.deliveredPackets)],
    ['steer ms', (h) => (h.steerMs > 0 ? fmt(h.steerMs) + (h.steerInsideFreeze ? '' : '*') : '-')],
    ['handed off', (h) => String(h.handedOff)],
    ['forwarded', (h) => String(h.forwarded)],
    ['alive', (h) => `${h.alive}/${h.connections}`],
    ['bytes lost', (h) => String(h.bytesLost)],
    ['bytes dup', (h) => String(h.bytesDuplicated)],
  ];
  const rows = hops.map((h) => cols.map(([, f]) => f(h)));
  const header = cols.map(([n]) => n);
  const width = header.map((n, i) => Math.max(n.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => '| ' + cells.map((c, i) => c.padStart(width[i])).join(' | ') + ' |';
  return [line(header), '|' + width.map((w) => '-'.repeat(w + 1) + ':').join('|') + '|', ...rows.map(line)].join('\n');
}

const fmt = (ms: number) => ms.toFixed(0);
const round = (n: number) => Math.round(n * 10) / 10;
const roundHop = (h: HopResult) => ({ ...h, ...Object.fromEntries(Object.entries(h).map(([k, v]) => [k, typeof v === 'number' ? round(v) : v])) });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

main().then(
  (code) => process.exit(code),
  (err) => {
    say(`demo failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
    process.exit(1);
  },
);
