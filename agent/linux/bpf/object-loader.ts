import type { Logger } from 'pino';
import type { Executor } from '../../../lib/exec.js';
import { bpftoolJson, pathExists, pinnedProg, run } from './bpftool.js';
import { LayoutRecord } from './layout-record.js';
import { checkPinnedLayout, MapLayoutError } from './map-layout.js';
import { kernelMapName, type MapSpec, type MapUpgrade } from './map-spec.js';
import type { PinFolder } from './pin-folder.js';

/*
 * Loads a BPF object into a host's pin folder with its state kept: every map that is pinned
 * already (and whose layout checks out) is reused, the others are created and pinned, and a map
 * whose layout changed is upgraded by its spec's copy before the new programs run. What Katran
 * does for its connection table, for every map, with a version per map (layout-record.ts).
 *
 * Two steps, so that the caller decides when the new programs go live: loadObject() stages them
 * (nothing running changes), StagedObject.commit() makes the staged pins the live ones and drops
 * the maps an upgrade replaced; abort() puts everything back.
 */

/** Where an object is loaded, and who logs it. */
export interface PinHost {
  exec: Executor;
  folder: PinFolder;
  log: Logger;
}

export interface ObjectSpec {
  /** Short name, for the staging folder and the logs (e.g. "lock"). */
  name: string;
  objectPath: string;
  /** Its programs' function names; `bpftool prog loadall` pins each under that name. */
  programs: readonly string[];
  /** The maps it owns: all of them are pinned, checked, versioned, and removed with the object. */
  maps: readonly MapSpec[];
  /** Maps it shares, owned by another object that pinned them already (the chain map). */
  sharedMaps?: readonly MapSpec[];
}

/** A planned upgrade: the map, its upgrade, and the pins of the older maps it reads. */
interface PlannedUpgrade {
  map: MapSpec;
  upgrade: MapUpgrade;
  from: Record<string, string>;
}

/** What loadObject() decided for each map, for the logs and the tests. */
export interface LoadPlan {
  reused: string[];
  created: string[];
  upgraded: { map: string; fromVersion: number }[];
}

export class StagedObject {
  constructor(
    private readonly host: PinHost,
    private readonly spec: ObjectSpec,
    private readonly stagingDir: string,
    readonly plan: LoadPlan,
    private readonly upgrades: readonly PlannedUpgrade[],
    /** Own-name pins set aside for an upgrade: [live pin, where it waits]. */
    private readonly setAside: readonly [string, string][],
  ) {}

  /** The staged pin of each program, by function name: what a caller attaches before commit(). */
  stagedPin(program: string): string {
    if (!this.spec.programs.includes(program)) throw new RangeError(`object ${this.spec.name} has no program ${program}`);
    return `${this.stagingDir}/${program}`;
  }

  /**
   * Makes the staged programs the live pins (replacing the older ones), removes the maps that
   * upgrades copied from, and records every map's layout version.
   */
  async commit(): Promise<void> {
    const { exec, folder } = this.host;
    await run(exec, 'mkdir', ['-p', folder.progsDir]);
    // bpffs supports rename, also over an existing pin.
    for (const p of this.spec.programs) await run(exec, 'mv', ['-f', this.stagedPin(p), folder.progPin(p)]);
    for (const u of this.upgrades) for (const pin of Object.values(u.from)) await run(exec, 'rm', ['-f', pin]);
    await new LayoutRecord(exec, folder.layouts).write(new Map(this.spec.maps.map((m) => [m.name, m.version])));
    await run(exec, 'rm', ['-rf', this.stagingDir]);
  }

  /** Drops the staged programs and the maps this load created; puts set-aside pins back. */
  async abort(): Promise<void> {
    const { exec, folder } = this.host;
    await run(exec, 'rm', ['-rf', this.stagingDir]);
    for (const name of this.plan.created) await run(exec, 'rm', ['-f', folder.mapPin(name)]);
    for (const [live, aside] of this.setAside) await run(exec, 'mv', ['-f', aside, live]);
  }
}

/**
 * Stages `spec`'s programs with its maps reused or created (see the file comment). Refuses
 * (MapLayoutError) a pinned map whose layout is neither its spec's nor one it can upgrade from.
 */
export async function loadObject(host: PinHost, spec: ObjectSpec): Promise<StagedObject> {
  const { exec, folder, log } = host;
  await run(exec, 'mkdir', ['-p', folder.mapsDir]);
  const recorded = await new LayoutRecord(exec, folder.layouts).read();
  const reused: MapSpec[] = [];
  const created: MapSpec[] = [];
  const upgrades: PlannedUpgrade[] = [];
  const setAside: [string, string][] = [];

  for (const m of spec.sharedMaps ?? []) {
    if (!(await pathExists(exec, folder.mapPin(m.name)))) throw new Error(`object ${spec.name} shares map ${m.name}, which is not pinned at ${folder.mapPin(m.name)}`);
    reused.push(m);
  }
  try {
    for (const m of spec.maps) {
      const pin = folder.mapPin(m.name);
      const version = recorded.get(m.name);
      if (version !== undefined && version > m.version) throw new MapLayoutError(pin, `layout version ${version} is newer than this agent's ${m.version}`);
      const pinned = await pathExists(exec, pin);
      if (pinned && (version === undefined || version === m.version)) {
        await checkPinnedLayout(exec, m, pin, log);
        reused.push(m);
        continue;
      }
      if (pinned) {
        // The map itself is of an older layout: set its pin aside, create the new map, copy.
        const upgrade = m.upgrades?.find((u) => u.fromVersion === version);
        if (!upgrade) throw new MapLayoutError(pin, `layout version ${version} has no upgrade to version ${m.version}`);
        const aside = `${folder.dir}/old_${m.name}`;
        await run(exec, 'mv', ['-f', pin, aside]);
        setAside.push([pin, aside]);
        upgrades.push({ map: m, upgrade, from: Object.fromEntries(upgrade.reads.map((n) => [n, n === m.name ? aside : folder.mapPin(n)])) });
      } else {
        // Not pinned: new, or its state is in other maps of an older layout, when those are
        // pinned (whatever the record says: it describes this map's pin, which is gone).
        for (const u of m.upgrades ?? []) {
          if (u.reads.includes(m.name)) continue;
          if (!(await allExist(exec, u.reads.map((n) => folder.mapPin(n))))) continue;
          upgrades.push({ map: m, upgrade: u, from: Object.fromEntries(u.reads.map((n) => [n, folder.mapPin(n)])) });
          break;
        }
      }
      created.push(m);
    }
  } catch (err) {
    for (const [live, aside] of setAside) await run(exec, 'mv', ['-f', aside, live]);
    throw err;
  }

  const stagingDir = folder.stagingDir(spec.name);
  const plan: LoadPlan = {
    reused: reused.map((m) => m.name),
    created: created.map((m) => m.name),
    upgraded: upgrades.map((u) => ({ map: u.map.name, fromVersion: u.upgrade.fromVersion })),
  };
  const staged = new StagedObject(host, spec, stagingDir, plan, upgrades, setAside);
  try {
    await run(exec, 'rm', ['-rf', stagingDir]);
    // Every reused map gets its own clause; the created ones are pinned by id below (bpftool's
    // `pinmaps` refuses to run once any map is reused: "failed to pin map: File exists").
    await run(exec, 'bpftool', ['prog', 'loadall', spec.objectPath, stagingDir, ...reused.flatMap((m) => ['map', 'name', m.name, 'pinned', folder.mapPin(m.name)])]);
    if (created.length > 0) await pinCreatedMaps(host, spec, staged, created);
    // Before the new programs run: what the old maps held stays held.
    for (const u of upgrades) {
      await u.upgrade.copy({ exec, from: u.from, to: folder.mapPin(u.map.name), log });
      log.info({ map: u.map.name, fromVersion: u.upgrade.fromVersion, toVersion: u.map.version, from: u.from }, 'map layout upgraded');
    }
  } catch (err) {
    await staged.abort();
    throw err;
  }
  log.debug({ object: spec.name, ...plan }, 'object staged');
  return staged;
}

/** Removes an object's live program pins, its own maps' pins and their layout records. */
export async function removeObject(host: PinHost, spec: ObjectSpec): Promise<void> {
  const { exec, folder } = host;
  for (const p of spec.programs) await run(exec, 'rm', ['-f', folder.progPin(p)]);
  for (const m of spec.maps) await run(exec, 'rm', ['-f', folder.mapPin(m.name)]);
  await run(exec, 'rm', ['-rf', folder.stagingDir(spec.name)]);
  await new LayoutRecord(exec, folder.layouts).forget(spec.maps.map((m) => m.name));
}

/**
 * Pins the maps bpftool created, found by name among the staged programs' maps (the kernel's
 * name: at most 15 characters).
 */
async function pinCreatedMaps(host: PinHost, spec: ObjectSpec, staged: StagedObject, maps: readonly MapSpec[]): Promise<void> {
  const { exec, folder, log } = host;
  const ids = new Set<number>();
  for (const p of spec.programs) for (const id of (await pinnedProg(exec, staged.stagedPin(p))).map_ids ?? []) ids.add(id);
  const pinned = new Set<string>();
  for (const id of ids) {
    const info = await bpftoolJson<{ name?: string }>(exec, ['map', 'show', 'id', String(id)]);
    const m = maps.find((x) => kernelMapName(x.name) === info.name);
    if (!m || pinned.has(m.name)) continue;
    await run(exec, 'bpftool', ['map', 'pin', 'id', String(id), folder.mapPin(m.name)]);
    pinned.add(m.name);
    log.info({ map: m.name, id, pin: folder.mapPin(m.name) }, 'created map pinned');
  }
  const missing = maps.filter((m) => !pinned.has(m.name));
  if (missing.length > 0) throw new Error(`maps ${missing.map((m) => m.name).join(', ')} of ${spec.objectPath} were not found among its programs' maps to pin`);
}

async function allExist(exec: Executor, paths: readonly string[]): Promise<boolean> {
  for (const p of paths) if (!(await pathExists(exec, p))) return false;
  return true;
}
