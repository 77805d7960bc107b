/**
 * The TCP and UDP sockets a process tree holds, read from /proc.
 *
 * How: the tree's socket inodes (the "socket:[INODE]" links behind /proc/PID/fd; a socket shared
 * by several processes counts once), looked up in the kernel's tables of the tree's network
 * namespace, /proc/PID/net/{tcp,tcp6,udp,udp6}. Why not `ss -tuanpe`: ss finds a socket's owner
 * by walking /proc/*\/fd of every process on the machine (we already know the few processes that
 * matter), it would have to run inside the host's namespace (an nsenter per call), and its
 * users:(("name",pid=,fd=)) column is meant for people and has changed between iproute2
 * versions. /proc/PID/net/* is the same table ss's fallback reads, seen from the process's own
 * namespace, and the inode column is a stable kernel ABI. Cost: a readlink per descriptor, about
 * 20 ms per 1,000 descriptors here, so only InspectWorkload asks, not every liveness check.
 */
import { readFile, readdir, readlink } from 'node:fs/promises';
import { endianness } from 'node:os';
import type { WorkloadSocket } from '../../lib/workload-sockets.js';
import { treePids } from './process-tree.js';

/** What /proc/PID/fd/N links to for a socket. */
const SOCKET_LINK = /^socket:\[(\d+)\]$/;

/** The kernel's TCP states (include/net/tcp_states.h), as /proc/net/tcp's "st" column numbers them. */
const TCP_STATES: Record<number, string> = {
  1: 'ESTABLISHED',
  2: 'SYN_SENT',
  3: 'SYN_RECV',
  4: 'FIN_WAIT1',
  5: 'FIN_WAIT2',
  6: 'TIME_WAIT',
  7: 'CLOSE',
  8: 'CLOSE_WAIT',
  9: 'LAST_ACK',
  10: 'LISTEN',
  11: 'CLOSING',
};

const TABLES = [
  { file: 'tcp', proto: 'tcp' },
  { file: 'tcp6', proto: 'tcp' },
  { file: 'udp', proto: 'udp' },
  { file: 'udp6', proto: 'udp' },
] as const;

/** Every TCP and UDP socket (IPv4 and IPv6) held by the process `root` and its descendants. */
export async function treeSockets(root: number): Promise<WorkloadSocket[]> {
  const pids = await treePids(root);
  // Socket inodes per network namespace: a child may have entered another one (rare), and its
  // sockets are only in that namespace's tables.
  const byNetns = new Map<string, { pid: number; inodes: Set<string> }>();
  for (const pid of pids) {
    const [netns, fds] = await Promise.all([readlink(`/proc/${pid}/ns/net`).catch(() => ''), readdir(`/proc/${pid}/fd`).catch(() => [] as string[])]);
    if (!netns) continue; // gone meanwhile
    const targets = await Promise.all(fds.map((fd) => readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')));
    let ns = byNetns.get(netns);
    for (const t of targets) {
      const m = SOCKET_LINK.exec(t);
      if (!m) continue;
      if (!ns) byNetns.set(netns, (ns = { pid, inodes: new Set() }));
      ns.inodes.add(m[1]);
    }
  }
  const out: WorkloadSocket[] = [];
  for (const { pid, inodes } of byNetns.values()) {
    for (const t of TABLES) {
      const text = await readFile(`/proc/${pid}/net/${t.file}`, 'utf8').catch(() => '');
      out.push(...parseProcNetTable(text, t.proto, inodes));
    }
  }
  return out;
}

/**
 * The sockets of one /proc/net/{tcp,tcp6,udp,udp6} table whose inode is in `inodes`. Columns:
 * sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
 */
export function parseProcNetTable(text: string, proto: 'tcp' | 'udp', inodes: ReadonlySet<string>, order = endianness()): WorkloadSocket[] {
  const out: WorkloadSocket[] = [];
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10 || !inodes.has(f[9])) continue;
    const local = parseHexAddressPort(f[1], order);
    const remote = parseHexAddressPort(f[2], order);
    const st = parseInt(f[3], 16);
    const connected = remote.port !== 0;
    out.push({
      proto,
      localAddress: local.address,
      localPort: local.port,
      remoteAddress: connected ? remote.address : '',
      remotePort: remote.port,
      state: proto === 'tcp' ? (TCP_STATES[st] ?? `STATE_${st}`) : connected ? 'CONNECTED' : 'UNCONNECTED',
    });
  }
  return out;
}

/**
 * "0100007F:1F90" -> 127.0.0.1:8080. The kernel prints the address as 32-bit words in host byte
 * order (one word for IPv4, four for IPv6) and the port as a plain number.
 */
export function parseHexAddressPort(text: string, order: 'LE' | 'BE' = endianness()): { address: string; port: number } {
  const [hex, portHex] = text.split(':');
  const bytes: number[] = [];
  for (let w = 0; w < hex.length; w += 8) {
    const word = [0, 2, 4, 6].map((i) => parseInt(hex.slice(w + i, w + i + 2), 16));
    bytes.push(...(order === 'LE' ? word.reverse() : word));
  }
  return { address: bytes.length === 4 ? bytes.join('.') : ipv6Text(bytes), port: parseInt(portHex, 16) };
}

/** IPv6 text of 16 bytes; an IPv4-mapped address (::ffff:a.b.c.d) as the IPv4 address. */
function ipv6Text(b: number[]): string {
  if (b.slice(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff) return b.slice(12).join('.');
  const groups = [];
  for (let i = 0; i < 16; i += 2) groups.push(((b[i] << 8) | b[i + 1]).toString(16));
  // Compress the longest run of two or more zero groups into "::" (RFC 5952).
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}
