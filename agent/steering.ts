/**
 * Packet steering as the agent sees it: the controller's rule table at one generation, and the
 * data plane that a host driver programs from it (agent/linux/steering-ebpf.ts on Linux).
 *
 * The controller owns the table; every agent holds the same table and programs its own kernel
 * from it. Ids are assigned by the controller and never reused for another service or backend,
 * so flow-table entries (which name a backend id) and counters (indexed by id) stay meaningful
 * across generations.
 */

/** One VIP endpoint and the workload endpoints behind it. */
export interface SteeringService {
  /** Stable id, 1..MAX: indexes per-service counters. */
  id: number;
  proto: 'tcp' | 'udp';
  /** IPv4 VIP, dotted quad. */
  vip: string;
  vipPort: number;
  backends: SteeringBackend[];
}

export interface SteeringBackend {
  /** Stable id, unique in the whole table, 1..MAX: flow entries and counters name it. */
  id: number;
  /** The workload endpoint packets are DNATed to (same proto as the service). */
  address: string;
  port: number;
  /** 1..1000: share of new flows relative to the service's other backends. */
  weight: number;
  /** The host where the workload runs now (fleet host name). */
  host: string;
  /** That host's data-plane IPv4 address: where other hosts tunnel this backend's packets. */
  hostAddress: string;
  /** A draining backend keeps its established flows but gets no new ones. */
  draining: boolean;
}

/** The whole rule table at one generation (the generation increases by one per change). */
export interface SteeringTable {
  generation: number;
  services: SteeringService[];
}

/** Traffic the data plane steered, per id (summed over CPUs). */
export interface SteeringCounter {
  packets: bigint;
  bytes: bigint;
  /** New flows this host recorded in its flow table for the id. */
  flows: bigint;
}

export interface SteeringCounters {
  services: Map<number, SteeringCounter>;
  backends: Map<number, SteeringCounter>;
}

/**
 * One host's steering data plane. apply() is atomic for traffic: a packet sees the previous
 * generation's table or the new one, never a mix.
 */
export interface SteeringDataplane {
  /** Load and attach (after the lock in the interface's program chain), reusing pinned maps and their flows. Idempotent. */
  install(): Promise<void>;
  /** Program the table; returns once the kernel holds it. A table at or below the applied generation is ignored. */
  apply(table: SteeringTable): Promise<{ generation: number; applied: boolean }>;
  /** The generation the kernel holds, as its maps say (survives an agent restart); 0 when none. */
  appliedGeneration(): Promise<number>;
  counters(): Promise<SteeringCounters>;
  /** Flow-table entries that name these backends (for "remove the last backend of a service with live flows"). */
  liveFlows(backendIds: readonly number[]): Promise<number>;
  /** Detach and remove this host's steering pins (lab teardown). */
  uninstall(): Promise<void>;
}
