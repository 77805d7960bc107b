import type { Executor } from '../../lib/exec.js';

/** Where `ip netns add NAME` keeps the namespace's handle. */
export function netnsPath(netnsName: string): string {
  return `/run/netns/${netnsName}`;
}

/**
 * An Executor whose commands run in network namespace `netnsName`, for driving a lab host from
 * a process in the root namespace (an agent started inside the namespace uses plain execCommand).
 *
 * `nsenter --net` rather than `ip netns exec`: the latter also makes a new mount namespace on
 * every call (FIELD-NOTES), which breaks CRIU and would hide bpffs mounts made inside it.
 */
export function nsExecutor(netnsName: string, exec: Executor): Executor {
  if (!/^[A-Za-z0-9_.-]+$/.test(netnsName)) throw new RangeError(`"${netnsName}" is not a network namespace name`);
  return (file, args, opts) => exec('nsenter', [`--net=${netnsPath(netnsName)}`, '--', file, ...args], opts);
}
