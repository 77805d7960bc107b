import { pino, type Logger } from 'pino';
import { CommandError, type Executor } from '../../lib/exec.js';
import { layoutMismatch, structLayoutFromBtf } from './lock-map-codec.js';
import { CHAIN_MAP_NAME, STEER_MAPS, type SteerMapSpec } from './steer-map-codec.js';

/*
 * Where bpf/steer.c's programs are loaded, pinned and attached: the one place that knows about
 * bpftool, ip and tc for steering. EbpfSteering (steering-ebpf.ts) only reads and writes the
 * pinned maps, so this module is what moves to the generic pinned-program lifecycle (and the
 * interface's root program, bpf/lib/chain.h) when that lands: the XDP program then goes into
 * chain slot GODWIT_SLOT_STEER instead of being the interface's program.
 *
 * Pin layout, below the host's steering folder:
 *   maps/<map name>        every map of steer.o (steer_maps.h), reused on every load
 *   progs/godwit_steer     the XDP program; progs/godwit_steer_rnat the TC egress one
 *   (no dots in names: bpffs refuses them)
 */

/** SEC("xdp") and SEC("tc") function names in bpf/steer.c. */
export const STEER_XDP_PROG = 'godwit_steer';
export const STEER_TC_PROG = 'godwit_steer_rnat';
/** tc filter priority of the egress program: one fixed number, so reload replaces and unload removes only it. */
const TC_PREF = '49152';
const COMMAND_TIMEOUT_MS = 30_000;
const XDP_MODE_NAMES: Record<number, string> = { 1: 'native', 2: 'generic', 3: 'offload', 4: 'multi' };

export interface SteerPins {
  dir: string;
  mapsDir: string;
  map: (name: string) => string;
  progsDir: string;
  progsStaging: string;
}

export function steerPins(pinDir: string): SteerPins {
  const mapsDir = `${pinDir}/maps`;
  return { dir: pinDir, mapsDir, map: (name) => `${mapsDir}/${name}`, progsDir: `${pinDir}/progs`, progsStaging: `${pinDir}/progs-staging` };
}

/** Loads the steering programs over the pinned maps and attaches them; removes them again. */
export interface SteerProgramLoader {
  readonly pins: SteerPins;
  load(): Promise<void>;
  unload(): Promise<void>;
}

/** A pinned map's layout is not the one this agent encodes; reusing it would misread its entries. */
export class SteerMapLayoutError extends Error {
  constructor(
    readonly pin: string,
    readonly problem: string,
  ) {
    super(`pinned steering map ${pin} has another layout (${problem}); uninstall steering on this host (its flows end) or migrate the map`);
    this.name = 'SteerMapLayoutError';
  }
}

/** Another program than godwit's steering holds the interface's XDP hook. */
export class SteerXdpTakenError extends Error {
  constructor(
    readonly iface: string,
    readonly progName: string,
  ) {
    super(`${iface} already runs XDP program "${progName}"; steering joins it through the program chain (bpf/lib/chain.h), not by replacing it`);
    this.name = 'SteerXdpTakenError';
  }
}

export interface DirectSteerAttachOptions {
  /** Runs commands in the host's network namespace (ip, tc; bpftool works on the shared bpffs). */
  exec: Executor;
  iface: string;
  pinDir: string;
  /** build/bpf/steer.o */
  objectPath: string;
  /** false: load and pin only, for BPF_PROG_TEST_RUN (checksum tests, bench/steer-progrun.ts). Default true. */
  attach?: boolean;
  log?: Logger;
}

/**
 * Until the interface's root program exists: the XDP program attached as the interface's own
 * (native, generic as a fallback), the TC program as a clsact egress filter.
 */
export class DirectSteerAttach implements SteerProgramLoader {
  readonly pins: SteerPins;
  private readonly log: Logger;

  constructor(private readonly opts: DirectSteerAttachOptions) {
    this.pins = steerPins(opts.pinDir);
    this.log = opts.log ?? pino({ level: 'silent' });
  }

  async load(): Promise<void> {
    const { pins } = this;
    await this.run('mkdir', ['-p', pins.mapsDir]);
    const specs: { name: string; spec?: SteerMapSpec }[] = [...Object.values(STEER_MAPS).map((spec) => ({ name: spec.name, spec })), { name: CHAIN_MAP_NAME }];
    const reused: string[] = [];
    const btfs = new Map<number, unknown>(); // the maps of one object share one BTF
    for (const m of specs) {
      if (!(await this.exists(pins.map(m.name)))) continue;
      if (m.spec) await this.checkLayout(m.spec, btfs);
      reused.push(m.name);
    }
    const created = specs.filter((m) => !reused.includes(m.name)).map((m) => m.name);

    // Loaded next to what runs, then attached over it: the interface is never without steering,
    // and old and new programs share the pinned maps, so flows carry over.
    await this.run('rm', ['-rf', pins.progsStaging]);
    await this.run('bpftool', [
      'prog', 'loadall', this.opts.objectPath, pins.progsStaging,
      // bpftool refuses `pinmaps` once any map is reused, so reused maps are named one by one
      // and maps created meanwhile (none with one layout version) are pinned by id below.
      ...(reused.length === 0 ? ['pinmaps', pins.mapsDir] : reused.flatMap((name) => ['map', 'name', name, 'pinned', pins.map(name)])),
    ]);
    try {
      if (reused.length > 0 && created.length > 0) await this.pinCreated(created);
      if (this.opts.attach !== false) {
        await this.attachXdp(`${pins.progsStaging}/${STEER_XDP_PROG}`);
        await this.run('tc', ['qdisc', 'replace', 'dev', this.opts.iface, 'clsact']);
        await this.run('tc', ['filter', 'replace', 'dev', this.opts.iface, 'egress', 'pref', TC_PREF, 'handle', '1', 'bpf', 'direct-action', 'object-pinned', `${pins.progsStaging}/${STEER_TC_PROG}`]);
      }
    } catch (err) {
      await this.run('rm', ['-rf', pins.progsStaging]);
      throw err;
    }
    await this.run('rm', ['-rf', pins.progsDir]);
    await this.run('mv', [pins.progsStaging, pins.progsDir]);
    this.log.info({ iface: this.opts.iface, pinDir: pins.dir, reused, created }, 'steering programs loaded and attached');
  }

  async unload(): Promise<void> {
    if (this.opts.attach === false) {
      await this.run('rm', ['-rf', this.pins.dir]);
      return;
    }
    const xdp = await this.xdpProgram().catch(() => undefined);
    if (xdp?.name === STEER_XDP_PROG) await this.run('ip', ['link', 'set', 'dev', this.opts.iface, xdp.mode === 'generic' ? 'xdpgeneric' : 'xdp', 'off'], true);
    await this.run('tc', ['filter', 'del', 'dev', this.opts.iface, 'egress', 'pref', TC_PREF], true);
    await this.run('rm', ['-rf', this.pins.dir]);
  }

  private async attachXdp(progPin: string): Promise<void> {
    const before = await this.xdpProgram();
    if (before && before.name !== STEER_XDP_PROG) throw new SteerXdpTakenError(this.opts.iface, before.name);
    try {
      await this.run('ip', ['-force', 'link', 'set', 'dev', this.opts.iface, 'xdpdrv', 'pinned', progPin]);
    } catch (err) {
      if (!(err instanceof CommandError)) throw err;
      this.log.warn({ err: err.message }, 'native XDP attach failed; falling back to generic XDP');
      await this.run('ip', ['-force', 'link', 'set', 'dev', this.opts.iface, 'xdpgeneric', 'pinned', progPin]);
    }
  }

  private async xdpProgram(): Promise<{ name: string; mode: string } | undefined> {
    const links = JSON.parse((await this.run('ip', ['-j', 'link', 'show', 'dev', this.opts.iface])).stdout) as {
      xdp?: { mode: number; prog?: { name?: string }; attached?: { prog: { name?: string } }[] };
    }[];
    const xdp = links[0]?.xdp;
    const prog = xdp?.prog ?? xdp?.attached?.[0]?.prog;
    // The kernel keeps 15 characters of a program's name.
    return xdp && prog ? { name: prog.name === STEER_XDP_PROG.slice(0, 15) ? STEER_XDP_PROG : (prog.name ?? ''), mode: XDP_MODE_NAMES[xdp.mode] ?? 'multi' } : undefined;
  }

  private async pinCreated(names: string[]): Promise<void> {
    const prog = JSON.parse((await this.run('bpftool', ['-j', 'prog', 'show', 'pinned', `${this.pins.progsStaging}/${STEER_XDP_PROG}`])).stdout) as { map_ids?: number[] };
    for (const id of prog.map_ids ?? []) {
      const info = JSON.parse((await this.run('bpftool', ['-j', 'map', 'show', 'id', String(id)])).stdout) as { name?: string };
      const name = names.find((n) => n.slice(0, 15) === info.name);
      if (name) await this.run('bpftool', ['map', 'pin', 'id', String(id), this.pins.map(name)]);
    }
  }

  /** Refuses a pinned map whose shape or BTF struct layouts differ from the codec's. */
  private async checkLayout(m: SteerMapSpec, btfs: Map<number, unknown>): Promise<void> {
    const pin = this.pins.map(m.name);
    const info = JSON.parse((await this.run('bpftool', ['-j', 'map', 'show', 'pinned', pin])).stdout) as {
      type: string;
      bytes_key: number;
      bytes_value: number;
      max_entries: number;
      flags?: number;
      btf_id?: number;
    };
    const bpftoolType: Record<SteerMapSpec['type'], string> = { hash: 'hash', array: 'array', percpuArray: 'percpu_array', lruHash: 'lru_hash', progArray: 'prog_array' };
    const shape = (t: string, k: number, v: number, n: number, f: number) => `${t} key ${k} value ${v} max_entries ${n} flags ${f}`;
    const want = shape(bpftoolType[m.type], m.keySize, m.valueSize, m.maxEntries, m.flags);
    const have = shape(info.type, info.bytes_key, info.bytes_value, info.max_entries, (info.flags ?? 0) & m.flags);
    if (want !== have) throw new SteerMapLayoutError(pin, `expected ${want}, found ${have}`);
    if (info.btf_id === undefined) throw new SteerMapLayoutError(pin, 'the pinned map carries no BTF to check');
    let btf = btfs.get(info.btf_id);
    if (btf === undefined) {
      btf = JSON.parse((await this.run('bpftool', ['-j', 'btf', 'dump', 'id', String(info.btf_id)])).stdout) as unknown;
      btfs.set(info.btf_id, btf);
    }
    for (const l of m.structs) {
      const problem = layoutMismatch(l, structLayoutFromBtf(btf, l.name));
      if (problem) throw new SteerMapLayoutError(pin, problem);
    }
  }

  private async exists(path: string): Promise<boolean> {
    return (await this.opts.exec('test', ['-e', path], { allowFailure: true })).exitCode === 0;
  }

  private run(file: string, args: string[], allowFailure = false) {
    return this.opts.exec(file, args, { timeoutMs: COMMAND_TIMEOUT_MS, allowFailure });
  }
}
