/** A typed, promise-based client of the controller's Steering API: for the CLI, benchmarks and programs. */
import type { CreateServiceRequest } from '../proto/gen/godwit/v1/CreateServiceRequest.js';
import type { DeleteServiceRequest } from '../proto/gen/godwit/v1/DeleteServiceRequest.js';
import type { ListServicesResponse__Output } from '../proto/gen/godwit/v1/ListServicesResponse.js';
import type { RuleGeneration__Output } from '../proto/gen/godwit/v1/RuleGeneration.js';
import type { Service__Output } from '../proto/gen/godwit/v1/Service.js';
import type { ServiceKey } from '../proto/gen/godwit/v1/ServiceKey.js';
import type { SteeringChange__Output } from '../proto/gen/godwit/v1/SteeringChange.js';
import type { SteeringClient } from '../proto/gen/godwit/v1/Steering.js';
import type { UpdateServiceRequest } from '../proto/gen/godwit/v1/UpdateServiceRequest.js';
import { steeringClient, unary } from '../lib/rpc.js';

/** Long enough for a request that waits for the fleet (its own timeout is at most 5 minutes). */
const CALL_MS = 6 * 60_000;

export class SteeringApi {
  readonly client: SteeringClient;

  constructor(address: string) {
    this.client = steeringClient(address);
  }

  createService(req: CreateServiceRequest): Promise<SteeringChange__Output> {
    return unary(this.client, this.client.CreateService, req, CALL_MS);
  }

  updateService(req: UpdateServiceRequest): Promise<SteeringChange__Output> {
    return unary(this.client, this.client.UpdateService, req, CALL_MS);
  }

  deleteService(req: DeleteServiceRequest): Promise<SteeringChange__Output> {
    return unary(this.client, this.client.DeleteService, req, CALL_MS);
  }

  getService(service: ServiceKey): Promise<Service__Output> {
    return unary(this.client, this.client.GetService, { service }, CALL_MS);
  }

  listServices(): Promise<ListServicesResponse__Output> {
    return unary(this.client, this.client.ListServices, {}, CALL_MS);
  }

  /** The current generation first, then one per change, until the caller stops iterating. */
  async *watch(): AsyncGenerator<RuleGeneration__Output> {
    const stream = this.client.WatchSteering({});
    try {
      for await (const g of stream as AsyncIterable<RuleGeneration__Output>) yield g;
    } finally {
      stream.cancel();
    }
  }

  close(): void {
    this.client.close();
  }
}
