/**
 * A lab workload whose image is mostly memory: the echo server with --memory-mib N (N MiB of
 * private memory, every page written and kept changing; lab/workload/echo-server.c says how) and
 * its control port, started like any lab workload (startLabWorkload) so that CRIU can move it.
 *
 * memcheck() asks the workload, from the lab's client namespace (where a real peer would be), to
 * check every page against what it must hold: after a migration pagesBad is 0 exactly when every
 * page arrived with the contents it had when the workload was frozen.
 */
import { execCommand } from '../lib/exec.js';
import type { Endpoint } from '../lib/endpoint.js';
import { startLabWorkload, type Lab } from './lab.js';
import { nsenterArgs, type LabHost } from './topology.js';

export interface MemoryCheck {
  memoryMiB: number;
  pages: number;
  /** Pages whose contents are not what their version says (0: memory intact). */
  pagesBad: number;
  /** Index of the first bad page, -1 if none. */
  firstBadPage: number;
  /** Page rewrites since the start (grows while the workload runs and is not paused). */
  writes: number;
  /** FNV-1a 64 of every page, hex: equal for two checks with no write between them (paused). */
  checksum: string;
}

export interface MemoryWorkload {
  pid: number;
  endpoint: Endpoint;
  controlPort: number;
  memoryMiB: number;
}

/** echo-server arguments after ADDRESS PORT. */
export function memoryWorkloadArgs(memoryMiB: number, controlPort: number): string[] {
  return ['--memory-mib', String(memoryMiB), '--control-port', String(controlPort)];
}

/** The lab's workload address `addressIndex` on `host`, serving echo on `port` and holding `memoryMiB` MiB. */
export async function startMemoryWorkload(
  lab: Lab,
  host: string,
  o: { port: number; controlPort: number; memoryMiB: number; addressIndex?: number },
): Promise<MemoryWorkload> {
  // Filling 1 GiB page by page takes a few seconds on a loaded 2-core machine before it listens.
  const { pid, endpoint } = await startLabWorkload(lab, host, o.port, o.addressIndex ?? 0, memoryWorkloadArgs(o.memoryMiB, o.controlPort), {
    timeoutMs: 30_000 + o.memoryMiB * 30,
  });
  return { pid, endpoint, controlPort: o.controlPort, memoryMiB: o.memoryMiB };
}

/** One control line to the workload from `from`'s namespace; its one-line JSON answer. */
export async function askMemoryWorkload(from: LabHost, w: { endpoint: Endpoint; controlPort: number }, line: 'memcheck' | 'pause' | 'resume'): Promise<string> {
  const script = 'exec 3<>"/dev/tcp/$1/$2" && printf "%s\\n" "$3" >&3 && cat <&3';
  const r = await execCommand('nsenter', [...nsenterArgs(from), 'bash', '-c', script, 'ask', w.endpoint.address, String(w.controlPort), line], {
    timeoutMs: 60_000,
  });
  return r.stdout.trim();
}

/** Checks every page of the workload's memory (from the lab's client namespace). */
export async function memcheck(lab: Lab, w: { endpoint: Endpoint; controlPort: number }): Promise<MemoryCheck> {
  const text = await askMemoryWorkload(lab.topology.client, w, 'memcheck');
  try {
    return JSON.parse(text) as MemoryCheck;
  } catch {
    throw new Error(`memcheck: the workload answered ${JSON.stringify(text.slice(0, 200))}, not JSON`);
  }
}
