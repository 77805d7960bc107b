/** Conversions between the steering wire messages (steering.proto) and the rule table's types. */
import type { Backend } from '../proto/gen/godwit/v1/Backend.js';
import type { BackendKey__Output } from '../proto/gen/godwit/v1/BackendKey.js';
import type { Service } from '../proto/gen/godwit/v1/Service.js';
import type { ServiceKey__Output } from '../proto/gen/godwit/v1/ServiceKey.js';
import type { TrafficCounters } from '../proto/gen/godwit/v1/TrafficCounters.js';
import type { SteeringCounter, SteeringService } from '../agent/steering.js';
import { InvalidArgumentError } from '../lib/errors.js';
import type { BackendKey, ServiceKey } from './steering-table.js';

/** Protocol unset means TCP (ipvsadm's -t is the common case). Address and port are checked by the table. */
export function serviceKeyFromWire(k: ServiceKey__Output | null | undefined, field = 'service'): ServiceKey {
  if (!k) throw new InvalidArgumentError(field, `${field} is required: protocol, vip and port`);
  const proto = !k.protocol || k.protocol === 'PROTOCOL_UNSPECIFIED' || k.protocol === 'TCP' ? 'tcp' : k.protocol === 'UDP' ? 'udp' : undefined;
  if (!proto) throw new InvalidArgumentError(`${field}.protocol`, `${field}.protocol must be TCP or UDP, got ${String(k.protocol)}`);
  return { proto, vip: k.vip, port: k.port };
}

export function backendKeyFromWire(k: BackendKey__Output | null | undefined, field = 'backend'): BackendKey {
  if (!k) throw new InvalidArgumentError(field, `${field} is required: the workload's address and port`);
  return { address: k.address, port: k.port };
}

export type CounterSums = Map<number, SteeringCounter>;

const ZERO: SteeringCounter = { packets: 0n, bytes: 0n, flows: 0n };

export function countersToWire(c: SteeringCounter = ZERO): TrafficCounters {
  return { packets: c.packets.toString(), bytes: c.bytes.toString(), flows: c.flows.toString() };
}

export function serviceToWire(s: SteeringService, counters?: { services: CounterSums; backends: CounterSums }): Service {
  return {
    id: s.id,
    protocol: s.proto === 'tcp' ? 'TCP' : 'UDP',
    vip: s.vip,
    port: s.vipPort,
    counters: countersToWire(counters?.services.get(s.id)),
    backends: s.backends.map(
      (b): Backend => ({
        id: b.id,
        address: b.address,
        port: b.port,
        weight: b.weight,
        host: b.host,
        hostAddress: b.hostAddress,
        state: b.draining ? 'DRAINING' : 'ACTIVE',
        counters: countersToWire(counters?.backends.get(b.id)),
      }),
    ),
  };
}
