/** The Linux host platform: CRIU, the XDP lock, iproute2 and arping, /proc. */
import type { Executor } from '../../lib/exec.js';
import type { Logger } from '../../lib/log.js';
import type { NetLock } from '../netlock.js';
import type { LockModeName, LockStrategy } from '../lock-strategy.js';
import type { HeldTraffic, HostPlatform, PlatformProbe } from '../platform.js';
import { Criu } from './criu.js';
import { CriuNetfilter } from './criu-netfilter.js';
import { linuxLockStrategy } from './lock-strategies.js';
import { HostNetwork } from './host-network.js';
import { lockPins } from './lock-maps.js';
import { EbpfNetLock } from './netlock-ebpf.js';
import { RingHeldTraffic } from './packet-hold.js';
import { countTcpConnections, inspectProcess } from './process-tree.js';

export interface LinuxPlatformOptions {
  exec: Executor;
  iface: string;
  criuPath: string;
  bpfObject: string;
  pinDir: string;
  log: Logger;
}

export class LinuxPlatform implements HostPlatform {
  readonly netlock: NetLock;
  readonly held: HeldTraffic;
  readonly network: HostNetwork;
  private readonly criu: Criu;
  private readonly netfilter: CriuNetfilter;
  private lockProblem = 'not installed yet';

  constructor(private readonly opts: LinuxPlatformOptions) {
    this.criu = new Criu({ exec: opts.exec, criuPath: opts.criuPath });
    this.network = new HostNetwork({ exec: opts.exec, iface: opts.iface });
    this.netfilter = new CriuNetfilter(opts.exec);
    this.netlock = new EbpfNetLock({
      exec: opts.exec,
      iface: opts.iface,
      pinDir: opts.pinDir,
      objectPath: opts.bpfObject,
      log: opts.log,
    });
    this.held = new RingHeldTraffic({ ringPin: lockPins(opts.pinDir).heldRing, log: opts.log });
  }

  /** Attaches the lock program (keeping any held lock) and drops leases that ran out meanwhile. */
  async start(): Promise<void> {
    try {
      await this.netlock.install();
      const swept = await this.netlock.sweepExpired();
      this.lockProblem = '';
      this.opts.log.info({ iface: this.opts.iface, swept, held: (await this.netlock.list()).length }, 'network lock ready');
    } catch (err) {
      this.lockProblem = err instanceof Error ? err.message : String(err);
      throw err;
    }
  }

  /**
   * Every second: removes lock entries whose lease ran out, and once no lock is held, the held
   * packets nobody will claim (a migration that died), so that they do not fill the ring that the
   * next migration's packets need. Returns how many entries went.
   */
  async sweep(): Promise<number> {
    const swept = await this.netlock.sweepExpired();
    // The sweep has just read both maps: the count is exact, and costs no second read.
    if (this.netlock.entryCount() === 0) {
      const discarded = this.held.discardAll();
      if (discarded > 0) this.opts.log.info({ discarded }, 'held packets of ended locks discarded');
    }
    return swept;
  }

  lockStrategy(mode: LockModeName): LockStrategy {
    return linuxLockStrategy(mode, this.criu, this.netfilter, this.opts.log);
  }

  processInfo(pid: number) {
    return inspectProcess(pid);
  }

  tcpConnections(pid: number) {
    return countTcpConnections(pid);
  }

  async probe(): Promise<PlatformProbe> {
    const [criuVersion, criuProblem, addresses] = await Promise.all([
      this.criu.version().catch((e: Error) => `unavailable: ${e.message}`),
      this.criu.checkProblem().catch((e: Error) => e.message),
      this.network.addresses(),
    ]);
    return {
      criuVersion,
      criuOk: criuProblem === undefined,
      criuProblem: criuProblem ?? '',
      lockOk: this.lockProblem === '',
      lockProblem: this.lockProblem,
      addresses,
    };
  }
}
