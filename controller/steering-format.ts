/**
 * How the CLI shows steering, in the shape `ipvsadm -Ln --stats` users know: one line per
 * service ("Prot LocalAddress:Port"), one "  -> RemoteAddress:Port" line per backend under it.
 * Pure functions of the API's messages.
 */
import type { Service__Output } from '../proto/gen/godwit/v1/Service.js';
import type { ServiceKey } from '../proto/gen/godwit/v1/ServiceKey.js';
import type { SteeringChange__Output } from '../proto/gen/godwit/v1/SteeringChange.js';

const COLUMNS = [
  ['Host', 12],
  ['Weight', 6],
  ['State', 8],
  ['Flows', 10],
  ['Pkts', 12],
  ['Bytes', 14],
] as const;
const ADDR_WIDTH = 28;

function row(first: string, cells: string[]): string {
  const parts = [first.padEnd(ADDR_WIDTH)];
  COLUMNS.forEach(([, w], i) => parts.push(i < 3 ? (cells[i] ?? '').padEnd(w) : (cells[i] ?? '').padStart(w)));
  return parts.join(' ').trimEnd();
}

/** "Prot LocalAddress:Port ..." table of services and their backends, with counters. */
export function formatServices(services: Service__Output[], generation?: string): string {
  const lines: string[] = [];
  if (generation !== undefined) lines.push(`godwit steering, rule generation ${generation}`);
  lines.push(row('Prot LocalAddress:Port', COLUMNS.map(([name]) => name)));
  lines.push('  -> RemoteAddress:Port');
  for (const s of services) {
    const c = s.counters;
    lines.push(row(`${s.protocol.padEnd(4)} ${s.vip}:${s.port}`, ['', '', '', c?.flows ?? '0', c?.packets ?? '0', c?.bytes ?? '0']));
    for (const b of s.backends) {
      const bc = b.counters;
      lines.push(
        row(`  -> ${b.address}:${b.port}`, [b.host, String(b.weight), b.state === 'DRAINING' ? 'Draining' : 'Active', bc?.flows ?? '0', bc?.packets ?? '0', bc?.bytes ?? '0']),
      );
    }
  }
  return lines.join('\n');
}

/** One line for an accepted change, and how the fleet converged when the request waited. */
export function formatChange(what: string, c: SteeringChange__Output): string {
  const lines = [`${what}: rule generation ${c.generation}`];
  if (c.waited)
    lines.push(
      c.converged
        ? `every ready host holds generation ${c.generation} (${c.convergeMs.toFixed(1)} ms after it was accepted)`
        : `NOT every host holds generation ${c.generation} after ${c.convergeMs.toFixed(0)} ms; lagging: ${c.laggingHosts.join(', ')}`,
    );
  return lines.join('\n');
}

export function formatKey(k: ServiceKey): string {
  return `${String(k.protocol ?? 'TCP')} ${k.vip}:${k.port}`;
}

/**
 * "tcp://VIP:PORT", "udp://VIP:PORT" or "VIP:PORT" (TCP) into a service key. Only the shape is
 * checked here; the controller validates the address and port and says what is wrong.
 */
export function parseServiceKey(text: string): ServiceKey {
  const m = /^(?:(tcp|udp):\/\/)?(.+):(\d+)$/i.exec(text.trim());
  if (!m) throw new Error(`service "${text}" must be [tcp://|udp://]VIP:PORT, e.g. tcp://198.18.1.200:80`);
  return { protocol: (m[1] ?? 'tcp').toUpperCase() as 'TCP' | 'UDP', vip: m[2], port: Number(m[3]) };
}

/** "ADDRESS:PORT" of a backend (ipvsadm's -r). */
export function parseBackendKey(text: string): { address: string; port: number } {
  const m = /^(.+):(\d+)$/.exec(text.trim());
  if (!m) throw new Error(`backend "${text}" must be ADDRESS:PORT, e.g. 198.18.1.201:8080`);
  return { address: m[1], port: Number(m[2]) };
}
