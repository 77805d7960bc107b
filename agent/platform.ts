/**
 * Everything the agent does to its host goes through this interface. Linux is real today
 * (agent/linux/); a FreeBSD driver (jails, RCTL, its CRIU port) implements the same interface.
 */
import type { NetLock } from './netlock.js';

export interface ProcessSummary {
  pid: number;
  command: string;
  processes: number;
  onThisHost: boolean;
}

export interface Checkpointer {
  dump(pid: number, imageDir: string): Promise<{ durationMs: number }>;
  restore(imageDir: string): Promise<{ pid: number; durationMs: number }>;
}

export interface AddressControl {
  addresses(): Promise<string[]>;
  addAddress(address: string): Promise<boolean>;
  removeAddress(address: string): Promise<boolean>;
  announce(address: string): Promise<void>;
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
  readonly network: AddressControl;
  processInfo(pid: number): Promise<ProcessSummary | undefined>;
  probe(): Promise<PlatformProbe>;
}
