/**
 * Everything the agent does to its host goes through this interface. Linux is real today
 * (agent/linux/); a FreeBSD driver (jails, RCTL, its CRIU port) implements the same interface.
 */
import type { Endpoint } from '../lib/endpoint.js';
import type { LockModeName, LockStrategy } from './lock-strategy.js';
import type { NetLock } from './netlock.js';
import type { SteeringDataplane } from './steering.js';
import type { WorkloadSocket } from '../lib/workload-sockets.js';
import type { FileMismatch, TreeFacts, WorkloadFile } from '../lib/workload-facts.js';
import type { LaunchSpec } from './linux/init-launcher.js';

export interface ProcessSummary {
  pid: number;
  command: string;
  processes: number;
  onThisHost: boolean;
}

export interface AddressControl {
  addresses(): Promise<string[]>;
  addAddress(address: string): Promise<boolean>;
  removeAddress(address: string): Promise<boolean>;
  announce(address: string): Promise<void>;
}

/** Packets in the packed form they travel and are stored in: [u32 length LE][IP packet] each. */
export interface HeldPackets {
  count: number;
  bytes: Buffer;
}

/**
 * The packets the network lock stopped, kept so that they can be delivered after unlock
 * instead of waiting for their peers to retransmit (agent/linux/packet-hold.ts says why).
 */
export interface HeldTraffic {
  /**
   * Takes the held packets addressed to these endpoints, in arrival order, each connection's
   * contiguous TCP data already joined into one segment; later takes will not see them again.
   * An address-wide endpoint (port ANY_PORT, lib/endpoint.ts) takes every port of its address
   * and protocol: the return traffic of the workload's outgoing connections (agent/lock-scope.ts).
   */
  take(endpoints: readonly Endpoint[]): HeldPackets;
  /**
   * Sends the packets on from this host to their destination address, each connection's
   * contiguous TCP data joined into one segment; returns how many packets went.
   */
  deliver(held: HeldPackets): number;
  /** Forgets every held packet (when no lock is held, nothing waits for them); returns how many records went. */
  discardAll(): number;
}

export interface PlatformProbe {
  criuVersion: string;
  criuOk: boolean;
  criuProblem: string;
  lockOk: boolean;
  lockProblem: string;
  addresses: string[];
  /** The agent's effective capabilities by name (CRIU runs with them). */
  capabilities: string[];
  cpuFeatures: string[];
}

export interface HostPlatform {
  readonly netlock: NetLock;
  readonly held: HeldTraffic;
  readonly network: AddressControl;
  /** The host's steering data plane, where the platform has one. */
  readonly steering?: SteeringDataplane;
  /**
   * Reads a large file of a received image without copying it where the platform can (Linux:
   * mapped); absent: read as a copy. The file must not be truncated while the buffer is in use.
   */
  readonly readImageFile?: (path: string) => Buffer | Promise<Buffer>;
  /**
   * How this host holds a migration's network in a lock mode, checkpointing and restoring with
   * it; throws PreconditionError for a mode the platform does not have.
   */
  lockStrategy(mode: LockModeName): LockStrategy;
  processInfo(pid: number): Promise<ProcessSummary | undefined>;
  /** Every TCP and UDP socket held by the process and its descendants, as the host's kernel shows them. */
  workloadSockets(pid: number): Promise<WorkloadSocket[]>;
  probe(): Promise<PlatformProbe>;
  /** Preflight's facts about the tree rooted at `pid`; files under `skipPrefixes` are left out. */
  treeFacts(pid: number, skipPrefixes: readonly string[]): Promise<TreeFacts>;
  /** Which of these files (the source's) are missing here or differ. */
  checkFiles(files: readonly WorkloadFile[]): Promise<FileMismatch[]>;
  /** Starts a command so that CRIU can move it (`godwit run`); returns its init's host PID. */
  launchWorkload(spec: LaunchSpec): Promise<number>;
}
