/**
 * Everything the agent does to its host goes through this interface. Linux is real today
 * (agent/linux/); a FreeBSD driver (jails, RCTL, its CRIU port) implements the same interface.
 */
import type { Endpoint } from '../lib/endpoint.js';
import type { NetLock } from './netlock.js';
import type { SteeringDataplane } from './steering.js';
import type { ImageLockInfo } from './linux/criu-image.js';
import type { CriuLockMode, CriuLockSet } from './linux/criu-netfilter.js';

export interface ProcessSummary {
  pid: number;
  command: string;
  processes: number;
  onThisHost: boolean;
}

/** CRIU's --network-lock: skip (godwit's own lock holds the endpoints), iptables or nftables. */
export type NetworkLockMethod = 'skip' | 'iptables' | 'nftables';

export interface Checkpointer {
  dump(pid: number, imageDir: string, networkLock?: NetworkLockMethod): Promise<{ durationMs: number }>;
  restore(imageDir: string, networkLock?: NetworkLockMethod): Promise<{ pid: number; durationMs: number }>;
}

/**
 * CRIU's own network lock (lock modes IPTABLES and NFTABLES) as rules on this host: what the
 * image says CRIU locked, making the same lock on a target, and removing what is left of it.
 */
export interface CriuLockControl {
  /** The host has the tool CRIU uses for this mode. */
  check(mode: CriuLockMode): Promise<void>;
  /** The lock method, run id and locked connections recorded in an image. */
  imageLock(imageDir: string): Promise<ImageLockInfo>;
  /** Makes the lock here; returns how many rules or set elements. */
  install(lock: CriuLockSet): Promise<number>;
  /** How many of the lock's rules or set elements are here now. */
  count(lock: CriuLockSet): Promise<number>;
  /** Removes what of the lock is here; returns how many rules or set elements that was. */
  remove(lock: CriuLockSet): Promise<number>;
  /** CRIU's nftables tables here now (to find what a crashed dump left). */
  tables(): Promise<string[]>;
  /** After a dump that died without unlocking: removes its rules for these local ends, or its new tables. */
  removeStray(mode: CriuLockMode, locals: Set<string>, tablesBefore: string[]): Promise<string[]>;
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
}

export interface HostPlatform {
  readonly checkpoint: Checkpointer;
  readonly netlock: NetLock;
  readonly held: HeldTraffic;
  readonly criuLock: CriuLockControl;
  readonly network: AddressControl;
  /** Packet steering (agent/steering.ts); absent on a host driver without one. */
  readonly steering?: SteeringDataplane;
  processInfo(pid: number): Promise<ProcessSummary | undefined>;
  /** TCP connections (sockets with a peer) held by the process and its descendants: what CRIU's own locks lock one by one. */
  tcpConnections(pid: number): Promise<number>;
  probe(): Promise<PlatformProbe>;
}
