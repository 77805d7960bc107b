import { execCommand, type Executor } from '../lib/exec.js';
import { REPO_ROOT } from '../lib/rpc.js';
import { join } from 'node:path';

/**
 * The lab: "hosts" are network namespaces, and nothing is added to the root namespace (no link,
 * no address, no route; lab/lab.ts adds the one management link). Lab <index> uses
 * 198.18.<index>.0/24 and, in the routed fabric, the VIP block 198.19.<index>.0/24 (both inside
 * 198.18.0.0/15, the benchmark block that is routed nowhere), and namespaces named godwit<index>-*.
 *
 * Fabric "bridge" (the default): one L2 segment.
 *   godwit<i>-ctl     bridge br0 = 198.18.<i>.250/24 (management host and switch)
 *   godwit<i>-<host>  eth0 = 198.18.<i>.1, .2, ... /24  (veth; its peer vh-<host> is a br0 port)
 *   godwit<i>-client  eth0 = 198.18.<i>.100/24, accepts gratuitous ARP
 *   workload addresses ("VIPs" that move between hosts): 198.18.<i>.200 + n, carried by GARP
 *
 * Fabric "routed": every host, the client and the management host on a /29 of its own behind
 * one router namespace, so nothing on L2 can carry an address from one host to another.
 *   godwit<i>-router  r-<host> = 198.18.<i>.(8k+1)/29, r-client = .97/29, r-ctl = .249/29 (a br0 port on ctl)
 *   godwit<i>-<host>  eth0 = 198.18.<i>.(8k+2)/29 for the k-th host (k = 0..11), default via .(8k+1)
 *   godwit<i>-client  eth0 = 198.18.<i>.100/29, default via .97
 *   godwit<i>-ctl     br0 = 198.18.<i>.250/29 (the management LAN: the router and the root's link), default via .249
 *   VIPs 198.19.<i>.0/24: routed by the router to every workload host at once (ECMP, see below)
 *   workload addresses 198.18.<i>.200 + n (n < 48): on no link; reached through a /32 route on the
 *     router to the host that owns it (routeWorkloadAddress), not through ARP
 *
 * Processes enter a host with `nsenter --net=/run/netns/NAME`, never `ip netns exec` (that makes a
 * new mount namespace per call, which CRIU's dump then refuses).
 */

export type LabFabric = 'bridge' | 'routed';
export const LAB_FABRICS: readonly LabFabric[] = ['bridge', 'routed'];

export interface LabHost {
  name: string;
  netns: string;
  netnsPath: string;
  address: string;
  iface: 'eth0';
  /** The CIDR of the host's link: the lab's /24 on the bridge, the host's own /29 when routed. */
  subnet: string;
  /** The router's address on the host's link (routed fabric); undefined on the bridge (one L2 segment, no router). */
  gateway?: string;
}

/** The routed fabric's router: one veth per host, client and management LAN. */
export interface LabRouter {
  netns: string;
  netnsPath: string;
  /** The router's interface towards a host ('client' and 'ctl' included): r-<name>. */
  ifaceTo(host: string): string;
}

export interface LabTopology {
  /** 1..200, picks the subnet 198.18.<index>.0/24. */
  index: number;
  /** "godwit<index>"; every netns name starts with `${prefix}-`. */
  prefix: string;
  fabric: LabFabric;
  /** Management host: controller and nats-server run here; br0 with address .250 is its LAN. */
  ctl: LabHost;
  /** Workload hosts, in the order given. */
  hosts: LabHost[];
  /** A bystander client, address .100. */
  client: LabHost;
  /** Routed fabric only. */
  router?: LabRouter;
  /** "198.18.<index>.0/24": every host, client and workload address is inside it. */
  subnet: string;
  /** i-th workload address (a "VIP" that moves between hosts): 198.18.<index>.(200+i) */
  workloadAddress(i: number): string;
  /** Routed fabric: "198.19.<index>.0/24", the VIPs the router spreads over the hosts. */
  vipBlock?: string;
  /** Routed fabric: the i-th VIP, 198.19.<index>.(1+i). Throws on the bridge (no VIPs are routed there). */
  vip(i: number): string;
  /**
   * Makes the router deliver `address` (a workload address) to `host`: a /32 route, replaced if
   * it pointed elsewhere. In the routed fabric this is how a workload address is reached (the
   * host also needs the address on its eth0 for the workload to bind it). On the bridge it does
   * nothing: there the owner's gratuitous ARP tells the segment.
   */
  routeWorkloadAddress(address: string, host: string): Promise<void>;
  /** Address (CIDR) of the root namespace's management link, a port of ctl's br0 (lab/lab.ts). */
  rootLinkAddress: string;
  /** Routes the root namespace needs over that link to reach the hosts (none on the bridge). */
  rootRoutes: { to: string; via: string }[];
}

export const LAB_MAX_INDEX = 200;
export const LAB_PREFIX_LENGTH = 24;
/** Routed fabric: /29 per link (router .1, one end .2 ... .6). */
export const ROUTED_LINK_PREFIX_LENGTH = 29;
export const ROUTED_MAX_HOSTS = 12;
/** Routed workload addresses stop below the management LAN (.248/29). */
const ROUTED_MAX_WORKLOAD_ADDRESSES = 48;
/**
 * The data plane forwards between hosts in VXLAN-format UDP (+50 bytes): the host<->router links
 * carry that without fragmenting a full 1500-byte packet; the client's link is an ordinary 1500.
 */
export const ROUTED_HOST_MTU = 1600;
export const ROUTED_CLIENT_MTU = 1500;
const NETNS_DIR = '/run/netns';
/** SEC("xdp") returning XDP_PASS, attached to the router's veth ends (see createRouted). */
export const XDP_PASS_OBJECT = join(REPO_ROOT, 'build', 'bpf', 'xdp_pass.o');

export function labPrefix(index: number): string {
  checkIndex(index);
  return `godwit${index}`;
}

export function labSubnet(index: number): string {
  checkIndex(index);
  return `198.18.${index}.0/24`;
}

export function labVipBlock(index: number): string {
  checkIndex(index);
  return `198.19.${index}.0/24`;
}

/**
 * Attaches the pass-through XDP program (XDP_PASS_OBJECT) to an interface in a namespace, native
 * mode. Loaded by bpftool into a pin of its own and attached from that pin, which is then
 * removed (the attachment keeps the program): `ip link set ... obj` would use iproute2's own
 * loader, which leaves its bpffs folders (/sys/fs/bpf/{tc,ip,xdp}) behind in the machine's.
 */
export async function attachXdpPass(netnsPath: string, iface: string, exec: Executor = execCommand): Promise<void> {
  const pin = `/sys/fs/bpf/godwit-xdp-pass-${process.pid}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  try {
    await exec('bpftool', ['prog', 'load', XDP_PASS_OBJECT, pin, 'type', 'xdp']);
    // nsenter --net only: `ip -n` would mount a sysfs of its own, where the pin is not.
    await exec('nsenter', [`--net=${netnsPath}`, 'ip', 'link', 'set', 'dev', iface, 'xdpdrv', 'pinned', pin]);
  } finally {
    await exec('rm', ['-f', pin], { allowFailure: true });
  }
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

function netnsOf(prefix: string, name: string): { netns: string; netnsPath: string } {
  const netns = `${prefix}-${name}`;
  return { netns, netnsPath: `${NETNS_DIR}/${netns}` };
}

function bridgeHost(prefix: string, index: number, name: string, lastOctet: number): LabHost {
  return { name, ...netnsOf(prefix, name), address: `198.18.${index}.${lastOctet}`, iface: 'eth0', subnet: labSubnet(index) };
}

/** A host on the /29 that starts at `base`: the router is base+1, the host `base + hostOffset`. */
function routedHost(prefix: string, index: number, name: string, base: number, hostOffset = 2): LabHost {
  return {
    name,
    ...netnsOf(prefix, name),
    address: `198.18.${index}.${base + hostOffset}`,
    iface: 'eth0',
    subnet: `198.18.${index}.${base}/${ROUTED_LINK_PREFIX_LENGTH}`,
    gateway: `198.18.${index}.${base + 1}`,
  };
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

function checkHostNames(hosts: string[], max: number): void {
  const names = new Set<string>();
  for (const h of hosts) {
    // Peers are named vh-<host> / r-<host>, and interface names have at most 15 characters.
    if (!/^[a-z0-9][a-z0-9_]{0,11}$/.test(h)) throw new Error(`lab host name "${h}" must be [a-z0-9_], 1-12 characters`);
    if (h === 'ctl' || h === 'client' || h === 'router') throw new Error(`lab host name "${h}" is reserved`);
    if (names.has(h)) throw new Error(`lab host name "${h}" given twice`);
    names.add(h);
  }
  if (hosts.length > max) throw new Error(`this lab fabric has at most ${max} workload hosts`);
}

export async function createTopology(opts: { index: number; hosts: string[]; fabric?: LabFabric; exec?: Executor }): Promise<LabTopology> {
  const { index } = opts;
  const exec = opts.exec ?? execCommand;
  const fabric = opts.fabric ?? 'bridge';
  if (!LAB_FABRICS.includes(fabric)) throw new Error(`lab fabric "${String(fabric)}" must be one of ${LAB_FABRICS.join(', ')}`);
  checkHostNames(opts.hosts, fabric === 'routed' ? ROUTED_MAX_HOSTS : 99);

  const existing = labNamespaces(await listNetns(exec), index);
  if (existing.length > 0)
    throw new Error(`lab ${index} already has namespaces (${existing.join(', ')}); destroyTopology(${index}) first`);

  try {
    return fabric === 'routed' ? await createRouted(index, opts.hosts, exec) : await createBridge(index, opts.hosts, exec);
  } catch (err) {
    await destroyTopology(index, exec).catch(() => undefined);
    throw err;
  }
}

const sysctlIn = (exec: Executor, host: Pick<LabHost, 'netnsPath'>, settings: string[], allowFailure = false) =>
  exec('nsenter', [...nsenterArgs(host), 'sysctl', '-q', '-w', ...settings], { allowFailure });

/** The management host's switch br0 (management LAN on the routed fabric). */
async function createCtl(ctl: LabHost, prefixLength: number, exec: Executor): Promise<void> {
  const ip = (...args: string[]) => exec('ip', args);
  await ip('-n', ctl.netns, 'link', 'set', 'lo', 'up');
  await ip('-n', ctl.netns, 'link', 'add', 'br0', 'type', 'bridge');
  await ip('-n', ctl.netns, 'addr', 'add', `${ctl.address}/${prefixLength}`, 'dev', 'br0');
  await ip('-n', ctl.netns, 'link', 'set', 'br0', 'up');
  // br_netfilter is built into this kernel: keep the switch a plain switch (no iptables on bridged frames).
  await sysctlIn(
    exec,
    ctl,
    ['net.bridge.bridge-nf-call-iptables=0', 'net.bridge.bridge-nf-call-ip6tables=0', 'net.bridge.bridge-nf-call-arptables=0'],
    true,
  );
}

function workloadAddressFn(index: number, max: number): (i: number) => string {
  return (i) => {
    if (!Number.isInteger(i) || i < 0 || i >= max) throw new Error(`workload address index ${i} must be 0..${max - 1}`);
    return `198.18.${index}.${200 + i}`;
  };
}

async function createBridge(index: number, hostNames: string[], exec: Executor): Promise<LabTopology> {
  const prefix = labPrefix(index);
  const ctl = bridgeHost(prefix, index, 'ctl', 250);
  const hosts = hostNames.map((h, i) => bridgeHost(prefix, index, h, i + 1));
  const client = bridgeHost(prefix, index, 'client', 100);
  const ip = (...args: string[]) => exec('ip', args);

  // ctl first: `ip netns add` fails if the name exists, so it also claims the index.
  for (const h of [ctl, ...hosts, client]) await ip('netns', 'add', h.netns);
  await createCtl(ctl, LAB_PREFIX_LENGTH, exec);
  for (const h of [...hosts, client]) {
    const peer = `vh-${h.name}`;
    // Both ends are created directly in their namespaces: the root namespace never sees them.
    await ip('link', 'add', h.iface, 'netns', h.netns, 'type', 'veth', 'peer', 'name', peer, 'netns', ctl.netns);
    await ip('-n', ctl.netns, 'link', 'set', peer, 'master', 'br0', 'up');
    await ip('-n', h.netns, 'link', 'set', 'lo', 'up');
    await ip('-n', h.netns, 'addr', 'add', `${h.address}/${LAB_PREFIX_LENGTH}`, 'dev', h.iface);
    await ip('-n', h.netns, 'link', 'set', h.iface, 'up');
    // As on the routed fabric (createRouted says why): computed checksums on the wire, and a
    // pass-through XDP program on the switch's end, so that a host's steering program can send a
    // frame back out of eth0 (XDP_TX: packets for a workload that moved, tunnelled to its host).
    await exec('nsenter', [...nsenterArgs(h), 'ethtool', '-K', h.iface, 'tx', 'off']);
    await exec('nsenter', [...nsenterArgs(ctl), 'ethtool', '-K', peer, 'tx', 'off']);
    await attachXdpPass(ctl.netnsPath, peer, exec);
  }
  // An existing neighbour entry is overridden by a gratuitous ARP whatever arp_accept says (even
  // within locktime); arp_accept (all OR eth0) lets a GARP also create an entry the client lacks.
  await sysctlIn(exec, client, ['net.ipv4.conf.all.arp_accept=1', `net.ipv4.conf.${client.iface}.arp_accept=1`]);

  return {
    index,
    prefix,
    fabric: 'bridge',
    ctl,
    hosts,
    client,
    subnet: labSubnet(index),
    workloadAddress: workloadAddressFn(index, 50),
    vip() {
      throw new Error('the bridge fabric routes no VIPs: bring the lab up with fabric "routed"');
    },
    async routeWorkloadAddress() {
      // One L2 segment: the owner's gratuitous ARP moves the address, no route to set.
    },
    rootLinkAddress: `198.18.${index}.254/${LAB_PREFIX_LENGTH}`,
    rootRoutes: [],
  };
}

async function createRouted(index: number, hostNames: string[], exec: Executor): Promise<LabTopology> {
  const prefix = labPrefix(index);
  // Management LAN .248/29: router .249, ctl .250, the root namespace's link .254 (lab/lab.ts).
  const ctl = routedHost(prefix, index, 'ctl', 248, 2);
  const hosts = hostNames.map((h, k) => routedHost(prefix, index, h, 8 * k));
  const client = routedHost(prefix, index, 'client', 96, 4); // .100, as on the bridge
  const router: LabRouter = { ...netnsOf(prefix, 'router'), ifaceTo: (name) => `r-${name}` };
  const ip = (...args: string[]) => exec('ip', args);
  const inRouter = (...args: string[]) => ip('-n', router.netns, ...args);

  // ctl first: `ip netns add` fails if the name exists, so it also claims the index.
  for (const ns of [ctl.netns, router.netns, ...hosts.map((h) => h.netns), client.netns]) await ip('netns', 'add', ns);
  await createCtl(ctl, ROUTED_LINK_PREFIX_LENGTH, exec);
  await inRouter('link', 'set', 'lo', 'up');
  await sysctlIn(exec, router, [
    'net.ipv4.ip_forward=1',
    // Direct server return: a backend's reply carries the VIP as its source and leaves the
    // backend's host, not the host ECMP sent the request to; strict (or loose, since the router
    // has no route "from" a host for every VIP) reverse-path filtering would drop it.
    'net.ipv4.conf.all.rp_filter=0',
    'net.ipv4.conf.default.rp_filter=0',
    // ECMP hashes the 5-tuple (policy 1 = L4), not only the addresses, so the flows of one client
    // spread over every host, while every packet of one flow takes the same path. Which host a
    // flow lands on does not matter for correctness: every host's steering program picks the same
    // backend for a flow by consistent hashing and forwards it there; stickiness only spares a
    // flow-table entry (and a lookup that could disagree after a backend change) per extra host.
    'net.ipv4.fib_multipath_hash_policy=1',
  ]);

  // The management LAN: the router's leg is a port of ctl's br0.
  await ip('link', 'add', router.ifaceTo('ctl'), 'netns', router.netns, 'type', 'veth', 'peer', 'name', 'vh-router', 'netns', ctl.netns);
  await ip('-n', ctl.netns, 'link', 'set', 'vh-router', 'master', 'br0', 'up');
  await inRouter('addr', 'add', `${ctl.gateway}/${ROUTED_LINK_PREFIX_LENGTH}`, 'dev', router.ifaceTo('ctl'));
  await inRouter('link', 'set', router.ifaceTo('ctl'), 'up');
  await ip('-n', ctl.netns, 'route', 'add', 'default', 'via', ctl.gateway!);

  for (const h of [...hosts, client]) {
    const r = router.ifaceTo(h.name);
    const mtu = String(h === client ? ROUTED_CLIENT_MTU : ROUTED_HOST_MTU);
    await ip('link', 'add', h.iface, 'netns', h.netns, 'mtu', mtu, 'type', 'veth', 'peer', 'name', r, 'netns', router.netns, 'mtu', mtu);
    await ip('-n', h.netns, 'link', 'set', 'lo', 'up');
    await ip('-n', h.netns, 'addr', 'add', `${h.address}/${ROUTED_LINK_PREFIX_LENGTH}`, 'dev', h.iface);
    await ip('-n', h.netns, 'link', 'set', h.iface, 'up');
    await ip('-n', h.netns, 'route', 'add', 'default', 'via', h.gateway!);
    await inRouter('addr', 'add', `${h.gateway}/${ROUTED_LINK_PREFIX_LENGTH}`, 'dev', r);
    await sysctlIn(exec, router, [`net.ipv4.conf.${r}.rp_filter=0`]);
    // Transmit checksum offload off on both ends: a veth otherwise hands CHECKSUM_PARTIAL skbs
    // (checksum not yet computed) to its peer, and an XDP program that rewrites such a packet
    // sees a field that holds no checksum yet; this way every checksum is on the wire, computed,
    // and the receiving kernel verifies it.
    await exec('nsenter', [...nsenterArgs(h), 'ethtool', '-K', h.iface, 'tx', 'off']);
    await exec('nsenter', [...nsenterArgs(router), 'ethtool', '-K', r, 'tx', 'off']);
    // A pass-through XDP program on every router end, for two reasons. The data plane answers
    // with native XDP_TX on a host's eth0, and veth delivers such frames only when the receiving
    // end has an XDP program of its own. And on the client's link: a veth end with XDP receives
    // into page-backed buffers with XDP headroom, as a NIC driver does, so the packets the
    // router forwards reach a host's XDP program without a copy (a veth copies every skb that
    // lacks 256 bytes of headroom before running XDP on it, which no NIC would).
    await attachXdpPass(router.netnsPath, r, exec);
    await inRouter('link', 'set', r, 'up');
  }
  await sysctlIn(exec, router, [`net.ipv4.conf.${router.ifaceTo('ctl')}.rp_filter=0`]);

  const vipBlock = labVipBlock(index);
  if (hosts.length > 0) {
    // One multipath route: each packet's 5-tuple picks the host (fib_multipath_hash_policy above).
    const nexthops = hosts.flatMap((h) => ['nexthop', 'via', h.address, 'dev', router.ifaceTo(h.name)]);
    await inRouter('route', 'add', vipBlock, ...nexthops);
  }

  return {
    index,
    prefix,
    fabric: 'routed',
    ctl,
    hosts,
    client,
    router,
    subnet: labSubnet(index),
    workloadAddress: workloadAddressFn(index, ROUTED_MAX_WORKLOAD_ADDRESSES),
    vipBlock,
    vip(i: number): string {
      if (!Number.isInteger(i) || i < 0 || i > 253) throw new Error(`VIP index ${i} must be 0..253`);
      return `198.19.${index}.${1 + i}`;
    },
    async routeWorkloadAddress(address: string, hostName: string): Promise<void> {
      const h = hosts.find((x) => x.name === hostName);
      if (!h) throw new Error(`lab has no host "${hostName}"`);
      await inRouter('route', 'replace', `${address}/32`, 'via', h.address, 'dev', router.ifaceTo(h.name));
    },
    rootLinkAddress: `198.18.${index}.254/${ROUTED_LINK_PREFIX_LENGTH}`,
    rootRoutes: [{ to: labSubnet(index), via: ctl.gateway! }],
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
