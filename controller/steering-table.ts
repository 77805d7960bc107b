/**
 * The steering rule table as pure code: validate an operation against the table and the fleet,
 * and produce the next table (generation + 1). No I/O here: controller/steering-store.ts keeps
 * the table in JetStream KV, controller/steering-service.ts gathers what an operation needs to
 * know about the fleet (hosts, live flows) and calls applyOp.
 *
 * An operation that fails throws a typed error and leaves the table as it was; an operation that
 * changes nothing (draining a draining backend, setting a weight it already has) returns the
 * same table, so no generation is spent on it.
 */
import { isIPv4 } from 'node:net';
import type { SteeringBackend, SteeringService, SteeringTable } from '../agent/steering.js';
import { AlreadyExistsError, InvalidArgumentError, PreconditionError, SteeringNotFoundError, UnknownHostError } from '../lib/errors.js';

export const MIN_WEIGHT = 1;
export const MAX_WEIGHT = 1000;
/** Ids index per-id counters in the data plane; they are never reused, so they run out here. */
export const MAX_ID = 65_535;

/** The table as stored: what agents apply, plus the id counters that keep ids from being reused. */
export interface RuleTable extends SteeringTable {
  lastServiceId: number;
  lastBackendId: number;
}

export const EMPTY_TABLE: RuleTable = Object.freeze({ generation: 0, lastServiceId: 0, lastBackendId: 0, services: [] }) as RuleTable;

export type Proto = SteeringService['proto'];

export interface ServiceKey {
  proto: Proto;
  vip: string;
  port: number;
}

export interface BackendKey {
  address: string;
  port: number;
}

export type SteeringOp =
  | { op: 'create-service'; service: ServiceKey }
  | { op: 'delete-service'; service: ServiceKey; force?: boolean }
  | { op: 'add-backend'; service: ServiceKey; backend: BackendKey; weight: number; host: string }
  | { op: 'remove-backend'; service: ServiceKey; backend: BackendKey; force?: boolean }
  | { op: 'drain-backend'; service: ServiceKey; backend: BackendKey }
  | { op: 'set-weight'; service: ServiceKey; backend: BackendKey; weight: number };

/** What an operation must know about the fleet. */
export interface FleetView {
  /** Known hosts: name -> data address (IPv4, '' when the host did not say). */
  hosts: ReadonlyMap<string, string>;
  /** Live flows per backend id, summed over hosts, for the ids that liveFlowsNeeded() named. */
  liveFlows?: ReadonlyMap<number, number>;
}

export interface OpResult {
  table: RuleTable;
  /** False when the operation asked for what the table already says. */
  changed: boolean;
  /** The service after the operation (before it, for delete-service). */
  service: SteeringService;
}

export function formatService(k: ServiceKey): string {
  return `${k.proto}://${k.vip}:${k.port}`;
}

export function formatBackend(b: BackendKey): string {
  return `${b.address}:${b.port}`;
}

/**
 * The backend ids whose live flows decide whether `op` may go ahead: the last backend of a
 * service being removed, or a service being deleted, without force. Empty when none matter
 * (then the caller need not ask the hosts).
 */
export function liveFlowsNeeded(table: SteeringTable, op: SteeringOp): number[] {
  if (op.op === 'remove-backend' && !op.force) {
    const s = findService(table, op.service);
    if (!s || s.backends.length !== 1) return [];
    const b = s.backends[0];
    return sameBackend(b, op.backend) ? [b.id] : [];
  }
  if (op.op === 'delete-service' && !op.force) return findService(table, op.service)?.backends.map((b) => b.id) ?? [];
  return [];
}

/** Validates `op` against the table and the fleet and returns the next table; throws and changes nothing when it is wrong. */
export function applyOp(table: RuleTable, op: SteeringOp, fleet: FleetView): OpResult {
  checkServiceKey(op.service);
  const next: RuleTable = structuredClone(table);
  next.generation = table.generation + 1;
  switch (op.op) {
    case 'create-service': {
      const existing = findService(table, op.service);
      if (existing) throw new AlreadyExistsError(`service ${formatService(op.service)} exists already (id ${existing.id}); add backends to it instead`);
      checkVipIsFree(table, fleet, op.service.vip);
      if (table.lastServiceId >= MAX_ID) throw new PreconditionError(`all ${MAX_ID} service ids have been used; no service can be created`);
      const service: SteeringService = { id: table.lastServiceId + 1, proto: op.service.proto, vip: op.service.vip, vipPort: op.service.port, backends: [] };
      next.lastServiceId = service.id;
      next.services.push(service);
      next.services.sort(byServiceKey);
      return { table: next, changed: true, service };
    }
    case 'delete-service': {
      const s = mustFindService(table, op.service);
      if (!op.force) checkNoLiveFlows(s.backends, fleet, `delete service ${formatService(op.service)}`);
      next.services = next.services.filter((x) => x.id !== s.id);
      return { table: next, changed: true, service: s };
    }
    case 'add-backend': {
      const s = mustFindService(table, op.service);
      checkBackendKey(op.backend);
      checkWeight(op.weight);
      const hostAddress = fleet.hosts.get(op.host);
      if (hostAddress === undefined) throw new UnknownHostError(op.host, [...fleet.hosts.keys()].sort());
      const dup = s.backends.find((b) => sameBackend(b, op.backend));
      if (dup) throw new AlreadyExistsError(`service ${formatService(op.service)} has backend ${formatBackend(op.backend)} already (id ${dup.id}, on host "${dup.host}"); change its weight or remove it first`);
      const vipUser = table.services.find((x) => x.vip === op.backend.address);
      if (vipUser)
        throw new InvalidArgumentError('backend.address', `backend address ${op.backend.address} is the VIP of service ${formatService(keyOf(vipUser))}; give the backend its workload's own address`);
      if (table.lastBackendId >= MAX_ID) throw new PreconditionError(`all ${MAX_ID} backend ids have been used; no backend can be added`);
      const backend: SteeringBackend = {
        id: table.lastBackendId + 1,
        address: op.backend.address,
        port: op.backend.port,
        weight: op.weight,
        host: op.host,
        hostAddress,
        draining: false,
      };
      next.lastBackendId = backend.id;
      const ns = mustFindService(next, op.service);
      ns.backends.push(backend);
      ns.backends.sort(byBackendKey);
      return { table: next, changed: true, service: ns };
    }
    case 'remove-backend': {
      const s = mustFindService(table, op.service);
      const b = mustFindBackend(s, op.backend);
      if (s.backends.length === 1 && !op.force) checkNoLiveFlows([b], fleet, `remove the last backend ${formatBackend(op.backend)} of service ${formatService(op.service)}`);
      const ns = mustFindService(next, op.service);
      ns.backends = ns.backends.filter((x) => x.id !== b.id);
      return { table: next, changed: true, service: ns };
    }
    case 'drain-backend': {
      const s = mustFindService(table, op.service);
      const b = mustFindBackend(s, op.backend);
      if (b.draining) return { table, changed: false, service: s };
      const ns = mustFindService(next, op.service);
      mustFindBackend(ns, op.backend).draining = true;
      return { table: next, changed: true, service: ns };
    }
    case 'set-weight': {
      const s = mustFindService(table, op.service);
      checkWeight(op.weight);
      const b = mustFindBackend(s, op.backend);
      if (b.weight === op.weight) return { table, changed: false, service: s };
      const ns = mustFindService(next, op.service);
      mustFindBackend(ns, op.backend).weight = op.weight;
      return { table: next, changed: true, service: ns };
    }
  }
}

export function findService(table: SteeringTable, k: ServiceKey): SteeringService | undefined {
  return table.services.find((s) => s.proto === k.proto && s.vip === k.vip && s.vipPort === k.port);
}

export function keyOf(s: SteeringService): ServiceKey {
  return { proto: s.proto, vip: s.vip, port: s.vipPort };
}

export function mustFindService(table: SteeringTable, k: ServiceKey): SteeringService {
  const s = findService(table, k);
  if (!s) {
    const known = table.services.map((x) => formatService(keyOf(x)));
    throw new SteeringNotFoundError('service', formatService(k), `no service ${formatService(k)} (services: ${known.join(', ') || 'none'}); create it first`);
  }
  return s;
}

function mustFindBackend(s: SteeringService, k: BackendKey): SteeringBackend {
  const b = s.backends.find((x) => sameBackend(x, k));
  if (!b) {
    const known = s.backends.map((x) => formatBackend(x));
    throw new SteeringNotFoundError('backend', formatBackend(k), `service ${formatService(keyOf(s))} has no backend ${formatBackend(k)} (its backends: ${known.join(', ') || 'none'})`);
  }
  return b;
}

function sameBackend(b: BackendKey, k: BackendKey): boolean {
  return b.address === k.address && b.port === k.port;
}

function checkNoLiveFlows(backends: SteeringBackend[], fleet: FleetView, what: string): void {
  const flows = backends.reduce((sum, b) => sum + (fleet.liveFlows?.get(b.id) ?? 0), 0);
  if (flows > 0)
    throw new PreconditionError(
      `cannot ${what}: hosts hold ${flows} live flow(s) to it, which would break; add another backend first, wait for the flows to end (drain), or pass force`,
    );
}

/** IPv4 unicast a host could own: not 0.0.0.0/8, loopback, multicast or broadcast. */
function addressProblem(address: string, what: string): string | undefined {
  if (!isIPv4(address)) return `${what} "${address}" must be an IPv4 address (dotted quad, e.g. 198.18.1.200)`;
  const first = Number(address.split('.')[0]);
  if (first === 0 || first === 127 || first >= 224) return `${what} ${address} must be a unicast address a host can own (not 0.x, 127.x, multicast or broadcast)`;
  return undefined;
}

function checkPort(port: number, field: string): void {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new InvalidArgumentError(field, `${field} must be 1-65535, got ${port}`);
}

function checkServiceKey(k: ServiceKey): void {
  if (k.proto !== 'tcp' && k.proto !== 'udp') throw new InvalidArgumentError('service.protocol', `service.protocol must be TCP or UDP, got ${String(k.proto)}`);
  const problem = addressProblem(k.vip, 'service.vip');
  if (problem) throw new InvalidArgumentError('service.vip', problem);
  checkPort(k.port, 'service.port');
}

function checkBackendKey(k: BackendKey): void {
  const problem = addressProblem(k.address, 'backend.address');
  if (problem) throw new InvalidArgumentError('backend.address', problem);
  checkPort(k.port, 'backend.port');
}

function checkWeight(w: number): void {
  if (!Number.isInteger(w) || w < MIN_WEIGHT || w > MAX_WEIGHT)
    throw new InvalidArgumentError('weight', `weight must be an integer ${MIN_WEIGHT}-${MAX_WEIGHT} (a share of new flows relative to the service's other backends), got ${w}`);
}

/** A VIP must be an address of its own: not a host's (packets to it are the host's own) nor a workload's. */
function checkVipIsFree(table: SteeringTable, fleet: FleetView, vip: string): void {
  for (const [host, address] of fleet.hosts)
    if (address === vip) throw new InvalidArgumentError('service.vip', `vip ${vip} is the address of host "${host}"; a VIP must be an address no host owns`);
  for (const s of table.services)
    for (const b of s.backends)
      if (b.address === vip)
        throw new InvalidArgumentError(
          'service.vip',
          `vip ${vip} is the address of backend ${formatBackend(b)} of service ${formatService(keyOf(s))} (a workload's own address); pick an address no workload uses`,
        );
}

function byServiceKey(a: SteeringService, b: SteeringService): number {
  return a.vip.localeCompare(b.vip, 'en', { numeric: true }) || a.vipPort - b.vipPort || a.proto.localeCompare(b.proto);
}

function byBackendKey(a: SteeringBackend, b: SteeringBackend): number {
  return a.address.localeCompare(b.address, 'en', { numeric: true }) || a.port - b.port;
}
