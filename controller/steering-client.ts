/**
 * The controller's Steering API as the CLI, the demo and the benchmarks use it: GodwitClient
 * (lib/client.ts) with the names they call and a deadline long enough for a change that waits
 * for the fleet.
 */
import type { CreateServiceRequest } from '../proto/gen/godwit/v1/CreateServiceRequest.js';
import type { DeleteServiceRequest } from '../proto/gen/godwit/v1/DeleteServiceRequest.js';
import type { ListServicesResponse__Output } from '../proto/gen/godwit/v1/ListServicesResponse.js';
import type { RuleGeneration__Output } from '../proto/gen/godwit/v1/RuleGeneration.js';
import type { Service__Output } from '../proto/gen/godwit/v1/Service.js';
import type { ServiceKey } from '../proto/gen/godwit/v1/ServiceKey.js';
import type { SteeringChange__Output } from '../proto/gen/godwit/v1/SteeringChange.js';
import type { UpdateServiceRequest } from '../proto/gen/godwit/v1/UpdateServiceRequest.js';
import { GodwitClient } from '../lib/client.js';

/** Long enough for a request that waits for the fleet (its own timeout is at most 5 minutes). */
const CALL_MS = 6 * 60_000;

export class SteeringApi extends GodwitClient {
  constructor(address: string) {
    super({ address, deadlineMs: CALL_MS });
  }

  createService(req: CreateServiceRequest): Promise<SteeringChange__Output> {
    return this.call('CreateService', req);
  }

  updateService(req: UpdateServiceRequest): Promise<SteeringChange__Output> {
    return this.call('UpdateService', req);
  }

  deleteService(req: DeleteServiceRequest): Promise<SteeringChange__Output> {
    return this.call('DeleteService', req);
  }

  getService(service: ServiceKey): Promise<Service__Output> {
    return this.call('GetService', { service });
  }

  listServices(): Promise<ListServicesResponse__Output> {
    return this.call('ListServices', {});
  }

  /** The current generation first, then one per change, until the caller stops iterating. */
  watch(): AsyncGenerator<RuleGeneration__Output> {
    return this.stream('WatchSteering', {});
  }
}
