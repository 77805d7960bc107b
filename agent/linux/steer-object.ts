import type { Logger } from 'pino';
import type { Executor } from '../../lib/exec.js';
import { loadObject, removeObject, type ObjectSpec, type PinHost } from './bpf/object-loader.js';
import { ensureBpffs, pinFolder, removeIfEmpty, type PinFolder } from './bpf/pin-folder.js';
import { attachTcEgress, detachTcEgress, type TcEgressFilter } from './bpf/tc-egress.js';
import { CHAIN_MAP, ChainSlot, rootObjectBeside, XdpChain, type XdpMode } from './bpf/xdp-chain.js';
import { steerMapSpecs } from './steer-map-upgrades.js';

/*
 * bpf/steer.c as the BPF lifecycle loads it (bpf/object-loader.ts): its two programs, its maps
 * (steer-map-codec.ts, a layout version each) and the chain map it shares with the root. The
 * XDP program runs in chain slot ChainSlot.steer behind the root (before the lock, so the lock
 * sees packets after DNAT and after the tunnel is taken off); the reverse NAT runs on TC egress.
 *
 * Its pins live in the host's pin folder beside the lock's (the chain map is one per
 * interface): progs/godwit_steer, progs/godwit_steer_rnat, maps/steer_*.
 */

/** SEC("xdp") and SEC("tc") function names in bpf/steer.c. */
export const STEER_XDP_PROG = 'godwit_steer';
export const STEER_TC_PROG = 'godwit_steer_rnat';

/** tc filter preference of the reverse NAT: one fixed number, so reload replaces and uninstall removes only it. */
const STEER_TC_PREF = 49152;

/** bpf/steer.c: its programs, its maps, and the chain it runs in. */
export function steerObject(objectPath: string): ObjectSpec {
  return { name: 'steer', objectPath, programs: [STEER_XDP_PROG, STEER_TC_PROG], maps: steerMapSpecs(), sharedMaps: [CHAIN_MAP] };
}

export interface SteerProgramsOptions {
  /** Runs commands in the host's network namespace (ip, tc; bpftool works on the shared bpffs). */
  exec: Executor;
  iface: string;
  /** The host's pin folder, the same as the lock's (bpf/pin-folder.ts). */
  pinDir: string;
  /** build/bpf/steer.o (root.o is expected beside it). */
  objectPath: string;
  /**
   * false: load and pin only (the root and chain map pinned, nothing attached), for
   * BPF_PROG_TEST_RUN on the pinned programs (checksum tests, bench/steer-progrun.ts). Default true.
   */
  attach?: boolean;
  log: Logger;
}

/** Loads steering's programs over its pinned maps and puts them on the interface; takes them off again. */
export class SteerPrograms {
  readonly folder: PinFolder;
  private readonly host: PinHost;
  private readonly object: ObjectSpec;
  private readonly chain: XdpChain;
  private readonly tc: TcEgressFilter;

  constructor(private readonly opts: SteerProgramsOptions) {
    this.folder = pinFolder(opts.pinDir);
    this.host = { exec: opts.exec, folder: this.folder, log: opts.log };
    this.object = steerObject(opts.objectPath);
    this.chain = new XdpChain({ ...this.host, iface: opts.iface, rootObjectPath: rootObjectBeside(opts.objectPath) });
    this.tc = { iface: opts.iface, pref: STEER_TC_PREF };
  }

  /** Where a program of steer.o is pinned once loaded (what BPF_PROG_TEST_RUN runs). */
  progPin(program: typeof STEER_XDP_PROG | typeof STEER_TC_PROG): string {
    return this.folder.progPin(program);
  }

  /**
   * Loads steer.o with its pinned maps reused (flows carry over a reload), then, attaching, puts
   * the XDP program in its chain slot (the root attached if it is not yet) and the reverse NAT
   * on egress. Returns how the root is attached, or undefined when not attaching.
   */
  async load(): Promise<XdpMode | undefined> {
    await ensureBpffs(this.opts.exec, this.opts.log);
    await this.chain.prepare();
    const staged = await loadObject(this.host, this.object);
    let mode: XdpMode | undefined;
    try {
      if (this.opts.attach !== false) {
        await attachTcEgress(this.opts.exec, this.tc, staged.stagedPin(STEER_TC_PROG));
        await this.chain.setSlot(ChainSlot.steer, staged.stagedPin(STEER_XDP_PROG));
        mode = await this.chain.attach();
      }
    } catch (err) {
      await staged.abort();
      throw err;
    }
    await staged.commit();
    this.opts.log.info({ iface: this.opts.iface, pinDir: this.folder.dir, mode, ...staged.plan }, 'steering programs loaded');
    return mode;
  }

  /**
   * Takes steering out of the chain (the root stays while another slot, the lock, is used) and
   * off egress, and removes its pins; the host's pin folder goes once it is empty.
   */
  async unload(): Promise<void> {
    await this.chain.release(ChainSlot.steer);
    await detachTcEgress(this.opts.exec, this.tc);
    await removeObject(this.host, this.object);
    await removeIfEmpty(this.opts.exec, this.folder);
  }
}
