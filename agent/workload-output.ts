/**
 * A `godwit run` workload's output file, and how it moves with the workload. CRIU reopens an open
 * regular file by path at restore and refuses one whose size changed since the dump; a pipe to a
 * collector outside the tree would not move at all. So the workload appends to a file of its own
 * (its init's stdout), the source copies that file into the image after the dump (nothing writes
 * it then), and the target puts it back at the same path before the restore unless it already
 * has the same bytes there (hosts that share the folder, as the lab's do).
 */
import { copyFile, mkdir, readFile, readlink, rename, stat, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { dirname, join } from 'node:path';

const OUTPUT_COPY = 'godwit-output.log';
const OUTPUT_META = 'godwit-output.json';

/** The output file of the workload rooted at `pid`, if it is one of `workloadDir`'s. */
export async function outputFileOf(pid: number, workloadDir: string): Promise<string | undefined> {
  const target = await readlink(`/proc/${pid}/fd/1`).catch(() => '');
  return target.startsWith(`${workloadDir}/`) ? target : undefined;
}

/** Source, after the dump: the output file goes into the image folder. */
export async function carryOutput(imageDir: string, path: string): Promise<void> {
  await copyFile(path, join(imageDir, OUTPUT_COPY));
  await writeFile(join(imageDir, OUTPUT_META), JSON.stringify({ path }));
}

/** Target, before the restore: the output file back at its path; returns the path if the image had one. */
export async function placeOutput(imageDir: string): Promise<string | undefined> {
  const meta = await readFile(join(imageDir, OUTPUT_META), 'utf8').catch(() => '');
  if (!meta) return undefined;
  const { path } = JSON.parse(meta) as { path: string };
  const copy = join(imageDir, OUTPUT_COPY);
  if (await sameBytes(copy, path)) return path;
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.godwit-tmp`;
  await copyFile(copy, tmp);
  await rename(tmp, path);
  return path;
}

async function sameBytes(a: string, b: string): Promise<boolean> {
  const [sa, sb] = await Promise.all([stat(a).catch(() => undefined), stat(b).catch(() => undefined)]);
  if (!sa || !sb || sa.size !== sb.size) return false;
  if (sa.dev === sb.dev && sa.ino === sb.ino) return true;
  const digest = async (p: string) => createHash('sha256').update(await readFile(p)).digest('hex');
  return (await digest(a)) === (await digest(b));
}
