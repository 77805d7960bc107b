/**
 * `npm run lab -- up --nats-cluster 3`: godwit on a NATS cluster instead of one nats-server. N
 * clustered servers with JetStream on file storage, on the management host, each with a server
 * name, its own store and routes to the others. Clients get every server's URL
 * (comma-separated) and replicate the KV buckets and the event stream min(N, 3) times
 * (lib/bus.ts), so killing one server keeps the bus up and nothing recorded is lost.
 */
import { join } from 'node:path';
import { Bus } from '../lib/bus.js';
import type { Security } from '../lib/tls.js';

export interface NatsClusterNode {
  /** Lab service name and NATS server name: nats-1, nats-2, ... */
  name: string;
  port: number;
  args: string[];
}

const CLIENT_PORT = 4222;
const CLUSTER_PORT = 6222;

/**
 * The servers' command lines: client port 4222 + i, cluster port 6222 + i, routes to every other.
 * `server` gives a server's own arguments (its config with TLS and users, or plain flags with
 * JetStream on file storage); the cluster's flags are added to them (nats-server's flags win over
 * its config). The routes between the servers are plain TCP on the management host.
 */
export function natsClusterNodes(address: string, dir: string, size: number, server: (port: number, storeDir: string, name: string) => string[]): NatsClusterNode[] {
  if (!Number.isInteger(size) || size < 1 || size > 9) throw new Error(`--nats-cluster ${size}: want 1 to 9 servers`);
  const route = (i: number) => `nats://${address}:${CLUSTER_PORT + i}`;
  return Array.from({ length: size }, (_, i) => ({
    name: `nats-${i + 1}`,
    port: CLIENT_PORT + i,
    args: [
      ...server(CLIENT_PORT + i, join(dir, `nats-${i + 1}`), `nats-${i + 1}`),
      '-n', `godwit-nats-${i + 1}`,
      '--cluster_name', 'godwit', '--cluster', route(i),
      '--routes', Array.from({ length: size }, (_, j) => route(j)).filter((_, j) => j !== i).join(','),
    ],
  }));
}

/** What clients connect to: every server, comma-separated (lib/bus.ts splits it). */
export function natsClusterUrl(address: string, nodes: readonly NatsClusterNode[]): string {
  return nodes.map((n) => `nats://${address}:${n.port}`).join(',');
}

/**
 * Resolves once the cluster's JetStream answers (its meta leader elected): the event stream is
 * made with its replicas, which also proves enough servers are up to hold them.
 */
export async function waitForJetStream(url: string, timeoutMs: number, security: Security): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  // As the controller: it is the one allowed to make streams (lib/nats-auth.ts).
  const bus = await Bus.connect({ servers: url, name: 'godwit-lab', security });
  try {
    let last: unknown;
    while (Date.now() < deadline) {
      try {
        await bus.ensureEventStream();
        return;
      } catch (err) {
        last = err;
        await new Promise((r) => setTimeout(r, 500));
      }
    }
    throw new Error(`the NATS cluster's JetStream did not answer within ${timeoutMs} ms: ${String(last)}`);
  } finally {
    await bus.close().catch(() => undefined);
  }
}
