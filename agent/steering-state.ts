/** The agent API's SteeringState: this host's data plane as its kernel maps say, for the controller. */
import type * as grpc from '@grpc/grpc-js';
import type { SteeringStateRequest__Output } from '../proto/gen/godwit/v1/SteeringStateRequest.js';
import type { SteeringStateResponse } from '../proto/gen/godwit/v1/SteeringStateResponse.js';
import { PreconditionError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import { handleUnary } from '../lib/rpc.js';
import type { SteeringCounter, SteeringDataplane } from './steering.js';

export function steeringStateHandler(
  host: string,
  steering: SteeringDataplane | undefined,
  log: Logger,
): grpc.handleUnaryCall<SteeringStateRequest__Output, SteeringStateResponse> {
  return handleUnary(log, 'SteeringState', async (req) => {
    if (!steering) throw new PreconditionError(`host "${host}" runs no steering data plane`);
    const ids = [...new Set(req.liveFlowBackendIds)];
    const [generation, counters, flows] = await Promise.all([
      steering.appliedGeneration(),
      steering.counters(),
      Promise.all(ids.map(async (id) => ({ backendId: id, flows: String(await steering.liveFlows([id])) }))),
    ]);
    return {
      appliedGeneration: generation,
      services: [...counters.services].map(([id, c]) => ({ id, counters: countersToWire(c) })),
      backends: [...counters.backends].map(([id, c]) => ({ id, counters: countersToWire(c) })),
      liveFlows: flows,
    };
  });
}

function countersToWire(c: SteeringCounter) {
  return { packets: c.packets.toString(), bytes: c.bytes.toString(), flows: c.flows.toString() };
}
