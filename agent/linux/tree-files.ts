/**
 * The regular files a process tree has open or mapped, and the target's check of them. godwit
 * moves process state, not the filesystem: CRIU reopens every file by path at restore and fails
 * if one is missing or has another size ("File ... has bad size"), and a mapped executable or
 * library that differs would run other code than was dumped. So the source lists path and size,
 * plus the identity of executables and shared objects (ELF build-id, else SHA-256 of the
 * content, as CRIU's own --file-validation does), and the target compares.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readFile, readdir, readlink, stat } from 'node:fs/promises';
import type { FileMismatch, WorkloadFile } from '../../lib/workload-facts.js';
import { hasIdentity } from '../../lib/workload-facts.js';

/** Pseudo filesystems and devices: never compared (CRIU handles them itself). */
const NOT_COMPARED = /^\/(proc|sys|dev)\//;
/** A maps line: address perms offset dev inode path. */
const MAP_LINE = /^\S+\s+(\S+)\s+\S+\s+\S+\s+(\d+)\s+(\/.*)$/;

/**
 * Every regular file of the tree (each path once, the first process using it named), except
 * deleted ones (CRIU carries those in the image) and paths under `skipPrefixes` (files that
 * travel with the image, such as a `godwit run` workload's output).
 */
export async function treeFiles(pids: readonly number[], skipPrefixes: readonly string[] = []): Promise<WorkloadFile[]> {
  const seen = new Map<string, WorkloadFile>();
  const skip = (path: string) => NOT_COMPARED.test(path) || path.endsWith(' (deleted)') || skipPrefixes.some((p) => path.startsWith(p));
  const add = async (pid: number, path: string, usage: string, executable: boolean, statPath: string) => {
    if (skip(path)) return;
    const known = seen.get(path);
    // A shared object's first mapping is read-only (its ELF header); the executable one follows.
    if (known && (!executable || hasIdentity(known))) return;
    const st = await stat(statPath).catch(() => undefined);
    if (!st?.isFile()) return;
    const identity = executable ? await fileIdentity(statPath) : { buildId: '', sha256: '' };
    seen.set(path, known ? { ...known, ...identity } : { path, size: st.size, ...identity, pid, usage });
  };
  for (const pid of pids) {
    const exe = await readlink(`/proc/${pid}/exe`).catch(() => '');
    if (exe) await add(pid, exe, 'exe', true, `/proc/${pid}/exe`);
    const maps = await readFile(`/proc/${pid}/maps`, 'utf8').catch(() => '');
    for (const line of maps.split('\n')) {
      const m = MAP_LINE.exec(line);
      if (!m || m[2] === '0') continue;
      await add(pid, m[3], 'mapped', m[1].includes('x'), m[3]);
    }
    for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [] as string[])) {
      const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
      if (target.startsWith('/')) await add(pid, target, `fd ${fd}`, false, `/proc/${pid}/fd/${fd}`);
    }
  }
  return [...seen.values()];
}

/** Target side: the files that are missing here or differ from what the source has. */
export async function checkFiles(files: readonly WorkloadFile[]): Promise<FileMismatch[]> {
  const out: FileMismatch[] = [];
  for (const f of files) {
    const st = await stat(f.path).catch(() => undefined);
    if (!st) {
      out.push({ file: f, problem: 'missing' });
      continue;
    }
    if (!st.isFile()) {
      out.push({ file: f, problem: 'not a regular file here' });
      continue;
    }
    if (st.size !== f.size) {
      out.push({ file: f, problem: `size ${st.size} here, ${f.size} on the source` });
      continue;
    }
    if (!hasIdentity(f)) continue;
    const here = await fileIdentity(f.path);
    if (f.buildId && here.buildId !== f.buildId) out.push({ file: f, problem: `build-id ${here.buildId || 'none'} here, ${f.buildId} on the source` });
    else if (!f.buildId && here.sha256 !== f.sha256) out.push({ file: f, problem: 'content differs (SHA-256)' });
  }
  return out;
}

const identities = new Map<string, { buildId: string; sha256: string }>();

/** The ELF build-id, or the SHA-256 for files without one; cached by device, inode, size and mtime. */
export async function fileIdentity(path: string): Promise<{ buildId: string; sha256: string }> {
  const st = await stat(path);
  const key = `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}`;
  const cached = identities.get(key);
  if (cached) return cached;
  const buildId = await elfBuildId(path).catch(() => '');
  const identity = { buildId, sha256: buildId ? '' : await sha256Of(path) };
  identities.set(key, identity);
  return identity;
}

/** NT_GNU_BUILD_ID from a little-endian ELF64's PT_NOTE segments; '' when it has none. */
async function elfBuildId(path: string): Promise<string> {
  const fh = await open(path, 'r');
  try {
    const read = async (offset: number, length: number) => {
      const buf = Buffer.alloc(length);
      const { bytesRead } = await fh.read(buf, 0, length, offset);
      return buf.subarray(0, bytesRead);
    };
    const eh = await read(0, 64);
    // "\x7fELF", ELFCLASS64, ELFDATA2LSB
    if (eh.length < 64 || eh.readUInt32BE(0) !== 0x7f454c46 || eh[4] !== 2 || eh[5] !== 1) return '';
    const phoff = Number(eh.readBigUInt64LE(0x20));
    const phentsize = eh.readUInt16LE(0x36);
    const phnum = eh.readUInt16LE(0x38);
    const ph = await read(phoff, phentsize * phnum);
    for (let i = 0; i < phnum; i++) {
      const p = ph.subarray(i * phentsize, (i + 1) * phentsize);
      if (p.length < 0x28 || p.readUInt32LE(0) !== 4 /* PT_NOTE */) continue;
      const notes = await read(Number(p.readBigUInt64LE(0x08)), Math.min(Number(p.readBigUInt64LE(0x20)), 64 * 1024));
      for (let o = 0; o + 12 <= notes.length; ) {
        const namesz = notes.readUInt32LE(o);
        const descsz = notes.readUInt32LE(o + 4);
        const type = notes.readUInt32LE(o + 8);
        const name = o + 12;
        const desc = name + align4(namesz);
        if (type === 3 /* NT_GNU_BUILD_ID */ && notes.toString('latin1', name, name + namesz).startsWith('GNU'))
          return notes.subarray(desc, desc + descsz).toString('hex');
        o = desc + align4(descsz);
      }
    }
    return '';
  } finally {
    await fh.close();
  }
}

const align4 = (n: number) => (n + 3) & ~3;

function sha256Of(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path)
      .on('data', (d) => h.update(d))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}
