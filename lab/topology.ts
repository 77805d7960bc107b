import { execCommand, type Executor } from '../lib/exec.js';

/**
 * The lab: "hosts" are network namespaces on one bridge, and nothing is added to the root
 * namespace (no link, no address, no route). Lab <index> uses 198.18.<index>.0/24 (a benchmark
 * block that is routed nowhere) and namespaces named godwit<index>-*:
 *
 *   godwit<i>-ctl     bridge br0 = 198.18.<i>.250/24 (management host and switch)
 *   godwit<i>-<host>  eth0 = 198.18.<i>.1, .2, ... /24  (veth; its peer vh-<host> is a br0 port)
 *   godwit<i>-client  eth0 = 198.18.<i>.100/24, accepts gratuitous ARP
 *   workload addresses ("VIPs" that move between hosts): 198.18.<i>.200 + n
 *
 * Processes enter a host with `nsenter --net=/run/netns/NAME`, never `ip netns exec` (that makes a
 * new mount namespace per call, which CRIU's dump then refuses).
 */

export interface LabHost {
  name: string;
  netns: string;
  netnsPath: string;
  address: string;
  iface: 'eth0';
}

export interface LabTopology {
  /** 1..200, picks the subnet 198.18.<index>.0/24. */
  index: number;
  /** "godwit<index>"; every netns name starts with `${prefix}-`. */
  prefix: string;
  /** Management host and switch: holds bridge br0 with address .250; controller and nats-server run here. */
  ctl: LabHost;
  /** Workload hosts, addresses .1, .2, ... in the order given. */
  hosts: LabHost[];
  /** A bystander client, address .100. */
  client: LabHost;
  /** "198.18.<index>.0/24" */
  subnet: string;
  /** i-th workload address (a "VIP" that moves between hosts): 198.18.<index>.(200+i) */
  workloadAddress(i: number): string;
}

export const LAB_MAX_INDEX = 200;
export const LAB_PREFIX_LENGTH = 24;
const NETNS_DIR = '/run/netns';

export function labPrefix(index: number): string {
  checkIndex(index);
  return `godwit${index}`;
}

export function labSubnet(index: number): string {
  checkIndex(index);
  return `198.18.${index}.0/24`;
}

/** nsenter options that put a command into the host's network namespace (and nothing else). */
export function nsenterArgs(host: Pick<LabHost, 'netnsPath'>): string[] {
  return [`--net=${host.netnsPath}`];
}

/** [file, args] that run `cmd args...` inside the host's network namespace via nsenter. */
export function inNetns(host: Pick<LabHost, 'netnsPath'>, cmd: string, args: readonly string[] = []): [string, string[]] {
  return ['nsenter', [...nsenterArgs(host), cmd, ...args]];
}

function checkIndex(index: number): void {
  if (!Number.isInteger(index) || index < 1 || index > LAB_MAX_INDEX)
    throw new Error(`lab index ${index} must be an integer 1..${LAB_MAX_INDEX}`);
}

function labHost(prefix: string, index: number, name: string, lastOctet: number): LabHost {
  const netns = `${prefix}-${name}`;
  return { name, netns, netnsPath: `${NETNS_DIR}/${netns}`, address: `198.18.${index}.${lastOctet}`, iface: 'eth0' };
}

/** Names of all network namespaces `ip netns` knows. */
export async function listNetns(exec: Executor = execCommand): Promise<string[]> {
  const r = await exec('ip', ['netns', 'list'], { allowFailure: true });
  if (r.exitCode !== 0) return [];
  return r.stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0])
    .filter((n): n is string => !!n);
}

function labNamespaces(all: string[], index: number): string[] {
  const p = `${labPrefix(index)}-`;
  return all.filter((n) => n.startsWith(p));
}

/** The lowest lab index whose prefix has no namespace yet. */
export async function findFreeLabIndex(exec: Executor = execCommand): Promise<number> {
  const all = await listNetns(exec);
  for (let i = 1; i <= LAB_MAX_INDEX; i++) if (labNamespaces(all, i).length === 0) return i;
  throw new Error(`all ${LAB_MAX_INDEX} lab indexes are in use (ip netns list)`);
}

export async function createTopology(opts: { index: number; hosts: string[]; exec?: Executor }): Promise<LabTopology> {
  const { index } = opts;
  const exec = opts.exec ?? execCommand;
  const prefix = labPrefix(index);
  const names = new Set<string>();
  for (const h of opts.hosts) {
    // The bridge-side peer is vh-<host>, and interface names have at most 15 characters.
    if (!/^[a-z0-9][a-z0-9_]{0,11}$/.test(h)) throw new Error(`lab host name "${h}" must be [a-z0-9_], 1-12 characters`);
    if (h === 'ctl' || h === 'client') throw new Error(`lab host name "${h}" is reserved`);
    if (names.has(h)) throw new Error(`lab host name "${h}" given twice`);
    names.add(h);
  }
  if (opts.hosts.length > 99) throw new Error('a lab has at most 99 workload hosts (.1-.99)');

  const existing = labNamespaces(await listNetns(exec), index);
  if (existing.length > 0)
    throw new Error(`lab ${index} already has namespaces (${existing.join(', ')}); destroyTopology(${index}) first`);

  const ctl = labHost(prefix, index, 'ctl', 250);
  const hosts = opts.hosts.map((h, i) => labHost(prefix, index, h, i + 1));
  const client = labHost(prefix, index, 'client', 100);
  const ip = (...args: string[]) => exec('ip', args);
  const sysctl = (host: LabHost, settings: string[], allowFailure = false) =>
    exec('nsenter', [...nsenterArgs(host), 'sysctl', '-q', '-w', ...settings], { allowFailure });

  try {
    // ctl first: `ip netns add` fails if the name exists, so it also claims the index.
    for (const h of [ctl, ...hosts, client]) await ip('netns', 'add', h.netns);
    await ip('-n', ctl.netns, 'link', 'set', 'lo', 'up');
    await ip('-n', ctl.netns, 'link', 'add', 'br0', 'type', 'bridge');
    await ip('-n', ctl.netns, 'addr', 'add', `${ctl.address}/${LAB_PREFIX_LENGTH}`, 'dev', 'br0');
    await ip('-n', ctl.netns, 'link', 'set', 'br0', 'up');
    // br_netfilter is built into this kernel: keep the switch a plain switch (no iptables on bridged frames).
    await sysctl(
      ctl,
      ['net.bridge.bridge-nf-call-iptables=0', 'net.bridge.bridge-nf-call-ip6tables=0', 'net.bridge.bridge-nf-call-arptables=0'],
      true,
    );
    for (const h of [...hosts, client]) {
      const peer = `vh-${h.name}`;
      // Both ends are created directly in their namespaces: the root namespace never sees them.
      await ip('link', 'add', h.iface, 'netns', h.netns, 'type', 'veth', 'peer', 'name', peer, 'netns', ctl.netns);
      await ip('-n', ctl.netns, 'link', 'set', peer, 'master', 'br0', 'up');
      await ip('-n', h.netns, 'link', 'set', 'lo', 'up');
      await ip('-n', h.netns, 'addr', 'add', `${h.address}/${LAB_PREFIX_LENGTH}`, 'dev', h.iface);
      await ip('-n', h.netns, 'link', 'set', h.iface, 'up');
    }
    // An existing neighbour entry is overridden by a gratuitous ARP whatever arp_accept says (even
    // within locktime); arp_accept (all OR eth0) lets a GARP also create an entry the client lacks.
    await sysctl(client, ['net.ipv4.conf.all.arp_accept=1', `net.ipv4.conf.${client.iface}.arp_accept=1`]);
  } catch (err) {
    await destroyTopology(index, exec).catch(() => undefined);
    throw err;
  }

  return {
    index,
    prefix,
    ctl,
    hosts,
    client,
    subnet: labSubnet(index),
    workloadAddress(i: number): string {
      if (!Number.isInteger(i) || i < 0 || i > 49) throw new Error(`workload address index ${i} must be 0..49`);
      return `198.18.${index}.${200 + i}`;
    },
  };
}

async function pidsIn(namespaces: string[], exec: Executor): Promise<number[]> {
  const pids = new Set<number>();
  for (const ns of namespaces) {
    const r = await exec('ip', ['netns', 'pids', ns], { allowFailure: true });
    if (r.exitCode !== 0) continue;
    for (const t of r.stdout.split(/\s+/)) if (/^\d+$/.test(t)) pids.add(Number(t));
  }
  pids.delete(process.pid);
  return [...pids];
}

async function killAndWait(namespaces: string[], signal: 'TERM' | 'KILL', waitMs: number, exec: Executor): Promise<number[]> {
  let pids = await pidsIn(namespaces, exec);
  if (pids.length === 0) return [];
  await exec('kill', [`-${signal}`, ...pids.map(String)], { allowFailure: true });
  const deadline = Date.now() + waitMs;
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    pids = await pidsIn(namespaces, exec);
    if (pids.length === 0) return [];
  }
  return pids;
}

/**
 * Removes every namespace named `${prefix}-*` (a half-created lab too), after stopping the
 * processes inside them (SIGTERM, then SIGKILL, by PID). Already-gone things are fine.
 */
export async function destroyTopology(index: number, exec: Executor = execCommand): Promise<void> {
  const namespaces = labNamespaces(await listNetns(exec), index);
  if (namespaces.length === 0) return;
  const left = await killAndWait(namespaces, 'TERM', 2000, exec);
  if (left.length > 0) {
    const stuck = await killAndWait(namespaces, 'KILL', 3000, exec);
    if (stuck.length > 0) throw new Error(`lab ${index}: processes ${stuck.join(', ')} survive SIGKILL`);
  }
  const failures: string[] = [];
  for (const ns of namespaces) {
    const r = await exec('ip', ['netns', 'del', ns], { allowFailure: true });
    if (r.exitCode !== 0) failures.push(`${ns}: ${r.stderr.trim()}`);
  }
  // Deleting a namespace removes its veth ends (and so their peers) and the bridge.
  const still = labNamespaces(await listNetns(exec), index);
  if (still.length > 0) throw new Error(`lab ${index}: could not delete ${still.join(', ')} (${failures.join('; ')})`);
}
