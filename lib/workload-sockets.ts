/**
 * A workload's TCP and UDP sockets, and which of them cannot move with it. Pure, shared by the
 * agent (it judges the sockets its platform read, agent/linux/process-sockets.ts) and the
 * controller (it refuses the move and says why, controller/preflight.ts).
 *
 * A moved workload takes its endpoint addresses along; CRIU restores every socket by binding its
 * original local address, so a socket whose local address is one the source host keeps (its own
 * address, say, which an outgoing connect() picks when the program does not bind first) fails the
 * restore with "Can't bind inet socket back: Cannot assign requested address" (FIELD-NOTES: a
 * redis replica's link to its primary), after the workload was frozen for nothing.
 */
import { isIPv4 } from 'node:net';
import type { Endpoint } from './endpoint.js';

export interface WorkloadSocket {
  proto: 'tcp' | 'udp';
  /** Dotted quad, or IPv6 text (an IPv4-mapped address is given as IPv4). */
  localAddress: string;
  localPort: number;
  /** '' for a listener or an unconnected UDP socket. */
  remoteAddress: string;
  /** 0 for a listener or an unconnected UDP socket. */
  remotePort: number;
  /** TCP: ESTABLISHED, LISTEN, SYN_SENT...; UDP: CONNECTED or UNCONNECTED. */
  state: string;
}

/** How many host-bound sockets an agent lists in its answer (it counts them all). */
export const HOST_BOUND_SOCKETS_REPORTED = 32;

/**
 * True when a local address moves with the workload or belongs to no host: the wildcard (the
 * socket takes whatever address the target gives it), loopback (every host has it), or one of the
 * workload's endpoint addresses.
 */
export function addressMovesWithWorkload(address: string, endpointAddresses: ReadonlySet<string>): boolean {
  if (endpointAddresses.has(address)) return true;
  if (isIPv4(address)) return address === '0.0.0.0' || address.startsWith('127.');
  return address === '::' || address === '::1';
}

/**
 * The sockets whose local address stays on this host when the workload moves: connections
 * (a connected socket's local address is the source address the kernel picked or the program
 * bound) and listeners or bound UDP sockets on a specific address, when that address is none of
 * the endpoints', not loopback and not the wildcard. The endpoints' ports do not matter: an
 * outgoing connection from an endpoint address uses an ephemeral port, and moves all the same.
 */
export function hostBoundSockets(sockets: readonly WorkloadSocket[], endpoints: readonly Endpoint[]): WorkloadSocket[] {
  const moving = new Set(endpoints.map((e) => e.address));
  return sockets.filter((s) => !addressMovesWithWorkload(s.localAddress, moving));
}

/**
 * TCP sockets with a peer: what CRIU's iptables / nftables lock locks one by one
 * ("tcp_connection()" in criu/sk-inet.c: TCP with a peer port, so not the listeners).
 */
export function tcpConnectionCount(sockets: readonly WorkloadSocket[]): number {
  return sockets.filter((s) => s.proto === 'tcp' && s.remotePort !== 0).length;
}

/** "tcp 198.18.1.2:41234 -> 198.18.1.100:6379", "tcp 198.18.1.2:8080 (LISTEN)", "udp 198.18.1.2:53 (UNCONNECTED)". */
export function formatSocket(s: WorkloadSocket): string {
  const local = `${s.proto} ${hostPort(s.localAddress, s.localPort)}`;
  return s.remotePort !== 0 ? `${local} -> ${hostPort(s.remoteAddress, s.remotePort)}` : `${local} (${s.state})`;
}

function hostPort(address: string, port: number): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}
