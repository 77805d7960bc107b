/**
 * Preflight on what CRIU will meet in the process tree, and on the two hosts' CRIU and CPU: pure
 * decisions over what the source's agent read (lib/workload-facts.ts) and both hosts' probes.
 * Each refusal names the process and the fix. Files are preflight-files.ts; sockets bound to an
 * address that stays behind are preflight.ts with lib/workload-sockets.ts.
 */
import { WorkloadCannotMoveError } from '../lib/errors.js';
import type { TreeFacts, TreeProcess } from '../lib/workload-facts.js';

export interface HostCapabilities {
  host: string;
  capabilities: readonly string[];
  cpuFeatures: readonly string[];
  criuVersion: string;
}

/** The agents run as root; CRIU needs this to read and set the rlimits of another user's process. */
const OTHER_USER_CAPABILITY = 'CAP_SYS_RESOURCE';
const NAMED = 3;

/** The first reason CRIU could not move this tree between these hosts, or undefined. */
export function treeRefusal(facts: TreeFacts, source: HostCapabilities, target: HostCapabilities): WorkloadCannotMoveError | undefined {
  return (
    namespaceInitRefusal(facts, source.host) ??
    otherUserRefusal(facts, source, target) ??
    sysvShmRefusal(facts, source.host) ??
    unixSocketRefusal(facts, source.host) ??
    cpuRefusal(source, target) ??
    criuVersionRefusal(source, target)
  );
}

const who = (p: TreeProcess) => `process ${p.pid} (${p.command})`;
const userOf = (p: TreeProcess) => `${p.user || 'uid'} (uid ${p.uid})`;

function namespaceInitRefusal(facts: TreeFacts, host: string): WorkloadCannotMoveError | undefined {
  const init = facts.tree.find((p) => p.nsPid === 1 && p.uid !== 0);
  if (!init) return undefined;
  return new WorkloadCannotMoveError(
    'namespace-init',
    `${who(init)} on host "${host}" is the first process of its PID namespace and runs as ${userOf(init)}: CRIU cannot dump a PID namespace ` +
      `whose first process is not root ("can't dump unprivileged task whose /proc doesn't belong to it"); start the workload with godwit run ` +
      `(a root init as PID 1, the command as --user ${init.user || init.uid})`,
  );
}

function otherUserRefusal(facts: TreeFacts, source: HostCapabilities, target: HostCapabilities): WorkloadCannotMoveError | undefined {
  const others = facts.tree.filter((p) => p.uid !== 0);
  if (others.length === 0) return undefined;
  const lacking = [source, target].filter((h) => !h.capabilities.includes(OTHER_USER_CAPABILITY));
  if (lacking.length === 0) return undefined;
  const named = others.slice(0, NAMED).map((p) => `${who(p)} as ${userOf(p)}`).join(', ');
  const more = others.length > NAMED ? ` and ${others.length - NAMED} more` : '';
  return new WorkloadCannotMoveError(
    'capability',
    `${named}${more} on host "${source.host}" run${others.length === 1 ? 's' : ''} as another user than the agent: CRIU needs ${OTHER_USER_CAPABILITY} ` +
      `to read and restore such a process's rlimits ("Can't get rlimit 0: Operation not permitted"), and the agent on ` +
      `${lacking.map((h) => `host "${h.host}"`).join(' and ')} lack${lacking.length === 1 ? 's' : ''} it; run the workload's processes as root ` +
      `(nginx: "user root;"), or give the agents ${OTHER_USER_CAPABILITY}`,
  );
}

function sysvShmRefusal(facts: TreeFacts, host: string): WorkloadCannotMoveError | undefined {
  if (!facts.sharesHostIpcNamespace || facts.sysvShm.length === 0) return undefined;
  const s = facts.sysvShm[0];
  const p = facts.tree.find((x) => x.pid === s.pid);
  return new WorkloadCannotMoveError(
    'sysv-shm',
    `${p ? who(p) : `process ${s.pid}`} on host "${host}" maps SysV shared memory (shmid ${s.shmid}, ${s.bytes} bytes` +
      `${facts.sysvShm.length > 1 ? `, and ${facts.sysvShm.length - 1} more mapping(s)` : ''}) of the host's IPC namespace: CRIU dumps SysV ` +
      `shared memory only together with an IPC namespace of the workload's own ("SysVIPC shmem map ... doesn't live in IPC ns"); ` +
      `start the workload with godwit run (its own IPC namespace) or under unshare --ipc`,
  );
}

function unixSocketRefusal(facts: TreeFacts, host: string): WorkloadCannotMoveError | undefined {
  if (facts.outsideUnixSockets.length === 0) return undefined;
  const u = facts.outsideUnixSockets[0];
  const p = facts.tree.find((x) => x.pid === u.pid);
  const peer = u.peerPid ? `process ${u.peerPid} (${u.peerCommand}), outside the workload` : 'no process of the workload';
  const n = facts.outsideUnixSockets.length;
  return new WorkloadCannotMoveError(
    'unix-socket',
    `${p ? who(p) : `process ${u.pid}`} on host "${host}" holds a unix socket (fd ${u.fd}${u.path ? `, ${u.path}` : ''}) connected to ${peer}` +
      `${n > 1 ? ` (and ${n - 1} more such socket(s))` : ''}: CRIU cannot dump a connection whose other end is not in the tree it dumps, ` +
      `and the peer would not move anyway; close that connection before moving, or run its peer inside the workload`,
  );
}

function cpuRefusal(source: HostCapabilities, target: HostCapabilities): WorkloadCannotMoveError | undefined {
  // An agent too old to report its CPU says nothing; nothing to compare.
  if (source.cpuFeatures.length === 0 || target.cpuFeatures.length === 0) return undefined;
  const have = new Set(target.cpuFeatures);
  const missing = source.cpuFeatures.filter((f) => !have.has(f));
  if (missing.length === 0) return undefined;
  return new WorkloadCannotMoveError(
    'cpu-features',
    `target host "${target.host}" lacks CPU feature(s) that source host "${source.host}" has: ${missing.slice(0, 12).join(' ')}` +
      `${missing.length > 12 ? ` (and ${missing.length - 12} more)` : ''}; code that chose them at start would die of SIGILL after the restore ` +
      '(criu cpuinfo check); move it to a host with the same CPU features, or start it on hosts pinned to a common baseline',
  );
}

function criuVersionRefusal(source: HostCapabilities, target: HostCapabilities): WorkloadCannotMoveError | undefined {
  const s = versionParts(source.criuVersion);
  const t = versionParts(target.criuVersion);
  if (!s || !t || compareVersions(t, s) >= 0) return undefined;
  return new WorkloadCannotMoveError(
    'criu-version',
    `target host "${target.host}" has CRIU ${target.criuVersion}, older than source host "${source.host}"'s ${source.criuVersion}: ` +
      'an older CRIU may not read a newer one\'s image; install the same CRIU on both (scripts/install-criu.sh)',
  );
}

function versionParts(v: string): number[] | undefined {
  const m = /^(\d+)(?:\.(\d+))?(?:\.(\d+))?/.exec(v.trim());
  return m ? [Number(m[1]), Number(m[2] ?? 0), Number(m[3] ?? 0)] : undefined;
}

function compareVersions(a: number[], b: number[]): number {
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return 0;
}
