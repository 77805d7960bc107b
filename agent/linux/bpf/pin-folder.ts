import type { Logger } from 'pino';
import type { Executor } from '../../../lib/exec.js';
import { pathExists, run } from './bpftool.js';

/*
 * A host's folder on bpffs, where every godwit program and map of that host is pinned: the one
 * place that knows the folder's layout. bpffs is shared by every network namespace on the
 * machine, so every (lab) host needs a folder of its own.
 *
 *   DIR/maps/<map name>        every map, under its full name (map names are unique across
 *                              godwit's objects; the chain map is shared by all of them)
 *   DIR/progs/<function name>  every program the host runs, root and chain slots alike
 *   DIR/staging_<object>/      programs just loaded, before they replace the running ones
 *   DIR/layouts                the layout version of each map (layout-record.ts)
 */

/** Where bpffs must be mounted. */
export const BPFFS_ROOT = '/sys/fs/bpf';

export interface PinFolder {
  dir: string;
  mapsDir: string;
  progsDir: string;
  /** The pinned map of layout versions (layout-record.ts). */
  layouts: string;
  mapPin(name: string): string;
  progPin(name: string): string;
  /** Where `bpftool prog loadall` pins an object's programs before they go live. */
  stagingDir(objectName: string): string;
}

export function pinFolder(pinDir: string): PinFolder {
  const dir = pinDir.replace(/\/+$/, '');
  if (!dir.startsWith(`${BPFFS_ROOT}/`)) throw new RangeError(`pin dir "${pinDir}" must be a folder under ${BPFFS_ROOT}/`);
  // No dots: bpffs reserves them and fails any lookup of a name with a dot with EPERM (even
  // `rm -f` of a missing pin). No spaces: bpftool batch splits its lines on whitespace.
  if (!/^[A-Za-z0-9_/-]+$/.test(dir.slice(BPFFS_ROOT.length))) throw new RangeError(`pin dir "${pinDir}" may only use [A-Za-z0-9_/-] below ${BPFFS_ROOT}`);
  const mapsDir = `${dir}/maps`;
  const progsDir = `${dir}/progs`;
  return {
    dir,
    mapsDir,
    progsDir,
    layouts: `${dir}/layouts`,
    mapPin: (name) => `${mapsDir}/${name}`,
    progPin: (name) => `${progsDir}/${name}`,
    stagingDir: (objectName) => `${dir}/staging_${objectName.replace(/[^A-Za-z0-9_]/g, '_')}`,
  };
}

/** Mounts bpffs at BPFFS_ROOT unless it is mounted there already. */
export async function ensureBpffs(exec: Executor, log: Logger): Promise<void> {
  const fsType = (await exec('stat', ['-f', '-c', '%T', BPFFS_ROOT], { allowFailure: true })).stdout.trim();
  if (fsType === 'bpf_fs') return;
  log.info({ found: fsType || 'nothing' }, `mounting bpffs at ${BPFFS_ROOT}`);
  await run(exec, 'mount', ['-t', 'bpf', 'bpf', BPFFS_ROOT]);
}

/** Removes the folder's empty subfolders and the folder itself once nothing is pinned in it. */
export async function removeIfEmpty(exec: Executor, folder: PinFolder): Promise<void> {
  for (const d of [folder.mapsDir, folder.progsDir, folder.dir]) {
    if (await pathExists(exec, d)) await exec('rmdir', [d], { allowFailure: true });
  }
}
