/**
 * Preflight's facts about a process tree, read from /proc (what CRIU will meet when it dumps it):
 * each process's uid and PID inside its namespace, whether the tree has an IPC namespace of its
 * own, the SysV shared memory it maps, and its unix sockets whose peer is outside the tree.
 * Files are read by tree-files.ts.
 */
import { readFile, readdir, readlink } from 'node:fs/promises';
import type { Executor } from '../../lib/exec.js';
import type { OutsideUnixSocket, SysvShmAttachment, TreeProcess } from '../../lib/workload-facts.js';
import { treePids } from './process-tree.js';

const SOCKET_LINK = /^socket:\[(\d+)\]$/;
/** A SysV segment in /proc/PID/maps: "/SYSV0052e2c1 (deleted)", its inode column is the shmid. */
const SYSV_MAP = /^([0-9a-f]+)-([0-9a-f]+)\s+\S+\s+\S+\s+\S+\s+(\d+)\s+\/SYSV[0-9a-f]{8}/;

export async function treeProcesses(pids: readonly number[]): Promise<TreeProcess[]> {
  const users = await userNames();
  const out: TreeProcess[] = [];
  for (const pid of pids) {
    const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
    if (!status) continue;
    const uid = Number(/^Uid:\s*(\d+)/m.exec(status)?.[1] ?? 0);
    const nspids = (/^NSpid:\s*(.*)$/m.exec(status)?.[1] ?? String(pid)).trim().split(/\s+/).map(Number);
    out.push({ pid, nsPid: nspids[nspids.length - 1], uid, user: users.get(uid) ?? '', command: (/^Name:\s*(.*)$/m.exec(status)?.[1] ?? '').trim() });
  }
  return out;
}

/** The tree's root is in this process's IPC namespace (the host's, for an agent). */
export async function sharesIpcNamespace(root: number): Promise<boolean> {
  const [theirs, ours] = await Promise.all([readlink(`/proc/${root}/ns/ipc`).catch(() => ''), readlink('/proc/self/ns/ipc')]);
  return theirs === ours;
}

export async function sysvShmAttachments(pids: readonly number[]): Promise<SysvShmAttachment[]> {
  const out: SysvShmAttachment[] = [];
  for (const pid of pids) {
    const maps = await readFile(`/proc/${pid}/maps`, 'utf8').catch(() => '');
    for (const line of maps.split('\n')) {
      const m = SYSV_MAP.exec(line);
      if (m) out.push({ pid, shmid: Number(m[3]), bytes: Number(BigInt(`0x${m[2]}`) - BigInt(`0x${m[1]}`)) });
    }
  }
  return out;
}

/**
 * Unix sockets of the tree connected to a socket no process of the tree holds (CRIU cannot dump
 * the far end). Peers come from the kernel's socket diagnostics (`ss -xanH`: local and peer
 * inode per socket; /proc/net/unix has no peer); owners of outside peers from /proc.
 */
export async function outsideUnixSockets(pids: readonly number[], exec: Executor): Promise<OutsideUnixSocket[]> {
  const mine = new Map<string, { pid: number; fd: number }>();
  for (const pid of pids) {
    const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
    for (const fd of fds) {
      const m = SOCKET_LINK.exec(await readlink(`/proc/${pid}/fd/${fd}`).catch(() => ''));
      if (m && !mine.has(m[1])) mine.set(m[1], { pid, fd: Number(fd) });
    }
  }
  if (mine.size === 0) return [];
  const table = parseUnixTable((await exec('ss', ['-xanH'])).stdout);
  const out: OutsideUnixSocket[] = [];
  for (const [inode, owner] of mine) {
    const row = table.get(inode);
    if (!row || row.peer === '0' || row.peer === '*' || mine.has(row.peer)) continue;
    const peerRow = table.get(row.peer);
    const holder = await socketHolder(row.peer);
    out.push({ ...owner, path: row.path || peerRow?.path || '', peerPid: holder?.pid ?? 0, peerCommand: holder?.command ?? '' });
  }
  return out;
}

interface UnixRow {
  path: string;
  peer: string;
}

/** `ss -xanH` lines: "u_str ESTAB 0 0 /run/x.sock 1234 * 1235" (path "*" when unbound). */
function parseUnixTable(text: string): Map<string, UnixRow> {
  const rows = new Map<string, UnixRow>();
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    const [path, inode, , peer] = f.slice(-4);
    rows.set(inode, { path: path === '*' ? '' : path, peer });
  }
  return rows;
}

/** The first process found holding socket `inode` (a walk of /proc: only for a refusal's message). */
async function socketHolder(inode: string): Promise<{ pid: number; command: string } | undefined> {
  const link = `socket:[${inode}]`;
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const fds = await readdir(`/proc/${entry}/fd`).catch(() => [] as string[]);
    for (const fd of fds) {
      if ((await readlink(`/proc/${entry}/fd/${fd}`).catch(() => '')) === link) {
        const command = (await readFile(`/proc/${entry}/comm`, 'utf8').catch(() => '')).trim();
        return { pid: Number(entry), command };
      }
    }
  }
  return undefined;
}

async function userNames(): Promise<Map<number, string>> {
  const out = new Map<number, string>();
  const passwd = await readFile('/etc/passwd', 'utf8').catch(() => '');
  for (const line of passwd.split('\n')) {
    const [name, , uid] = line.split(':');
    if (name && uid && !out.has(Number(uid))) out.set(Number(uid), name);
  }
  return out;
}

export { treePids };
