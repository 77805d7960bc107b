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
async function treePids(pid: number): Promise<number[]> {
  const out = [pid];
  for (const child of await children(pid)) out.push(...(await treePids(child)));
  return out;
}

/**
 * TCP sockets held by the tree of `root` that have a peer: the connections CRIU's iptables /
 * nftables lock locks one by one ("tcp_connection()" in criu/sk-inet.c: TCP with a peer port, so
 * not the listening sockets; criu-image.ts picks the same ones from an image).
 *
 * The tree's socket inodes (behind /proc/PID/fd; one shared by several processes counts once),
 * looked up in the root's network namespace's /proc/PID/net/tcp{,6}. A readlink per descriptor:
 * about 20 ms per 1,000 descriptors here, so only InspectWorkload asks, not every liveness check.
 */
export async function countTcpConnections(root: number): Promise<number> {
  const inodes = new Set<string>();
  for (const pid of await treePids(root)) {
    const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
    const targets = await Promise.all(fds.map((fd) => readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')));
    for (const t of targets) {
      const m = SOCKET_LINK.exec(t);
      if (m) inodes.add(m[1]);
    }
  }
  if (inodes.size === 0) return 0;
  let n = 0;
  for (const table of ['tcp', 'tcp6']) {
    const text = await readFile(`/proc/${root}/net/${table}`, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
      const f = line.trim().split(/\s+/);
      if (f.length < 10) continue;
      const remotePort = f[2].slice(f[2].lastIndexOf(':') + 1);
      if (remotePort !== '0000' && inodes.has(f[9])) n++;
    }
  }
  return n;
}

/** What /proc/PID/fd/N links to for a socket. */
const SOCKET_LINK = /^socket:\[(\d+)\]$/;

async function children(pid: number): Promise<number[]> {
  const out: number[] = [];
  const tasks = await readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
  for (const t of tasks) {
    const text = await readFile(`/proc/${pid}/task/${t}/children`, 'utf8').catch(() => '');
    out.push(...text.split(/\s+/).filter(Boolean).map(Number));
  }
  return out;
}
