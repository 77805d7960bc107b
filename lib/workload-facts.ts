/**
 * What an agent reads about a workload's process tree for preflight, beyond its TCP/UDP sockets
 * (lib/workload-sockets.ts): shared by the agent (agent/linux/tree-facts.ts, tree-files.ts) and
 * the controller, which judges them (controller/preflight-tree.ts, preflight-files.ts).
 */
export interface TreeProcess {
  /** Host PID. */
  pid: number;
  /** PID inside its own PID namespace (1: the namespace's first process). */
  nsPid: number;
  uid: number;
  /** The uid's name on the source host, '' if it has none. */
  user: string;
  command: string;
}

export interface SysvShmAttachment {
  pid: number;
  shmid: number;
  bytes: number;
}

/** A connected unix socket of the tree whose peer no process of the tree holds. */
export interface OutsideUnixSocket {
  pid: number;
  fd: number;
  /** The socket's or its peer's bound path (abstract names start with @), '' if neither has one. */
  path: string;
  /** 0 when no process holds the peer. */
  peerPid: number;
  peerCommand: string;
}

/** A regular file the tree has open or mapped. */
export interface WorkloadFile {
  path: string;
  size: number;
  /** Executables and shared objects (mapped executable): their ELF build-id (hex), if they have one. */
  buildId: string;
  /** Executables and shared objects without a build-id: the SHA-256 of their content. */
  sha256: string;
  pid: number;
  /** "exe", "mapped", "fd 5". */
  usage: string;
}

export interface TreeFacts {
  tree: TreeProcess[];
  sharesHostIpcNamespace: boolean;
  sysvShm: SysvShmAttachment[];
  outsideUnixSockets: OutsideUnixSocket[];
  files: WorkloadFile[];
}

export interface FileMismatch {
  file: WorkloadFile;
  /** "missing", "size 120 here", "build-id 3fa1... here", ... */
  problem: string;
}

/** True when the file's identity (not only its size) must match: executables and shared objects. */
export function hasIdentity(f: WorkloadFile): boolean {
  return f.buildId !== '' || f.sha256 !== '';
}
