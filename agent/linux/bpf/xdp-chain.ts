import { dirname, join } from 'node:path';
import type { Logger } from 'pino';
import { CommandError, type Executor } from '../../../lib/exec.js';
import { BPFTOOL_TIMEOUT_MS, bpftoolJson, pathExists, pinnedProg, run } from './bpftool.js';
import type { MapSpec } from './map-spec.js';
import { loadObject, removeObject, type ObjectSpec, type PinHost } from './object-loader.js';
import { removeIfEmpty } from './pin-folder.js';

/*
 * The one XDP attach point of an interface (bpf/root.c, bpf/lib/chain.h): the root program is
 * attached once, and godwit's programs run from the slots of the pinned prog array
 * godwit_xdp_chain in slot order. A feature installs its program by updating one slot; the
 * interface is never without the root meanwhile, and the lock and steering never fight over it.
 */

/**
 * Slots of the chain, in the order they run (GODWIT_SLOT_* in bpf/lib/chain.h): steering first,
 * so that the lock sees packets after DNAT and after the tunnel is taken off.
 */
export const ChainSlot = { steer: 0, lock: 1 } as const;
export type ChainSlot = (typeof ChainSlot)[keyof typeof ChainSlot];

/** GODWIT_CHAIN_SLOTS. */
const CHAIN_SLOTS = 8;

/** The chain map every object of the chain declares; owned by the root, shared by the others. */
export const CHAIN_MAP: MapSpec = { name: 'godwit_xdp_chain', type: 'prog_array', keySize: 4, valueSize: 4, maxEntries: CHAIN_SLOTS, structs: [], version: 1 };

/** SEC("xdp") function of bpf/root.c. */
export const ROOT_PROG_NAME = 'godwit_xdp_root';

/**
 * Programs that older godwit versions attached to the interface directly; install replaces them
 * with the root in one atomic swap (their maps are reused by their successors in the chain).
 */
const FORMER_ROOTS = ['godwit_lock'];

/** IFLA_XDP_ATTACHED values as `ip -j link` reports them (uapi linux/if_link.h). */
const XDP_MODE_NAMES: Record<number, XdpMode | 'offload' | 'multi'> = { 1: 'native', 2: 'generic', 3: 'offload', 4: 'multi' };

export type XdpMode = 'native' | 'generic';

/** Another XDP program owns the interface; godwit will not replace it. */
export class XdpSlotTakenError extends Error {
  constructor(
    readonly iface: string,
    readonly progName: string,
    readonly progId: number,
  ) {
    super(`interface ${iface} already runs XDP program "${progName}" (id ${progId}); detach it before installing godwit`);
    this.name = 'XdpSlotTakenError';
  }
}

export interface XdpAttachment {
  mode: XdpMode | 'offload' | 'multi';
  progId: number;
  progName: string;
}

export interface XdpChainOptions extends PinHost {
  iface: string;
  /** build/bpf/root.o. */
  rootObjectPath: string;
}

/** The root object: its program, and the chain map it owns. */
function rootObject(objectPath: string): ObjectSpec {
  return { name: 'root', objectPath, programs: [ROOT_PROG_NAME], maps: [CHAIN_MAP] };
}

/** root.o next to a feature's object (build/bpf/), where scripts/build-bpf.sh puts both. */
export function rootObjectBeside(objectPath: string): string {
  return join(dirname(objectPath), 'root.o');
}

/**
 * One queue per pin folder in this process: the lock and steering each hold an XdpChain of the
 * same interface, and their installs must not load or swap the root at the same time.
 */
const folderQueues = new Map<string, Promise<unknown>>();

function inFolderQueue<T>(dir: string, op: () => Promise<T>): Promise<T> {
  const run = (folderQueues.get(dir) ?? Promise.resolve()).then(op, op);
  folderQueues.set(dir, run.catch(() => undefined));
  return run;
}

export class XdpChain {
  private readonly host: PinHost;
  private readonly iface: string;
  private readonly root: ObjectSpec;
  private attachedMode: XdpMode | undefined;

  constructor(opts: XdpChainOptions) {
    if (!/^[A-Za-z0-9_.@-]{1,15}$/.test(opts.iface)) throw new RangeError(`"${opts.iface}" is not an interface name`);
    this.iface = opts.iface;
    this.root = rootObject(opts.rootObjectPath);
    this.host = { ...opts, log: opts.log.child({ component: 'xdp-chain', iface: opts.iface }) };
  }

  /** How the root is attached, once prepare()/attach() ran: native (driver) XDP, or generic. */
  get mode(): XdpMode | undefined {
    return this.attachedMode;
  }

  get chainPin(): string {
    return this.host.folder.mapPin(CHAIN_MAP.name);
  }

  get rootPin(): string {
    return this.host.folder.progPin(ROOT_PROG_NAME);
  }

  /**
   * Pins the root program and the chain map (reusing both when they are pinned and the root is
   * the same program), without touching the interface: what a feature's object needs before it
   * loads with the chain map shared. Refuses a foreign XDP program on the interface first.
   */
  prepare(): Promise<void> {
    return inFolderQueue(this.host.folder.dir, () => this.prepareNow());
  }

  private async prepareNow(): Promise<void> {
    await this.refuseForeign();
    const { exec, log } = this.host;
    const staged = await loadObject(this.host, this.root);
    try {
      // Same instructions as the pinned root (same tag) and the same chain map: keep the pinned
      // one, so that the interface keeps the program it runs.
      if (staged.plan.created.length === 0 && (await pathExists(exec, this.rootPin))) {
        const [live, fresh] = [await pinnedProg(exec, this.rootPin), await pinnedProg(exec, staged.stagedPin(ROOT_PROG_NAME))];
        if (live.tag === fresh.tag) {
          await run(exec, 'rm', ['-rf', this.host.folder.stagingDir(this.root.name)]);
          return;
        }
        log.info({ liveTag: live.tag, newTag: fresh.tag }, 'root program changed; the new one replaces it at attach');
      }
      await staged.commit();
    } catch (err) {
      await staged.abort();
      throw err;
    }
  }

  /**
   * Attaches the pinned root to the interface, unless it runs it already; replaces an older
   * godwit root (or the lock that older versions attached directly) in one swap. Native XDP,
   * else generic. Call prepare() first.
   */
  attach(): Promise<XdpMode> {
    return inFolderQueue(this.host.folder.dir, () => this.attachNow());
  }

  private async attachNow(): Promise<XdpMode> {
    const before = await this.attachment();
    const rootId = (await pinnedProg(this.host.exec, this.rootPin)).id;
    if (before?.progId === rootId && (before.mode === 'native' || before.mode === 'generic')) {
      this.attachedMode = before.mode;
      return before.mode;
    }
    if (before && !isOurs(before.progName)) throw new XdpSlotTakenError(this.iface, before.progName, before.progId);

    // `-force` replaces an attached program (without it ip refuses: "XDP program already attached").
    let mode: XdpMode = 'native';
    try {
      await run(this.host.exec, 'ip', ['-force', 'link', 'set', 'dev', this.iface, 'xdpdrv', 'pinned', this.rootPin]);
    } catch (err) {
      if (!(err instanceof CommandError)) throw err;
      // Also the way out when an earlier install fell back to generic: the kernel refuses native
      // while generic is attached ("Native and generic XDP can't be active at the same time").
      this.host.log.warn({ err: err.message }, 'native XDP attach failed; falling back to generic XDP');
      await run(this.host.exec, 'ip', ['-force', 'link', 'set', 'dev', this.iface, 'xdpgeneric', 'pinned', this.rootPin]);
      mode = 'generic';
    }
    const after = await this.attachment();
    if (!after || after.progId !== rootId || after.mode !== mode)
      throw new Error(`XDP attach on ${this.iface} did not take: expected ${mode} program ${rootId}, found ${after ? `${after.mode} program ${after.progId}` : 'none'}`);
    this.host.log.info({ mode, progId: rootId, replacedProgId: before?.progId, replacedProgName: before?.progName }, 'XDP root attached');
    this.attachedMode = mode;
    return mode;
  }

  /**
   * Puts the program pinned at progPin into a slot, replacing what ran there (one map update:
   * atomic), then takes a program of the same name out of every other slot: a program name is
   * in one slot only. That is how a host whose chain was pinned in an older order (the lock in
   * slot 0, steering in 1) moves to the current one: each feature's install leaves its program
   * in its own slot alone. Set first, cleared after: the feature never leaves the chain.
   */
  async setSlot(slot: ChainSlot | number, progPin: string): Promise<void> {
    const { name } = await pinnedProg(this.host.exec, progPin);
    await run(this.host.exec, 'bpftool', ['map', 'update', 'pinned', this.chainPin, 'key', ...slotKey(slot), 'value', 'pinned', progPin]);
    this.host.log.info({ slot, progPin }, 'chain slot set');
    if (!name) return;
    for (const [other, id] of await this.slots()) {
      if (other === slot || (await this.progName(id)) !== name) continue;
      await this.host.exec('bpftool', ['map', 'delete', 'pinned', this.chainPin, 'key', ...slotKey(other)], { allowFailure: true, timeoutMs: BPFTOOL_TIMEOUT_MS });
      this.host.log.info({ slot: other, progName: name, movedTo: slot }, 'program taken out of its former chain slot');
    }
  }

  /** The name of a loaded program (undefined when it is gone meanwhile). */
  private async progName(id: number): Promise<string | undefined> {
    const r = await this.host.exec('bpftool', ['-j', 'prog', 'show', 'id', String(id)], { allowFailure: true, timeoutMs: BPFTOOL_TIMEOUT_MS });
    if (r.exitCode !== 0) return undefined;
    return (JSON.parse(r.stdout) as { name?: string }).name;
  }

  /** Empties a slot; its packets go on to the next slot. */
  async clearSlot(slot: ChainSlot | number): Promise<void> {
    if (!(await pathExists(this.host.exec, this.chainPin))) return;
    await this.host.exec('bpftool', ['map', 'delete', 'pinned', this.chainPin, 'key', ...slotKey(slot)], { allowFailure: true });
  }

  /** The program id in each populated slot. */
  async slots(): Promise<Map<number, number>> {
    const out = new Map<number, number>();
    if (!(await pathExists(this.host.exec, this.chainPin))) return out;
    const rows = await bpftoolJson<{ formatted?: { key: number; value: number } }[]>(this.host.exec, ['map', 'dump', 'pinned', this.chainPin]);
    for (const r of rows) if (r.formatted) out.set(r.formatted.key, r.formatted.value);
    return out;
  }

  /**
   * Removes a feature's slot; once the chain is empty, detaches the root and removes its pins.
   * Returns whether the chain went away.
   */
  release(slot: ChainSlot): Promise<boolean> {
    return inFolderQueue(this.host.folder.dir, async () => {
      await this.clearSlot(slot);
      if ((await this.slots()).size > 0) return false;
      await this.remove();
      return true;
    });
  }

  /** Detaches the root (if it or a former godwit root is attached) and removes the root's pins. */
  async remove(): Promise<void> {
    const attached = await this.attachment().catch((err: unknown) => {
      // The interface (or its namespace) is gone already: nothing left to detach.
      this.host.log.warn({ err }, 'interface not readable; skipping XDP detach');
      return undefined;
    });
    if (attached && isOurs(attached.progName) && (attached.mode === 'native' || attached.mode === 'generic')) {
      await run(this.host.exec, 'ip', ['link', 'set', 'dev', this.iface, attached.mode === 'native' ? 'xdpdrv' : 'xdpgeneric', 'off']);
      this.host.log.info({ progId: attached.progId }, 'XDP root detached');
    } else if (attached) {
      this.host.log.warn({ progName: attached.progName, progId: attached.progId }, 'interface runs another XDP program; leaving it');
    }
    await removeObject(this.host, this.root);
    await removeIfEmpty(this.host.exec, this.host.folder);
    this.attachedMode = undefined;
  }

  async attachment(): Promise<XdpAttachment | undefined> {
    const links = JSON.parse((await run(this.host.exec, 'ip', ['-j', 'link', 'show', 'dev', this.iface])).stdout) as {
      xdp?: { mode: number; prog?: { id: number; name?: string }; attached?: { mode: number; prog: { id: number; name?: string } }[] };
    }[];
    const xdp = links[0]?.xdp;
    // With several programs (mode "multi") ip lists them under `attached`; take one that is not ours first.
    const prog = xdp?.prog ?? xdp?.attached?.find((a) => !isOurs(a.prog.name ?? ''))?.prog ?? xdp?.attached?.[0]?.prog;
    if (!xdp || !prog) return undefined;
    return { mode: XDP_MODE_NAMES[xdp.mode] ?? 'multi', progId: prog.id, progName: prog.name ?? '' };
  }

  private async refuseForeign(): Promise<void> {
    const before = await this.attachment();
    if (before && !isOurs(before.progName)) throw new XdpSlotTakenError(this.iface, before.progName, before.progId);
  }
}

function isOurs(progName: string): boolean {
  return progName === ROOT_PROG_NAME || FORMER_ROOTS.includes(progName);
}

/** A slot as bpftool's key bytes: u32, little-endian (x86). */
function slotKey(slot: number): string[] {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(slot);
  return [...b].map(String);
}
