/**
 * What a migration locks and holds for a workload: its endpoints, and every port of each of its
 * addresses.
 *
 * Why every port: a workload's own outgoing connections (to a database, to a primary) leave from
 * its address and an ephemeral port, so their return traffic matches none of its endpoints.
 * Without an address-wide entry it reaches the stack during the freeze, and on the target, once
 * the address is up and before the restore has made the socket, it would be answered with a
 * reset. Every packet to a workload's address belongs to the workload (the address moves with
 * it), so holding all of it costs no one else anything.
 */
import { addressWide, type Endpoint } from '../lib/endpoint.js';

const PROTOS: readonly Endpoint['proto'][] = ['tcp', 'udp'];

/**
 * The endpoints, then one address-wide entry (port ANY_PORT) per address of the workload and
 * protocol (tcp and udp, whatever the endpoints use: an outgoing connection's protocol is not
 * one of theirs), without repeats. Pure and idempotent: lockScope(lockScope(e)) == lockScope(e),
 * so a recorded scope can be passed back through it.
 */
export function lockScope(endpoints: readonly Endpoint[]): Endpoint[] {
  const scope = new Map<string, Endpoint>();
  const add = (e: Endpoint) => {
    const id = `${e.proto}/${e.address}/${e.port}`;
    if (!scope.has(id)) scope.set(id, { proto: e.proto, address: e.address, port: e.port });
  };
  endpoints.forEach(add);
  for (const address of new Set(endpoints.map((e) => e.address))) for (const proto of PROTOS) add(addressWide(proto, address));
  return [...scope.values()];
}
