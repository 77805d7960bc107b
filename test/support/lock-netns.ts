/**
 * The netlock tests' host pair: two network namespaces joined by one veth pair (eth0 in each),
 * with godwit's XDP lock installed on the first. Host "a" (198.18.<subnet>.1) is the locked one,
 * "b" (198.18.<subnet>.2) its peer. tearDown() removes everything the fixture made (the lock, the
 * processes it started, both namespaces, the pins), whether or not setUp() got to the end:
 *
 *   const net = new LockNetns({ tag: 't', subnet: 250 });
 *   beforeAll(() => net.setUp());
 *   afterAll(() => net.tearDown());
 */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { EbpfNetLock, type EbpfNetLockOptions } from '../../agent/linux/netlock-ebpf.js';
import { nsExecutor } from '../../agent/linux/netns-exec.js';
import { execCommand, type Executor } from '../../lib/exec.js';
import { NsChildren, TeardownSteps } from './ns-children.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));

/** How long a started process may take to print its ready line. */

export interface LockNetnsOptions {
  /** Keeps this file's namespaces and pins apart from other files': godwit-<tag>-<random>-a. */
  tag: string;
  /** Third octet of the pair's /24 (198.18.<subnet>.0/24). */
  subnet: number;
  /** Also build the native map addon (scripts/build-native.sh), for tests of the batch path. */
  buildNative?: boolean;
}

export interface NetnsHost {
  readonly netns: string;
  readonly address: string;
  /** Runs a command inside the host's namespace. */
  readonly exec: Executor;
}

export interface StartNodeOptions {
  /** The stdout line that says the process is ready. */
  ready: string;
  /** Every other stdout line. */
  onLine?: (line: string) => void;
}

export class LockNetns {
  readonly a: NetnsHost;
  readonly b: NetnsHost;
  /** Everything the fixture pins lives below this folder; tearDown removes it. */
  readonly pinRoot: string;
  /** The lock on a's eth0, pinned at `${pinRoot}/a`: for tests that make another instance of it. */
  readonly lockOpts: EbpfNetLockOptions;
  private installed: EbpfNetLock | undefined;
  private readonly children = new NsChildren();

  constructor(private readonly opts: LockNetnsOptions) {
    const name = `godwit-${opts.tag}-${randomBytes(3).toString('hex')}`;
    const host = (suffix: string, last: number): NetnsHost => {
      const netns = `${name}-${suffix}`;
      return { netns, address: `198.18.${opts.subnet}.${last}`, exec: nsExecutor(netns, execCommand) };
    };
    this.a = host('a', 1);
    this.b = host('b', 2);
    this.pinRoot = `/sys/fs/bpf/${name}`;
    this.lockOpts = { exec: this.a.exec, iface: 'eth0', pinDir: `${this.pinRoot}/a`, objectPath: `${REPO}build/bpf/lock.o` };
  }

  /** The lock setUp() installed on a. */
  get lock(): EbpfNetLock {
    if (!this.installed) throw new Error('LockNetns.setUp() has not installed the lock');
    return this.installed;
  }

  /** Builds the lock program, makes both namespaces and the veth pair, installs the lock on a. */
  async setUp(): Promise<void> {
    await execCommand(`${REPO}scripts/build-bpf.sh`, [], { timeoutMs: 60_000 });
    if (this.opts.buildNative) await execCommand('bash', [`${REPO}scripts/build-native.sh`], { timeoutMs: 120_000 });
    await execCommand('ip', ['netns', 'add', this.a.netns]);
    await execCommand('ip', ['netns', 'add', this.b.netns]);
    await execCommand('ip', ['link', 'add', 'eth0', 'netns', this.a.netns, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', this.b.netns]);
    for (const h of [this.a, this.b]) {
      await execCommand('ip', ['-n', h.netns, 'addr', 'add', `${h.address}/24`, 'dev', 'eth0']);
      await execCommand('ip', ['-n', h.netns, 'link', 'set', 'dev', 'eth0', 'up']);
      await execCommand('ip', ['-n', h.netns, 'link', 'set', 'dev', 'lo', 'up']);
    }
    this.installed = new EbpfNetLock(this.lockOpts);
    await this.installed.install();
  }

  /** `node -e script ...args` in a host's namespace, resolved at its ready line (ns-children.ts); tearDown() kills it. */
  startNode(host: NetnsHost, script: string, args: readonly string[], opts: StartNodeOptions): Promise<ChildProcess> {
    return this.children.start(host.netns, script, args, opts.ready, opts.onLine);
  }

  /** Removes everything; every step runs even if an earlier one (or setUp) failed. */
  async tearDown(): Promise<void> {
    const steps = new TeardownSteps();
    const attempt = (step: () => Promise<unknown>) => steps.attempt(step);
    // Any instance with lockOpts removes the same program and pins, also after a test replaced it.
    if (this.installed) await attempt(() => this.installed!.uninstall());
    await this.children.killAll(steps);
    for (const h of [this.a, this.b]) await attempt(() => execCommand('ip', ['netns', 'del', h.netns], { allowFailure: true }));
    await attempt(() => execCommand('rm', ['-rf', this.pinRoot]));
    this.installed = undefined;
    steps.done(`lock netns fixture (${this.opts.tag})`);
  }
}
