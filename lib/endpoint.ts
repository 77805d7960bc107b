import { isIPv4 } from 'node:net';

/** A (proto, address, port) a workload owns; what the lock holds and what steering follows. */
export interface Endpoint {
  proto: 'tcp' | 'udp';
  address: string;
  port: number;
}

export function formatEndpoint(e: Endpoint): string {
  return `${e.proto}://${e.address}:${e.port}`;
}

/** Parses "tcp://198.18.1.200:7000" or "198.18.1.200:7000" (tcp implied). */
export function parseEndpoint(text: string): Endpoint {
  const m = /^(?:(tcp|udp):\/\/)?([0-9.]+):(\d+)$/.exec(text.trim());
  if (!m) throw new Error(`endpoint "${text}" is not of the form [tcp|udp://]IPv4:PORT`);
  const e: Endpoint = { proto: (m[1] ?? 'tcp') as Endpoint['proto'], address: m[2], port: Number(m[3]) };
  const problem = endpointProblem(e);
  if (problem) throw new Error(problem);
  return e;
}

/**
 * The port of an address-wide lock entry: every TCP or UDP port of its address, for its protocol
 * (GODWIT_ANY_PORT in bpf/lock_maps.h). No packet is addressed to port 0, so it names no real
 * endpoint. Only the agent makes such entries (agent/lock-scope.ts), for what a migration locks
 * and holds; a user's endpoint never has it (endpointProblem refuses it).
 */
export const ANY_PORT = 0;

/** Every port of `address` for `proto`: an address-wide entry for the lock and the held packets. */
export function addressWide(proto: Endpoint['proto'], address: string): Endpoint {
  return { proto, address, port: ANY_PORT };
}

export function isAddressWide(e: Endpoint): boolean {
  return e.port === ANY_PORT;
}

/**
 * What the lock and the held packets accept: a user's endpoint, or an address-wide entry
 * (ANY_PORT). Never for validating what a user sent: use endpointProblem.
 */
export function lockEndpointProblem(e: Endpoint): string | undefined {
  return isAddressWide(e) ? endpointProblem({ ...e, port: 1 }) : endpointProblem(e);
}

/** Why an endpoint is unusable, or undefined when it is fine. IPv4 only for now (the lock parses IPv4). */
export function endpointProblem(e: Endpoint): string | undefined {
  if (e.proto !== 'tcp' && e.proto !== 'udp') return `endpoint proto "${e.proto}" must be tcp or udp`;
  if (!isIPv4(e.address)) return `endpoint address "${e.address}" must be an IPv4 address`;
  if (e.address === '0.0.0.0' || e.address.startsWith('127.'))
    return `endpoint address ${e.address} cannot move between hosts; bind the workload to an address of its own`;
  if (!Number.isInteger(e.port) || e.port < 1 || e.port > 65535) return `endpoint port ${e.port} must be 1-65535`;
  return undefined;
}
