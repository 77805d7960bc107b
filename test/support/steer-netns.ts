/**
 * The steering tests' routed fabric: a client, a router and two hosts, each in its own network
 * namespace and on its own subnet, so nothing on L2 carries an address between hosts:
 *
 *   client 198.19.1.2 ── rc [router] ra ── 198.19.2.2 host a   (workload 198.19.12.1 on lo)
 *                                    rb ── 198.19.3.2 host b   (workload 198.19.13.1 on lo)
 *                                    rx ── 198.19.4.2 host c   (workload 198.19.14.1 on lo; with { hostC: true })
 *
 * The router routes the VIP to host a, which steers: its own backends by DNAT, b's through the
 * tunnel. Both hosts run godwit's steering (EbpfSteering, XDP + TC on eth0, pinned below
 * pinRoot). The hosts' links carry MTU 1550, the client's 1500: the tunnel adds 50 bytes.
 * Transmit checksum offload is off on every link, so every checksum goes on the wire computed
 * and the receiving kernel verifies it (a veth otherwise passes CHECKSUM_PARTIAL skbs through
 * unverified). On the client's link it is also required: a frame that XDP sends into the tunnel
 * loses the skb's "checksum still to be done" state, so a client in a namespace on this machine
 * must compute its checksums itself (checked: with offload on there, tunnelled connections hang;
 * on the other links it may stay on). A real NIC always puts complete checksums on the wire. The router's ends run bpf/xdp_pass.c: veth delivers XDP_TX frames natively only
 * to a peer with an XDP program.
 *
 *   const net = new SteerNetns('sx');
 *   beforeAll(() => net.setUp());
 *   afterAll(() => net.tearDown());
 */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { nsExecutor } from '../../agent/linux/netns-exec.js';
import { EbpfSteering } from '../../agent/linux/steering-ebpf.js';
import { execCommand, type Executor } from '../../lib/exec.js';
import { attachXdpPass } from '../../lab/topology.js';
import { NsChildren, TeardownSteps } from './ns-children.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const REPLY_TIMEOUT_MS = 60_000;

export const VIP = '198.19.100.10';
export const CLIENT_ADDRESS = '198.19.1.2';

export interface SteerHost {
  readonly name: 'a' | 'b' | 'c';
  readonly netns: string;
  /** Data-plane address (eth0). */
  readonly address: string;
  /** The workload address (on lo) that its backends listen on. */
  readonly workload: string;
  readonly exec: Executor;
  readonly steering: EbpfSteering;
}

/** An echo server in a host namespace; `conns` collects "addr:port" of each accepted peer. */
export interface EchoServer {
  child: ChildProcess;
  conns: string[];
}

const ECHO_SERVER = `
const net = require('net');
const [addr, port] = process.argv.slice(1);
const srv = net.createServer((s) => {
  console.log('conn ' + s.remoteAddress + ':' + s.remotePort);
  s.on('error', () => {});
  s.pipe(s);
});
srv.listen(Number(port), addr, () => console.log('ready'));
`;

/**
 * The client: reads commands on stdin, answers one JSON line each.
 *   open N   N connections to VIP:port, each exchanging one chunk: [{ i, localPort, peer, ok }]
 *   round    one more chunk on every open connection: [{ i, ok, error }]
 * Every byte sent is compared with the echo; a reset or a mismatch is a failed exchange.
 */
const CLIENT = `
const net = require('net');
const crypto = require('crypto');
const readline = require('readline');
const [vip, port, chunk] = process.argv.slice(1);
const conns = [];
function exchange(c) {
  return new Promise((resolve) => {
    if (c.error) return resolve(false);
    const data = crypto.randomBytes(Number(chunk));
    const got = [];
    let n = 0;
    const done = (ok) => { clearTimeout(timer); c.sock.off('data', onData); c.fail = null; resolve(ok); };
    const onData = (d) => { got.push(d); n += d.length; if (n >= data.length) done(Buffer.concat(got).equals(data)); };
    const timer = setTimeout(() => { c.error = c.error || 'timeout'; done(false); }, 15000);
    c.fail = () => done(false);
    c.sock.on('data', onData);
    c.sock.write(data);
  });
}
function open() {
  return new Promise((resolve) => {
    const c = { i: conns.length, error: null, fail: null };
    conns.push(c);
    c.sock = net.connect({ host: vip, port: Number(port) });
    c.sock.on('error', (e) => { c.error = e.code || String(e); if (c.fail) c.fail(); else resolve({ i: c.i, ok: false, error: c.error }); });
    c.sock.on('close', () => { c.error = c.error || 'closed'; if (c.fail) c.fail(); });
    c.sock.on('connect', async () => {
      const peer = c.sock.remoteAddress + ':' + c.sock.remotePort;
      const localPort = c.sock.localPort;
      resolve({ i: c.i, localPort, peer, ok: await exchange(c) });
    });
  });
}
readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  const [op, arg] = line.split(' ');
  if (op === 'open') console.log(JSON.stringify(await Promise.all(Array.from({ length: Number(arg) }, open))));
  else if (op === 'round') console.log(JSON.stringify(await Promise.all(conns.map(async (c) => ({ i: c.i, ok: await exchange(c), error: c.error })))));
});
console.log('ready');
`;

export interface OpenResult {
  i: number;
  localPort: number;
  peer: string;
  ok: boolean;
  error?: string;
}

export interface RoundResult {
  i: number;
  ok: boolean;
  error: string | null;
}

/** The client process: one command at a time. */
export class SteerClient {
  private readonly pending: ((line: string) => void)[] = [];

  constructor(readonly child: ChildProcess) {}

  /** Called with every stdout line after "ready". */
  onLine(line: string): void {
    this.pending.shift()?.(line);
  }

  private ask<T>(command: string): Promise<T> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`client: no answer to "${command}" within ${REPLY_TIMEOUT_MS} ms`)), REPLY_TIMEOUT_MS);
      this.pending.push((line) => {
        clearTimeout(timer);
        resolve(JSON.parse(line) as T);
      });
      this.child.stdin!.write(`${command}\n`);
    });
  }

  open(n: number): Promise<OpenResult[]> {
    return this.ask(`open ${n}`);
  }

  round(): Promise<RoundResult[]> {
    return this.ask('round');
  }
}

export class SteerNetns {
  readonly client: { netns: string; exec: Executor };
  readonly router: { netns: string; exec: Executor };
  readonly a: SteerHost;
  readonly b: SteerHost;
  /** The third host, when asked for ({ hostC: true }). */
  readonly c: SteerHost | undefined;
  readonly pinRoot: string;
  private readonly children = new NsChildren();
  private installed: SteerHost[] = [];

  constructor(tag: string, opts: { hostC?: boolean } = {}) {
    const name = `gst-${tag}-${randomBytes(3).toString('hex')}`;
    const ns = (suffix: string) => ({ netns: `${name}-${suffix}`, exec: nsExecutor(`${name}-${suffix}`, execCommand) });
    this.client = ns('c');
    this.router = ns('r');
    this.pinRoot = `/sys/fs/bpf/${name}`;
    const host = (h: 'a' | 'b' | 'c', subnet: number, workload: string): SteerHost => {
      const { netns, exec } = ns(h === 'c' ? 'x' : h); // "-c" is the client's
      const address = `198.19.${subnet}.2`;
      const pinDir = `${this.pinRoot}/${h}`;
      return { name: h, netns, address, workload, exec, steering: steeringOf({ exec, pinDir, address }) };
    };
    this.a = host('a', 2, '198.19.12.1');
    this.b = host('b', 3, '198.19.13.1');
    this.c = opts.hostC ? host('c', 4, '198.19.14.1') : undefined;
  }

  /** The hosts of the fabric: a, b, and c when there is one. */
  get hosts(): SteerHost[] {
    return this.c ? [this.a, this.b, this.c] : [this.a, this.b];
  }

  async setUp(): Promise<void> {
    await execCommand(`${REPO}scripts/build-bpf.sh`, [], { timeoutMs: 60_000 });
    await execCommand('bash', [`${REPO}scripts/build-native.sh`], { timeoutMs: 120_000 });
    for (const n of [this.client, this.router, ...this.hosts]) await execCommand('ip', ['netns', 'add', n.netns]);
    const r = this.router;
    const link = async (other: { netns: string; exec: Executor }, routerSide: string, subnet: number, mtu: number) => {
      await execCommand('ip', ['link', 'add', 'eth0', 'netns', other.netns, 'mtu', String(mtu), 'type', 'veth', 'peer', 'name', routerSide, 'netns', r.netns, 'mtu', String(mtu)]);
      await other.exec('ip', ['addr', 'add', `198.19.${subnet}.2/24`, 'dev', 'eth0']);
      await r.exec('ip', ['addr', 'add', `198.19.${subnet}.1/24`, 'dev', routerSide]);
      for (const [x, dev] of [[other, 'eth0'], [r, routerSide]] as const) {
        await x.exec('ethtool', ['-K', dev, 'tx', 'off']);
        await x.exec('ip', ['link', 'set', 'dev', dev, 'up']);
      }
      await attachXdpPass(`/run/netns/${r.netns}`, routerSide);
      await other.exec('ip', ['link', 'set', 'dev', 'lo', 'up']);
      await other.exec('ip', ['route', 'add', 'default', 'via', `198.19.${subnet}.1`]);
    };
    await link(this.client, 'rc', 1, 1500);
    await link(this.a, 'ra', 2, 1550);
    await link(this.b, 'rb', 3, 1550);
    if (this.c) await link(this.c, 'rx', 4, 1550);
    await r.exec('ip', ['link', 'set', 'dev', 'lo', 'up']);
    await r.exec('sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
    await r.exec('ip', ['route', 'add', `${VIP}/32`, 'via', this.a.address]);
    for (const h of this.hosts) await h.exec('ip', ['addr', 'add', `${h.workload}/32`, 'dev', 'lo']);
    for (const n of [r, ...this.hosts]) for (const k of ['all', 'default']) await n.exec('sysctl', ['-qw', `net.ipv4.conf.${k}.rp_filter=0`]);
    for (const h of this.hosts) {
      this.installed.push(h);
      await h.steering.install();
    }
  }

  /** What an agent restart does: a new driver over the same pins, installed again. */
  async restartSteering(h: SteerHost): Promise<EbpfSteering> {
    const again = steeringOf({ exec: h.exec, pinDir: `${this.pinRoot}/${h.name}`, address: h.address });
    await again.install();
    return again;
  }

  /** An echo server on host h's workload address (or any namespace's address: the client's, for outbound connections). */
  async startEcho(h: Pick<SteerHost, 'netns' | 'workload'>, port: number): Promise<EchoServer> {
    const conns: string[] = [];
    const child = await this.startNode(h.netns, ECHO_SERVER, [h.workload, String(port)], (line) => {
      if (line.startsWith('conn ')) conns.push(line.slice(5));
    });
    return { child, conns };
  }

  /** The client, talking to address:port (the VIP unless told) with chunks of `chunk` bytes. */
  async startClient(port: number, chunk: number, address = VIP): Promise<SteerClient> {
    let client: SteerClient | undefined;
    const child = await this.startNode(this.client.netns, CLIENT, [address, String(port), String(chunk)], (line) => client?.onLine(line));
    client = new SteerClient(child);
    return client;
  }

  private startNode(netns: string, script: string, args: string[], onLine: (line: string) => void): Promise<ChildProcess> {
    return this.children.start(netns, script, args, 'ready', onLine);
  }

  /** Removes everything; every step runs even if an earlier one (or setUp) failed. */
  async tearDown(): Promise<void> {
    const steps = new TeardownSteps();
    const attempt = (step: () => Promise<unknown>) => steps.attempt(step);
    for (const h of this.installed) await attempt(() => h.steering.uninstall());
    await this.children.killAll(steps);
    for (const n of [this.client, this.router, ...this.hosts]) await attempt(() => execCommand('ip', ['netns', 'del', n.netns], { allowFailure: true }));
    await attempt(() => execCommand('rm', ['-rf', this.pinRoot]));
    this.installed = [];
    steps.done('steering netns fixture');
  }
}

function steeringOf(o: { exec: Executor; pinDir: string; address: string }): EbpfSteering {
  return new EbpfSteering({ exec: o.exec, iface: 'eth0', pinDir: o.pinDir, objectPath: `${REPO}build/bpf/steer.o`, hostAddress: o.address });
}
