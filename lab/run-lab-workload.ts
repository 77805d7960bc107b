/**
 * The lab's echo server started the way an operator starts a workload: `godwit run` through the
 * controller (agent/run-workload.ts), on the lab's workload address `addressIndex`. In the routed
 * fabric the router also gets the address's /32 route to that host first (a migration's
 * steering, not the route, follows it from there). lab.ts's startLabWorkload places it by hand
 * instead (the benches' way, kept as it is).
 */
import { parseEndpoint, type Endpoint } from '../lib/endpoint.js';
import { endpointToWire } from '../lib/wire.js';
import type { Lab } from './lab.js';
import { echoServerBinary } from './workload.js';

export async function runLabWorkload(
  lab: Lab,
  hostName: string,
  port: number,
  opts: { name?: string; addressIndex?: number; args?: readonly string[] } = {},
): Promise<{ name: string; pid: number; endpoint: Endpoint }> {
  const endpoint = parseEndpoint(`tcp://${lab.topology.workloadAddress(opts.addressIndex ?? 0)}:${port}`);
  await lab.topology.routeWorkloadAddress(endpoint.address, hostName);
  const w = await lab.controller.runWorkload({
    host: hostName,
    name: opts.name ?? 'echo-server',
    endpoints: [endpointToWire(endpoint)],
    command: [echoServerBinary(), endpoint.address, String(port), ...(opts.args ?? [])],
  });
  return { name: w.name, pid: w.pid, endpoint };
}
