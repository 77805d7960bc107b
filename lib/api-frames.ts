/**
 * What the NATS request API (controller/nats-api.ts) answers with. Every reply is one JSON
 * frame holding either a `result` (a message of the method's response type, as gRPC's client
 * sees it: proto field names in lowerCamelCase, 64-bit integers as strings, enums by name) or
 * the call's `status` (gRPC's status code, its name and message). A unary call gets one
 * frame; a server-streaming call gets a `result` per message and then always a `status`,
 * which ends it (OK when the stream ended normally).
 */
import { Metadata, status } from '@grpc/grpc-js';

export interface ApiStatus {
  /** gRPC status code (0 OK, 3 INVALID_ARGUMENT, 5 NOT_FOUND, 9 FAILED_PRECONDITION...). */
  code: number;
  /** The code's name, e.g. "NOT_FOUND". */
  name: string;
  message: string;
}

export type ApiFrame<T = unknown> = { result: T } | { status: ApiStatus };

export function statusFrame(code: number, message: string): { status: ApiStatus } {
  return { status: { code, name: status[code] ?? 'UNKNOWN', message } };
}

export const OK_FRAME = statusFrame(status.OK, '');

export function isStatusFrame(f: ApiFrame): f is { status: ApiStatus } {
  return typeof f === 'object' && f !== null && 'status' in f;
}

/**
 * A non-OK status from the NATS request API, shaped as grpc-js's ServiceError (code, details,
 * metadata) so callers handle both transports' errors alike (lib/rpc.ts isServiceError).
 */
export class ApiStatusError extends Error {
  readonly metadata = new Metadata();
  readonly details: string;
  constructor(readonly code: status, message: string) {
    super(`${code} ${status[code] ?? 'UNKNOWN'}: ${message}`);
    this.details = message;
    this.name = 'ApiStatusError';
  }
}
