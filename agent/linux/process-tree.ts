/** What the agent needs to know about a workload's processes, read from /proc. */
import { readFile, readlink, readdir } from 'node:fs/promises';

export interface ProcessInfo {
  pid: number;
  command: string;
  /** The process and all its descendants. */
  processes: number;
  /** Same network namespace as this agent, i.e. the process runs on this host. */
  onThisHost: boolean;
}

export async function inspectProcess(pid: number): Promise<ProcessInfo | undefined> {
  let command: string;
  try {
    command = (await readFile(`/proc/${pid}/comm`, 'utf8')).trim();
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // A zombie has exited already; there is nothing to move.
    if (/\) Z /.test(stat)) return undefined;
  } catch {
    return undefined;
  }
  const [theirs, ours] = await Promise.all([
    readlink(`/proc/${pid}/ns/net`).catch(() => ''),
    readlink('/proc/self/ns/net'),
  ]);
  return { pid, command, processes: (await treePids(pid)).length, onThisHost: theirs === ours };
}

export async function isAlive(pid: number): Promise<boolean> {
  return (await inspectProcess(pid)) !== undefined;
}

/** The process and all its descendants. */
export async function treePids(pid: number): Promise<number[]> {
  const out = [pid];
  for (const child of await children(pid)) out.push(...(await treePids(child)));
  return out;
}

async function children(pid: number): Promise<number[]> {
  const out: number[] = [];
  const tasks = await readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
  for (const t of tasks) {
    const text = await readFile(`/proc/${pid}/task/${t}/children`, 'utf8').catch(() => '');
    out.push(...text.split(/\s+/).filter(Boolean).map(Number));
  }
  return out;
}
