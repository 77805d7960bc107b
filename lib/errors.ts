import { status } from '@grpc/grpc-js';
import { formatSocket, type WorkloadSocket } from './workload-sockets.js';

/**
 * An error a caller handles by its kind. Each carries the gRPC status it maps to, so the one
 * place that turns errors into statuses (lib/rpc.ts) needs no string matching.
 */
export abstract class GodwitError extends Error {
  abstract readonly code: status;
}

/** The request itself is wrong; fix the request. */
export class InvalidArgumentError extends GodwitError {
  readonly code = status.INVALID_ARGUMENT;
  constructor(readonly field: string, message: string) {
    super(message);
    this.name = 'InvalidArgumentError';
  }
}

export class UnknownHostError extends GodwitError {
  readonly code = status.NOT_FOUND;
  constructor(readonly host: string, readonly known: readonly string[]) {
    super(`host "${host}" is not registered with the controller (known hosts: ${known.join(', ') || 'none'}); start its agent or fix the name`);
    this.name = 'UnknownHostError';
  }
}

export class ProcessNotFoundError extends GodwitError {
  readonly code = status.NOT_FOUND;
  constructor(readonly host: string, readonly pid: number) {
    super(`no process with PID ${pid} on host "${host}"; give the host PID of the workload's root process`);
    this.name = 'ProcessNotFoundError';
  }
}

export class MigrationNotFoundError extends GodwitError {
  readonly code = status.NOT_FOUND;
  constructor(readonly migrationId: string) {
    super(`no migration with id "${migrationId}"`);
    this.name = 'MigrationNotFoundError';
  }
}

/** The world is not in the state the operation needs; retrying will not help until it is fixed. */
export class PreconditionError extends GodwitError {
  readonly code = status.FAILED_PRECONDITION;
  constructor(message: string) {
    super(message);
    this.name = 'PreconditionError';
  }
}

/**
 * The requested CRIU lock mode is known to fail at the workload's connection count (dump aborted,
 * restore failed, workload lost); the request may accept the risk with allow_unsafe_lock.
 */
export class UnsafeLockModeError extends PreconditionError {
  constructor(
    readonly lockMode: string,
    readonly tcpConnections: number,
    /** The connection count the mode is refused from. */
    readonly refuseAt: number,
    /** What goes wrong at that count, as measured. */
    readonly failure: string,
  ) {
    super(
      `lock_mode ${lockMode} is not safe for this workload's ${tcpConnections} TCP connections (refused from ${refuseAt}): ${failure}; ` +
        'use lock_mode EBPF, or set allow_unsafe_lock to accept the risk',
    );
    this.name = 'UnsafeLockModeError';
  }
}

/** How many of a workload's host-bound sockets a refusal names. */
const HOST_BOUND_NAMED = 3;

/**
 * The workload holds sockets whose local address stays on the source host (lib/workload-sockets.ts):
 * CRIU could not bind them back on the target, so the move is refused before anything is frozen.
 * The message names the first few and the fix.
 */
export class HostBoundSocketsError extends PreconditionError {
  constructor(
    readonly host: string,
    readonly pid: number,
    /** The first host-bound sockets the agent listed. */
    readonly sockets: readonly WorkloadSocket[],
    /** How many there are in all (the agent lists only the first ones). */
    readonly total: number,
    /** The workload's endpoint addresses: where its sockets should be bound instead. */
    readonly endpointAddresses: readonly string[],
  ) {
    super(hostBoundMessage(host, pid, sockets, Math.max(total, sockets.length), endpointAddresses));
    this.name = 'HostBoundSocketsError';
  }
}

function hostBoundMessage(host: string, pid: number, sockets: readonly WorkloadSocket[], total: number, endpointAddresses: readonly string[]): string {
  const named = sockets.slice(0, HOST_BOUND_NAMED).map(formatSocket);
  const more = total - named.length;
  const locals = [...new Set(sockets.map((s) => s.localAddress))];
  const one = locals.length === 1;
  const which = one ? `its local address ${locals[0]} is` : `their local addresses ${locals.join(', ')} are`;
  const target = endpointAddresses[0] ?? 'ENDPOINT_ADDRESS';
  const fixes: string[] = [];
  if (sockets.some((s) => s.remotePort !== 0))
    fixes.push(
      "bind the workload's outgoing connections to one of its endpoint addresses " +
        `(for redis: bind-source-addr ${target}; generally: bind() before connect())`,
    );
  if (sockets.some((s) => s.remotePort === 0)) fixes.push(`bind its listening sockets to one of its endpoint addresses (${target}) or to 0.0.0.0`);
  fixes.push(one ? 'or add that address as an endpoint' : 'or add those addresses as endpoints');
  return (
    `workload ${pid} on host "${host}" holds ${total} socket${total === 1 ? '' : 's'} whose local address does not move with it: ` +
    `${named.join(', ')}${more > 0 ? ` (and ${more} more)` : ''}; ` +
    `${which} host ${host}'s own and ${one ? 'does' : 'do'} not move with the workload; ${fixes.join(', ')}`
  );
}

/** What preflight checks before anything freezes (controller/preflight-tree.ts, preflight-files.ts). */
export type PreflightCheck = 'capability' | 'namespace-init' | 'sysv-shm' | 'unix-socket' | 'files' | 'cpu-features' | 'criu-version';

/**
 * Preflight found something CRIU cannot dump or restore for this workload on these hosts: the
 * move is refused before anything is locked or frozen. The message names the process or file
 * and the fix.
 */
export class WorkloadCannotMoveError extends PreconditionError {
  constructor(readonly check: PreflightCheck, message: string) {
    super(message);
    this.name = 'WorkloadCannotMoveError';
  }
}

export class NotImplementedError extends GodwitError {
  readonly code = status.UNIMPLEMENTED;
  constructor(message: string) {
    super(message);
    this.name = 'NotImplementedError';
  }
}

/** A step on a host failed (criu, ip, bpftool): the migration records it and compensates. */
export class HostOperationError extends GodwitError {
  readonly code = status.INTERNAL;
  constructor(readonly host: string, readonly operation: string, message: string) {
    super(`${operation} on host "${host}" failed: ${message}`);
    this.name = 'HostOperationError';
  }
}

/** Something the request would create exists already. */
export class AlreadyExistsError extends GodwitError {
  readonly code = status.ALREADY_EXISTS;
  constructor(message: string) {
    super(message);
    this.name = 'AlreadyExistsError';
  }
}

/** A steering service or backend the request names does not exist. */
export class SteeringNotFoundError extends GodwitError {
  readonly code = status.NOT_FOUND;
  constructor(readonly what: 'service' | 'backend', readonly key: string, message: string) {
    super(message);
    this.name = 'SteeringNotFoundError';
  }
}

/** Lost a compare-and-set to another writer too many times in a row; the caller may retry. */
export class ConflictError extends GodwitError {
  readonly code = status.ABORTED;
  constructor(message: string) {
    super(message);
    this.name = 'ConflictError';
  }
}
