/** The agent's presence on the bus: the controller's fleet registry is built from these. */
import type { Bus } from '../lib/bus.js';
import { SUBJECTS } from '../lib/subjects.js';

export interface Heartbeat {
  host: string;
  grpcAddress: string;
  criuVersion: string;
  kernel: string;
  startedAtMs: number;
  atMs: number;
  /** IPv4 where other hosts reach this host's data plane (steering forwards packets there). */
  dataAddress?: string;
  /** Present when the host runs a steering data plane: the rule generation its kernel holds. */
  steeringGeneration?: number;
  /** The host's free memory now (os.freemem): placement's tie-break between equally loaded hosts. */
  freeMemoryBytes?: number;
}

/** A host's "my data plane holds steering generation G", sent as soon as it does. */
export interface SteeringAck {
  host: string;
  generation: number;
  /** Unix epoch ms (sub-ms) when the kernel held it. */
  atMs: number;
  /** How long the data plane took to program it. */
  applyMs: number;
}

export const HEARTBEAT_INTERVAL_MS = 1_000;

/** `live` adds the fields that change while the agent runs (read at each beat). */
export function startHeartbeat(bus: Bus, beat: Omit<Heartbeat, 'atMs'>, live: () => Partial<Heartbeat> = () => ({})): () => void {
  const send = () => bus.publish(SUBJECTS.heartbeat(beat.host), { ...beat, ...live(), atMs: Date.now() } satisfies Heartbeat);
  send();
  const timer = setInterval(send, HEARTBEAT_INTERVAL_MS);
  return () => clearInterval(timer);
}
