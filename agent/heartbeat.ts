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
}

export const HEARTBEAT_INTERVAL_MS = 1_000;

export function startHeartbeat(bus: Bus, beat: Omit<Heartbeat, 'atMs'>): () => void {
  const send = () => bus.publish(SUBJECTS.heartbeat(beat.host), { ...beat, atMs: Date.now() } satisfies Heartbeat);
  send();
  const timer = setInterval(send, HEARTBEAT_INTERVAL_MS);
  return () => clearInterval(timer);
}
