import { existsSync, readlinkSync, renameSync, symlinkSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { execCommand } from '../lib/exec.js';
import { parseEndpoint, type Endpoint } from '../lib/endpoint.js';
import type { Lab } from './lab.js';
import { echoServerBinary, startWorkload } from './workload.js';

/**
 * The lab's echo workload answering TCP and UDP on one address and port, in one process (one
 * process tree that CRIU moves with both kinds of socket). echo-server echoes UDP too when run
 * under a name ending in "-udp" (lab/workload/echo-server.c, its UDP section): build/echo-server-udp,
 * a link to build/echo-server made here.
 */

/** build/echo-server-udp, a relative link to build/echo-server (made, atomically, if missing). */
export function udpEchoServerBinary(): string {
  const binary = echoServerBinary();
  const link = join(dirname(binary), `${basename(binary)}-udp`);
  let current: string | undefined;
  try {
    current = readlinkSync(link);
  } catch {
    /* missing */
  }
  if (current !== basename(binary)) {
    if (!existsSync(binary)) throw new Error(`${binary} does not exist: run scripts/build-workload.sh`);
    const tmp = `${link}.${process.pid}`;
    symlinkSync(basename(binary), tmp);
    renameSync(tmp, link);
  }
  return link;
}

export interface DualWorkload {
  pid: number;
  tcp: Endpoint;
  udp: Endpoint;
}

/**
 * As startLabWorkload (lab/lab.ts): the lab's workload address `addressIndex` on its first host
 * (and, in the routed fabric, the router's /32 route to it), then the echo server bound to it
 * there, answering TCP and UDP on `port`.
 */
export async function startLabDualWorkload(lab: Lab, hostName: string, port: number, addressIndex = 0): Promise<DualWorkload> {
  const host = lab.host(hostName);
  const address = lab.topology.workloadAddress(addressIndex);
  const tcp = parseEndpoint(`tcp://${address}:${port}`);
  const udp = parseEndpoint(`udp://${address}:${port}`);
  await execCommand('ip', ['-n', host.netns, 'addr', 'add', `${address}/32`, 'dev', host.iface]);
  await lab.topology.routeWorkloadAddress(address, hostName);
  const { pid } = await startWorkload(host, address, port, { binary: udpEchoServerBinary() });
  return { pid, tcp, udp };
}
