/**
 * Held packets (HeldTraffic, agent/platform.ts) as lists and as a file.
 *
 * A list is packed as [u32 length LE][IP packet] each: the form native rawSend takes, and the
 * file's format. Held packets travel with a migration's image: the source keeps what its lock stopped
 * (before the workload was dumped and while the image was made and sent) in one file of the
 * image folder, so the target delivers them together with what its own lock stopped.
 */
import { appendFileSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { HeldPackets } from './platform.js';

/** The packets of a packed list, checking its framing. */
export function splitHeld(bytes: Buffer): Buffer[] {
  const packets: Buffer[] = [];
  for (let off = 0; off < bytes.length; ) {
    if (off + 4 > bytes.length) throw new Error('held packets: truncated length');
    const end = off + 4 + bytes.readUInt32LE(off);
    if (end > bytes.length) throw new Error('held packets: truncated packet');
    packets.push(bytes.subarray(off + 4, end));
    off = end;
  }
  return packets;
}

export function concatHeld(...lists: HeldPackets[]): HeldPackets {
  return { count: lists.reduce((n, l) => n + l.count, 0), bytes: Buffer.concat(lists.map((l) => l.bytes)) };
}

/** Not a CRIU image name (those end in .img): CRIU never opens it. */
export const HELD_FILE = 'godwit-held-packets.bin';

/**
 * The workload's steering state (flows, reverse NAT, counters) beside the held packets, in the
 * layout of agent/handoff-file.ts. Not .img either, for the same reason.
 */
export const STEERING_FILE = 'godwit-steering.bin';

/** Adds packets to the image's file (a retried send adds only what was stopped since). */
export async function appendHeldFile(imageDir: string, held: HeldPackets): Promise<void> {
  if (held.count > 0) appendFileSync(join(imageDir, HELD_FILE), held.bytes);
}

/** The image's held packets; an empty list when it has none. */
export async function readHeldFile(imageDir: string): Promise<HeldPackets> {
  // Synchronous: one file on the image's tmpfs, read inside the freeze (the thread pool's
  // round trip costs more than the read).
  let bytes: Buffer;
  try {
    bytes = readFileSync(join(imageDir, HELD_FILE));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    bytes = Buffer.alloc(0);
  }
  return { count: splitHeld(bytes).length, bytes };
}

/** Once delivered, never again: a repeated unlock must not deliver twice. */
export async function removeHeldFile(imageDir: string): Promise<void> {
  rmSync(join(imageDir, HELD_FILE), { force: true });
}
