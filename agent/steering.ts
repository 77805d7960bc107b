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

/**
 * A workload address and the host it runs on now. Packets for it that reach any other host
 * (a routed fabric still delivers the address to the host it was first announced from; a VIP
 * flow's replies to an outbound connection; stragglers after a move) are tunnelled there whole,
 * with no NAT: the address itself is what moved. Written by migrations (controller/steering-
 * placement.ts); a host that owns the address passes its packets on to its stack.
 */
export interface SteeringAddress {
  /** IPv4, dotted quad. */
  address: string;
  host: string;
  /** That host's data-plane IPv4 address (the tunnel's destination). */
  hostAddress: string;
}

/** The whole rule table at one generation (the generation increases by one per change). */
export interface SteeringTable {
  generation: number;
  services: SteeringService[];
  /** Workload addresses and where they run (absent in tables written before addresses moved). */
  addresses?: SteeringAddress[];
}

/**
 * What this host's program did with packets whose backend or address is not here (since the
 * data plane was installed, summed over CPUs).
 */
export interface SteeringForwarding {
  /** Tunnelled on to the host the table names: a frame another host tunnelled here for a backend
   * or address that has moved on, or a packet for a moved address that the fabric delivered here. */
  forwarded: bigint;
  /** Dropped because this host knows no better place (the backend or address is in no table here,
   * or the frame was already forwarded once: two hosts disagreeing mid-change never loop it).
   * Never answered with a reset: the peer retransmits. */
  staleDropped: bigint;
}

/** Which of a host's steering state belongs to one workload. */
export interface WorkloadSelector {
  /** The workload's addresses: reverse-NAT entries whose backend address is one of these. */
  addresses: readonly string[];
  /** Its backends' ids: flow entries naming them, their counters. */
  backendIds: readonly number[];
}

/** A map's entries, packed as the kernel's batch calls take them. */
export interface PackedMapEntries {
  keySize: number;
  valueSize: number;
  count: number;
  keys: Buffer;
  values: Buffer;
}

/**
 * The steering state of one workload, as exported by the host it leaves and imported by the
 * host it moves to (agent/handoff-file.ts writes it into the image, versioned and checksummed).
 */
export interface SteeringHandoff {
  /** steer_flows entries whose backend is the workload's. */
  flows: PackedMapEntries;
  /** steer_rnat entries whose backend address is the workload's. */
  rnat: PackedMapEntries;
  /** Per-backend counters, summed over CPUs: the target adds them, the source zeroes its own. */
  backendCounters: Map<number, SteeringCounter>;
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
  /** Packets forwarded or dropped because their backend or address is elsewhere. */
  forwarding(): Promise<SteeringForwarding>;
  /** The workload's state (flows, reverse NAT, counters) as it is now; changes nothing. */
  exportWorkload(selector: WorkloadSelector): Promise<SteeringHandoff>;
  /** Writes an exported state here (flows and reverse NAT created or overwritten, counters added); returns the entries written. */
  importWorkload(handoff: SteeringHandoff): Promise<number>;
  /**
   * Removes what belongs to the workload here once it runs elsewhere (or never came): its
   * reverse-NAT entries and counters. Flow entries stay: the fabric keeps delivering those flows
   * to this host, which steers them on to the backend's new host. Returns the entries removed.
   */
  forgetWorkload(selector: WorkloadSelector): Promise<number>;
  /** Detach and remove this host's steering pins (lab teardown). */
  uninstall(): Promise<void>;
}
