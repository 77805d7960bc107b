/**
 * Serves a Prometheus registry over HTTP (`--metrics HOST:PORT` on the controller and agents):
 * GET /metrics answers the text exposition format; anything else is 404.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Registry } from 'prom-client';
import type { Bus } from './bus.js';

export interface MetricsEndpoint {
  port: number;
  close(): Promise<void>;
}

/** "host:port" (IPv6 in brackets) to listen() arguments; port 0 picks a free one. */
export function parseListenAddress(addr: string): { host: string; port: number } {
  const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(addr);
  if (!m) throw new Error(`metrics address "${addr}" is not HOST:PORT`);
  return { host: m[1] || '0.0.0.0', port: Number(m[2]) };
}

export async function serveMetrics(registry: Registry, addr: string): Promise<MetricsEndpoint> {
  const { host, port } = parseListenAddress(addr);
  const server: Server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404).end('not found: GET /metrics\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (err: Error) => res.writeHead(500).end(`${err.message}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise((r) => server.close(() => r())),
  };
}

/** `godwit_nats_reconnects_total`: how often this process's NATS connection came back. */
export function countNatsReconnects(registry: Registry, bus: Pick<Bus, 'onReconnect'>): void {
  const c = new Counter({ name: 'godwit_nats_reconnects_total', help: 'Reconnections of this process to the NATS server', registers: [registry] });
  bus.onReconnect(() => c.inc());
}
