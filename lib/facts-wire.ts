/** Wire (proto) forms of preflight's tree facts (lib/workload-facts.ts). uint64s travel as decimal strings. */
import type { FileMismatch__Output } from '../proto/gen/godwit/v1/FileMismatch.js';
import type { InspectWorkloadResponse__Output } from '../proto/gen/godwit/v1/InspectWorkloadResponse.js';
import type { WorkloadFile, WorkloadFile__Output } from '../proto/gen/godwit/v1/WorkloadFile.js';
import { posix } from 'node:path';
import { InvalidArgumentError } from './errors.js';
import type { FileMismatch, TreeFacts, WorkloadFile as DomainFile } from './workload-facts.js';

export function treeFactsToWire(f: TreeFacts) {
  return {
    tree: f.tree,
    sharesHostIpcNamespace: f.sharesHostIpcNamespace,
    sysvShm: f.sysvShm.map((s) => ({ pid: s.pid, shmid: String(s.shmid), bytes: String(s.bytes) })),
    outsideUnixSockets: f.outsideUnixSockets,
    files: f.files.map(fileToWire),
  };
}

export function treeFactsFromWire(r: InspectWorkloadResponse__Output): TreeFacts {
  return {
    tree: r.tree.map((p) => ({ pid: p.pid, nsPid: p.nsPid, uid: p.uid, user: p.user, command: p.command })),
    sharesHostIpcNamespace: r.sharesHostIpcNamespace,
    sysvShm: r.sysvShm.map((s) => ({ pid: s.pid, shmid: Number(s.shmid), bytes: Number(s.bytes) })),
    outsideUnixSockets: r.outsideUnixSockets.map((u) => ({ pid: u.pid, fd: u.fd, path: u.path, peerPid: u.peerPid, peerCommand: u.peerCommand })),
    files: r.files.map(fileFromWire),
  };
}

export function fileToWire(f: DomainFile): WorkloadFile {
  return { path: f.path, size: String(f.size), buildId: f.buildId, sha256: f.sha256, pid: f.pid, usage: f.usage };
}

export function fileFromWire(f: WorkloadFile__Output): DomainFile {
  return { path: f.path, size: Number(f.size), buildId: f.buildId, sha256: f.sha256, pid: f.pid, usage: f.usage };
}

const MAX_FILES = 100_000;
/** Linux's largest possible pid_max (PID_MAX_LIMIT on 64-bit). */
const PID_MAX_LIMIT = 4_194_304;
const MAX_PATH_BYTES = 4096;

/**
 * The files a target is asked to compare, refused whole if any entry is not what a source can
 * have read from /proc: an absolute, normalized path (no `..`, no NUL), a size, a hex build-id
 * or SHA-256.
 */
export function filesFromWire(list: WorkloadFile__Output[]): DomainFile[] {
  if (list.length === 0) throw new InvalidArgumentError('files', 'files is empty: name the files to compare');
  if (list.length > MAX_FILES) throw new InvalidArgumentError('files', `files names ${list.length} files; at most ${MAX_FILES}`);
  const files = list.map((w, i) => {
    const f = fileFromWire(w);
    const field = `files[${i}]`;
    if (!f.path.startsWith('/') || f.path.includes('\0') || posix.normalize(f.path) !== f.path || Buffer.byteLength(f.path) > MAX_PATH_BYTES)
      throw new InvalidArgumentError(`${field}.path`, `${field}.path must be an absolute, normalized path without NUL bytes, at most ${MAX_PATH_BYTES} bytes`);
    if (!Number.isSafeInteger(f.size) || f.size < 0) throw new InvalidArgumentError(`${field}.size`, `${field}.size must be a byte count, got ${w.size}`);
    if (!Number.isInteger(f.pid) || f.pid < 0 || f.pid > PID_MAX_LIMIT) throw new InvalidArgumentError(`${field}.pid`, `${field}.pid must be a process id (0..${PID_MAX_LIMIT})`);
    if (!/^[0-9a-f]{0,128}$/.test(f.buildId)) throw new InvalidArgumentError(`${field}.build_id`, `${field}.build_id must be lowercase hex`);
    if (f.usage.length > 256 || /[\x00-\x1f]/.test(f.usage)) throw new InvalidArgumentError(`${field}.usage`, `${field}.usage must be at most 256 printable characters`);
    if (!/^([0-9a-f]{64})?$/.test(f.sha256)) throw new InvalidArgumentError(`${field}.sha256`, `${field}.sha256 must be empty or 64 lowercase hex digits`);
    return f;
  });
  // One answer per path: a path named twice is a caller's mistake, not two questions.
  const seen = new Set<string>();
  for (const [i, f] of files.entries()) {
    if (seen.has(f.path)) throw new InvalidArgumentError(`files[${i}].path`, `files names ${f.path} more than once: name each file once`);
    seen.add(f.path);
  }
  return files;
}

export function mismatchFromWire(m: FileMismatch__Output): FileMismatch {
  return { file: m.file ? fileFromWire(m.file) : { path: '?', size: 0, buildId: '', sha256: '', pid: 0, usage: '' }, problem: m.problem };
}
