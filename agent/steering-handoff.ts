/**
 * The workload's steering state on the migration's path: the source exports it into the image
 * folder as it sends the image (next to the held packets, the same way they travel), the target
 * imports it before its restore brings the address up, and whichever host the workload does not
 * run on at the end forgets it. The state and the file: agent/steering.ts, agent/handoff-file.ts.
 */
import type { Logger } from '../lib/log.js';
import { readHandoffFile, removeHandoffFile, writeHandoffFile } from './handoff-file.js';
import type { SteeringDataplane, WorkloadSelector } from './steering.js';

export interface HandoffEnds {
  /** The host's data plane; undefined where the host does not steer. */
  steering: SteeringDataplane | undefined;
  log: Logger;
  /**
   * Reads the image's steering file; default a copy (readFile). On Linux pass mapFile
   * (agent/linux/bpf/native-map.ts): mapped, 100,000 flows cost ~30 ms less to read.
   */
  readFile?: (path: string) => Buffer | Promise<Buffer>;
}

/** Entries of every section of a handoff (flows, reverse NAT, counters). */
function entries(h: { flows: { count: number }; rnat: { count: number }; backendCounters: Map<number, unknown> }): number {
  return h.flows.count + h.rnat.count + h.backendCounters.size;
}

/** Source: the workload's state as it is now, into the image folder; returns the entries written. */
export async function exportIntoImage(ends: HandoffEnds, imageDir: string, selector: WorkloadSelector): Promise<number> {
  if (!ends.steering) return 0;
  const handoff = await ends.steering.exportWorkload(selector);
  await writeHandoffFile(imageDir, handoff);
  return entries(handoff);
}

/**
 * Target: the state that came with the image, into this host's maps (before the address comes
 * up, so the first reply already has its reverse NAT). 0 when the image carries none. A host
 * without a data plane cannot take it: logged, and the restore goes on (its flows then reach the
 * workload through whichever host steers them, as new flows would).
 */
export async function importFromImage(ends: HandoffEnds, imageDir: string, migrationId: string): Promise<number> {
  const handoff = await readHandoffFile(imageDir, ends.readFile);
  if (!handoff) return 0;
  if (!ends.steering) {
    ends.log.warn({ migrationId, entries: entries(handoff) }, 'the image carries steering state but this host has no steering data plane; not imported');
    return 0;
  }
  const n = await ends.steering.importWorkload(handoff);
  await removeHandoffFile(imageDir);
  return n;
}

/** The host the workload left (or never reached): its reverse NAT and counters go; flow entries stay (agent/steering.ts). */
export async function forgetHere(ends: HandoffEnds, selector: WorkloadSelector | undefined, migrationId: string): Promise<number> {
  if (!ends.steering || !selector) return 0;
  try {
    return await ends.steering.forgetWorkload(selector);
  } catch (err) {
    // Stale reverse-NAT entries age out of their LRU map; nothing waits on them.
    ends.log.warn({ migrationId, err: String(err) }, 'could not remove the workload\'s steering state here');
    return 0;
  }
}
