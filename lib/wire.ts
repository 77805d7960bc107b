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
