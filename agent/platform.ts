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
  /** Post-copy: this host can restore a workload whose memory arrives later (userfaultfd). */
  userfaultfd: boolean;
  userfaultfdProblem: string;
  /** The agent's effective capabilities by name (CRIU runs with them). */
  capabilities: string[];
  cpuFeatures: string[];
}

/** A process as it can be found again after a restart: a PID alone may have been reused since. */
export interface ProcessId {
  pid: number;
  /** When it started (Linux: clock ticks since boot, /proc/PID/stat). */
  startTime: number;
}

/** A CRIU process of a post-copy migration that outlives the RPC that started it. */
export interface LazyProcess {
  /** Resolves with the exit code (null: killed) when it ends. */
  readonly ended: Promise<number | null>;
  readonly running: boolean;
  kill(): void;
}

/**
 * Post-copy (criu --lazy-pages, agent/linux/lazy-pages.ts): the workload resumes on the target
 * before its memory has arrived; the source serves the memory until the target has all of it.
 */
export interface PostCopy {
  /**
   * Source: checkpoints the tree without its lazily restorable memory and serves that memory on a
   * page server of this host; resolves once the image is written. `served` ends when the target
   * has fetched everything (the dumped tasks are gone then) or the server failed.
   */
  dump(pid: number, imageDir: string): Promise<{ durationMs: number; pageServer: string; lazyBytes: number; server: LazyProcess; serverId?: ProcessId }>;
  /**
   * The page server a dump started (`serverId`), while it still serves: an agent started again
   * finds the one its earlier run left serving. Undefined once it has ended.
   */
  findServer(serverId: ProcessId, imageDir: string): LazyProcess | undefined;
  /** Target: starts the lazy-pages daemon against `pageServer`, then restores the tree lazily. */
  restore(imageDir: string, pageServer: string): Promise<{ pid: number; durationMs: number; daemon: LazyProcess }>;
  /**
   * Source rollback: fetches back every page the dump left to the page server, so the image is
   * whole, and ends the page server's session (CRIU then ends the frozen tasks as a normal dump
   * does). Returns the bytes fetched.
   */
  reclaim(imageDir: string, pageServer: string): Promise<number>;
}

export interface HostPlatform {
  readonly netlock: NetLock;
  readonly held: HeldTraffic;
  readonly network: AddressControl;
  /** The host's steering data plane, where the platform has one. */
  readonly steering?: SteeringDataplane;
  /** Post-copy, where the platform has it (whether this host's kernel allows it: probe().userfaultfd). */
  readonly postCopy?: PostCopy;
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
