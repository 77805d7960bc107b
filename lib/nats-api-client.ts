/**
 * A caller of the NATS request API (controller/nats-api.ts) for programs that speak only NATS:
 * a unary call resolves with its result or rejects with the status as an ApiStatusError (the
 * same code and message a gRPC client gets); a streaming call yields each result and ends at
 * its status frame. Bodies are the proto's JSON (field names as in the .proto or lowerCamelCase).
 */
import { ApiStatusError, isStatusFrame, type ApiFrame } from './api-frames.js';
import type { Bus } from './bus.js';
import { SUBJECTS } from './subjects.js';

const CALL_MS = 60_000;
/** Longest wait for a stream's next message (a drain's record changes at each migration's end). */
const STREAM_IDLE_MS = 300_000;

export class NatsApiClient {
  constructor(private readonly bus: Bus) {}

  async call<T>(method: string, body: unknown, timeoutMs = CALL_MS): Promise<T> {
    const frame = await this.bus.request<ApiFrame<T>>(SUBJECTS.apiRequest(method), body, timeoutMs);
    if (isStatusFrame(frame)) throw new ApiStatusError(frame.status.code, frame.status.message);
    return frame.result;
  }

  /** Each message of a server-streaming method; a non-OK end rejects with its status. */
  async *stream<T>(method: string, body: unknown): AsyncGenerator<T> {
    const frames = this.bus.requestStream<ApiFrame<T>>(SUBJECTS.apiRequest(method), body, { last: isStatusFrame, idleMs: STREAM_IDLE_MS, cancelSubject: SUBJECTS.apiStreamCancel });
    for await (const f of frames) {
      if (!isStatusFrame(f)) {
        yield f.result;
        continue;
      }
      if (f.status.code !== 0) throw new ApiStatusError(f.status.code, f.status.message);
      return;
    }
    throw new Error(`${method}: the stream ended without a status`);
  }
}
