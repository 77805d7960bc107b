/** Wire (proto) forms of preflight's tree facts (lib/workload-facts.ts). uint64s travel as decimal strings. */
import type { FileMismatch__Output } from '../proto/gen/godwit/v1/FileMismatch.js';
import type { InspectWorkloadResponse__Output } from '../proto/gen/godwit/v1/InspectWorkloadResponse.js';
import type { WorkloadFile, WorkloadFile__Output } from '../proto/gen/godwit/v1/WorkloadFile.js';
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

export function mismatchFromWire(m: FileMismatch__Output): FileMismatch {
  return { file: m.file ? fileFromWire(m.file) : { path: '?', size: 0, buildId: '', sha256: '', pid: 0, usage: '' }, problem: m.problem };
}
