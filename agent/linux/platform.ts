/** The Linux host platform: CRIU, the XDP lock, steering, iproute2 and arping, /proc. */
import { mapFile } from './bpf/native-map.js';
import { dirname, join } from 'node:path';
import type { Executor } from '../../lib/exec.js';
import type { Logger } from '../../lib/log.js';
import type { NetLock } from '../netlock.js';
import type { LockModeName, LockStrategy } from '../lock-strategy.js';
import type { HeldTraffic, HostPlatform, PlatformProbe } from '../platform.js';
import type { SteeringDataplane } from '../steering.js';
import { Criu } from './criu.js';
import { CriuNetfilter } from './criu-netfilter.js';
import { linuxLockStrategy } from './lock-strategies.js';
import { HostNetwork } from './host-network.js';
import { lockPins } from './lock-maps.js';
import { EbpfNetLock } from './netlock-ebpf.js';
import { RingHeldTraffic } from './packet-hold.js';
import { EbpfSteering } from './steering-ebpf.js';
import { treeSockets } from './process-sockets.js';
import { userfaultfdProblem } from './lazy-pages.js';
import { LinuxPostCopy } from './post-copy.js';
import { inspectProcess, treePids } from './process-tree.js';
import { cpuFeatures, effectiveCapabilities } from './capabilities.js';
import { launchUnderInit, type LaunchSpec } from './init-launcher.js';
import { outsideUnixSockets, sharesIpcNamespace, sysvShmAttachments, treeProcesses } from './tree-facts.js';
import { checkFiles, treeFiles } from './tree-files.js';
import type { TreeFacts, WorkloadFile } from '../../lib/workload-facts.js';

export interface LinuxPlatformOptions {
  exec: Executor;
  iface: string;
  criuPath: string;
  /** CRIU's -v for dump and restore (criu.ts DEFAULT_CRIU_LOG_LEVEL when absent). */
  criuLogLevel?: number;
  /** build/bpf/lock.o; root.o and steer.o are expected beside it. */
  bpfObject: string;
  /** build/bpf/steer.o; default: beside bpfObject. */
  steerObject?: string;
  pinDir: string;
  /**
   * This host's data-plane IPv4 (steering's tunnel source, and what makes a backend local).
   * Needed by startSteering() only: an agent that does not steer may leave it out.
   */
  dataAddress?: string;
  /** Report no userfaultfd whatever the kernel has (tests of the post-copy refusal). */
  assumeNoUserfaultfd?: boolean;
  log: Logger;
  /** build/godwit-init (lab/workload/godwit-init.c): what `godwit run` starts workloads under. */
  initPath?: string;
  /** A file of CPU feature flags to report instead of /proc/cpuinfo's (agent --cpu-features). */
  cpuFeaturesFile?: string;
}

/** startSteering() without the host's data address: steering cannot tunnel or tell local backends. */
export class SteeringAddressMissingError extends Error {
  constructor() {
    super('steering needs this host\'s data-plane address (LinuxPlatformOptions.dataAddress)');
    this.name = 'SteeringAddressMissingError';
  }
}

export class LinuxPlatform implements HostPlatform {
  readonly netlock: NetLock;
  readonly held: HeldTraffic;
  readonly network: HostNetwork;
  /** Steering on the same interface and pin folder as the lock (behind it in the XDP chain); installed by startSteering(). */
  private readonly steeringPlane: EbpfSteering;
  private steeringInstalled = false;
  private readonly criu: Criu;
  private readonly netfilter: CriuNetfilter;
  /** Post-copy; its page server listens on the data address (the one other hosts reach). */
  readonly postCopy?: LinuxPostCopy;
  private lockProblem = 'not installed yet';

  constructor(private readonly opts: LinuxPlatformOptions) {
    this.criu = new Criu({ exec: opts.exec, criuPath: opts.criuPath, logLevel: opts.criuLogLevel });
    this.network = new HostNetwork({ exec: opts.exec, iface: opts.iface });
    this.netfilter = new CriuNetfilter(opts.exec);
    if (opts.dataAddress) this.postCopy = new LinuxPostCopy({ criu: this.criu, address: opts.dataAddress, log: opts.log });
    this.netlock = new EbpfNetLock({
      exec: opts.exec,
      iface: opts.iface,
      pinDir: opts.pinDir,
      objectPath: opts.bpfObject,
      log: opts.log,
    });
    this.held = new RingHeldTraffic({ ringPin: lockPins(opts.pinDir).heldRing, log: opts.log });
    this.steeringPlane = new EbpfSteering({
      exec: opts.exec,
      iface: opts.iface,
      pinDir: opts.pinDir,
      objectPath: opts.steerObject ?? join(dirname(opts.bpfObject), 'steer.o'),
      hostAddress: opts.dataAddress ?? '',
      log: opts.log,
    });
  }

  /**
   * Installs steering (its pinned maps and flows reused), separately from start(): an agent that
   * only steers skips the lock, one that does both calls start() first so that the lock is in
   * its slot before steering's (the chain runs slots in order whichever installs first).
   */
  async startSteering(): Promise<void> {
    if (!this.opts.dataAddress) throw new SteeringAddressMissingError();
    await this.steeringPlane.install();
    this.steeringInstalled = true;
    this.opts.log.info({ iface: this.opts.iface, generation: await this.steeringPlane.appliedGeneration() }, 'steering ready');
  }

  /** The steering data plane once startSteering() installed it; a host whose steering did not load has none. */
  readonly readImageFile = mapFile;

  get steering(): SteeringDataplane | undefined {
    return this.steeringInstalled ? this.steeringPlane : undefined;
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

  workloadSockets(pid: number) {
    return treeSockets(pid);
  }

  async treeFacts(pid: number, skipPrefixes: readonly string[]): Promise<TreeFacts> {
    const pids = await treePids(pid);
    const [tree, sharesHostIpcNamespace, sysvShm, outside, files] = await Promise.all([
      treeProcesses(pids),
      sharesIpcNamespace(pid),
      sysvShmAttachments(pids),
      outsideUnixSockets(pids, this.opts.exec),
      treeFiles(pids, skipPrefixes),
    ]);
    return { tree, sharesHostIpcNamespace, sysvShm, outsideUnixSockets: outside, files };
  }

  checkFiles(files: readonly WorkloadFile[]) {
    return checkFiles(files);
  }

  launchWorkload(spec: LaunchSpec): Promise<number> {
    return launchUnderInit(this.opts.exec, this.opts.initPath ?? join(dirname(dirname(this.opts.bpfObject)), 'godwit-init'), spec);
  }

  async probe(): Promise<PlatformProbe> {
    const [criuVersion, criuProblem, addresses, uffdProblem, capabilities, cpu] = await Promise.all([
      this.criu.version().catch((e: Error) => `unavailable: ${e.message}`),
      this.criu.checkProblem().catch((e: Error) => e.message),
      this.network.addresses(),
      this.opts.assumeNoUserfaultfd ? Promise.resolve('assumed absent (agent flag --assume-no-userfaultfd)') : userfaultfdProblem(),
      effectiveCapabilities(),
      cpuFeatures(this.opts.cpuFeaturesFile),
    ]);
    const postCopyProblem = uffdProblem ?? (this.postCopy ? undefined : 'no data address for a page server');
    return {
      criuVersion,
      criuOk: criuProblem === undefined,
      criuProblem: criuProblem ?? '',
      lockOk: this.lockProblem === '',
      lockProblem: this.lockProblem,
      addresses,
      userfaultfd: postCopyProblem === undefined,
      userfaultfdProblem: postCopyProblem ?? '',
      capabilities,
      cpuFeatures: cpu,
    };
  }
}
