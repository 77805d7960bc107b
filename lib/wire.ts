/** Conversions between the wire (proto) messages and the domain types, with validation. */
import type { Endpoint as WireEndpoint, Endpoint__Output } from '../proto/gen/godwit/v1/Endpoint.js';
import type { Workload__Output } from '../proto/gen/godwit/v1/Workload.js';
import type { WorkloadSocket as WireWorkloadSocket, WorkloadSocket__Output } from '../proto/gen/godwit/v1/WorkloadSocket.js';
import { endpointProblem, type Endpoint } from './endpoint.js';
import { InvalidArgumentError } from './errors.js';
import type { WorkloadSocket } from './workload-sockets.js';

export interface WorkloadSpec {
  pid: number;
  endpoints: Endpoint[];
}

export function endpointFromWire(e: Endpoint__Output, field = 'endpoint'): Endpoint {
  const proto = e.protocol === 'TCP' ? 'tcp' : e.protocol === 'UDP' ? 'udp' : undefined;
  if (!proto) throw new InvalidArgumentError(`${field}.protocol`, `${field}.protocol must be TCP or UDP`);
  const endpoint: Endpoint = { proto, address: e.address, port: e.port };
  const problem = endpointProblem(endpoint);
  if (problem) throw new InvalidArgumentError(field, `${field}: ${problem}`);
  return endpoint;
}

export function endpointToWire(e: Endpoint): WireEndpoint {
  return { protocol: e.proto === 'tcp' ? 'TCP' : 'UDP', address: e.address, port: e.port };
}

export function endpointsFromWire(list: Endpoint__Output[], field = 'endpoints'): Endpoint[] {
  return list.map((e, i) => endpointFromWire(e, `${field}[${i}]`));
}

/** The lock leases godwit takes: long enough for a large image, short enough that a dead controller's lock goes. */
export const LEASE_MS = { min: 1_000, max: 3_600_000 } as const;

/** Linux's limit on one argument string (MAX_ARG_STRLEN). */
const MAX_ARG_BYTES = 128 * 1024;
const MAX_ARGS = 4096;

/**
 * A command line as exec takes it: a program and its arguments, none with a NUL (exec cannot pass
 * one), none longer than the kernel takes; the working folder and user likewise.
 */
export function commandFromWire(command: readonly string[], cwd = '', user = ''): string[] {
  if (command.length === 0 || !command[0]) throw new InvalidArgumentError('command', 'command is required: the program and its arguments');
  if (command.length > MAX_ARGS) throw new InvalidArgumentError('command', `command has ${command.length} arguments; at most ${MAX_ARGS}`);
  command.forEach((arg, i) => {
    if (arg.includes('\0')) throw new InvalidArgumentError(`command[${i}]`, `command[${i}] contains a NUL byte, which no program argument can carry`);
    if (Buffer.byteLength(arg) > MAX_ARG_BYTES) throw new InvalidArgumentError(`command[${i}]`, `command[${i}] is longer than the kernel's ${MAX_ARG_BYTES} bytes per argument`);
  });
  for (const [field, v] of [['cwd', cwd], ['user', user]] as const) {
    if (v.includes('\0') || v.length > 4096) throw new InvalidArgumentError(field, `${field} must be at most 4096 characters without NUL bytes`);
  }
  return [...command];
}

export function workloadFromWire(w: Workload__Output | null | undefined, field = 'workload'): WorkloadSpec {
  if (!w) throw new InvalidArgumentError(field, `${field} is required: the root PID and at least one endpoint`);
  if (!Number.isInteger(w.pid) || w.pid <= 1)
    throw new InvalidArgumentError(`${field}.pid`, `${field}.pid must be the host PID of the workload's root process (> 1), got ${w.pid}`);
  if (w.endpoints.length === 0)
    throw new InvalidArgumentError(`${field}.endpoints`, `${field}.endpoints must name at least one endpoint the workload owns (protocol, address, port)`);
  return { pid: w.pid, endpoints: endpointsFromWire(w.endpoints, `${field}.endpoints`) };
}

export function workloadToWire(w: WorkloadSpec) {
  return { pid: w.pid, endpoints: w.endpoints.map(endpointToWire) };
}

/** Lock versions are u64 on the wire (decimal strings in JS) and bigint in the drivers. */
export function versionFromWire(v: string, field = 'version'): bigint {
  if (!/^\d+$/.test(v) || v === '0') throw new InvalidArgumentError(field, `${field} must be a positive integer, got "${v}"`);
  return BigInt(v);
}

export function workloadSocketToWire(s: WorkloadSocket): WireWorkloadSocket {
  return {
    protocol: s.proto === 'tcp' ? 'TCP' : 'UDP',
    localAddress: s.localAddress,
    localPort: s.localPort,
    remoteAddress: s.remoteAddress,
    remotePort: s.remotePort,
    state: s.state,
  };
}

export function workloadSocketFromWire(s: WorkloadSocket__Output): WorkloadSocket {
  return {
    proto: s.protocol === 'UDP' ? 'udp' : 'tcp',
    localAddress: s.localAddress,
    localPort: s.localPort,
    remoteAddress: s.remoteAddress,
    remotePort: s.remotePort,
    state: s.state,
  };
}
