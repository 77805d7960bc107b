/**
 * Where a workload runs, as the steering rule table says it: the migration's STEER step (and its
 * rollback) as pure code over the table. No I/O here: the orchestrator stores the result through
 * the steering store (controller/steering-store.ts), which is also how every agent learns it.
 *
 * A workload is named by its addresses (every address of its endpoints moves with it). Placing
 * it on a host points two things there, in one generation:
 *  - every backend whose address is the workload's (same ids: flow entries and counters that
 *    name them stay meaningful, so established flows keep their backend);
 *  - the addresses themselves (table.addresses): a fabric that routes an address to the host it
 *    was first announced from, and the return traffic of the workload's outgoing connections,
 *    reach it through any host.
 */
import type { SteeringAddress } from '../agent/steering.js';
import { PreconditionError, UnknownHostError } from '../lib/errors.js';
import type { FleetView, RuleTable } from './steering-table.js';

export interface Placement {
  /** The workload's addresses (IPv4). */
  addresses: readonly string[];
  /** The host it runs on from this generation. */
  host: string;
}

export interface PlacementResult {
  table: RuleTable;
  /** False when the table already placed the workload there (no generation spent). */
  changed: boolean;
  /** Ids of the backends that are the workload's (what its flows and counters name). */
  backendIds: number[];
}

export function placeWorkload(table: RuleTable, p: Placement, fleet: FleetView): PlacementResult {
  const hostAddress = fleet.hosts.get(p.host);
  if (hostAddress === undefined) throw new UnknownHostError(p.host, [...fleet.hosts.keys()].sort());
  if (!hostAddress)
    throw new PreconditionError(`host "${p.host}" has no data-plane address (its agent runs without --data-address): other hosts cannot tunnel its workload's packets to it`);
  const mine = new Set(p.addresses);
  const next: RuleTable = structuredClone(table);
  let changed = false;
  for (const s of next.services)
    for (const b of s.backends)
      if (mine.has(b.address) && (b.host !== p.host || b.hostAddress !== hostAddress)) {
        b.host = p.host;
        b.hostAddress = hostAddress;
        changed = true;
      }
  const addresses: SteeringAddress[] = (next.addresses ?? []).filter((a) => !mine.has(a.address));
  for (const address of mine) {
    const was = table.addresses?.find((a) => a.address === address);
    if (!was || was.host !== p.host || was.hostAddress !== hostAddress) changed = true;
    addresses.push({ address, host: p.host, hostAddress });
  }
  addresses.sort((a, b) => a.address.localeCompare(b.address, 'en', { numeric: true }));
  next.addresses = addresses;
  const backendIds = workloadBackendIds(table, p.addresses);
  if (!changed) return { table, changed: false, backendIds };
  next.generation = table.generation + 1;
  return { table: next, changed: true, backendIds };
}

/** The ids of every backend whose address is one of `addresses`, ascending. */
export function workloadBackendIds(table: RuleTable, addresses: readonly string[]): number[] {
  const mine = new Set(addresses);
  return table.services
    .flatMap((s) => s.backends)
    .filter((b) => mine.has(b.address))
    .map((b) => b.id)
    .sort((a, b) => a - b);
}
