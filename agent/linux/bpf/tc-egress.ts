import type { Executor } from '../../../lib/exec.js';
import { run } from './bpftool.js';

/*
 * A pinned program on an interface's TC egress hook (clsact + a direct-action cls_bpf filter):
 * where XDP cannot work, on packets leaving the host (steering's reverse NAT). This kernel has
 * cls_bpf and clsact but not act_bpf (FIELD-NOTES), hence direct-action. `tc` must run in the
 * interface's network namespace through nsenter, not `ip netns exec` (whose own mount namespace
 * hides the bpffs pins).
 *
 * Each program has its own filter preference (`pref`): attaching again replaces it in place.
 */

/** The filter's handle; one filter per pref. */
const HANDLE = '1';

export interface TcEgressFilter {
  iface: string;
  /** Filter preference, one per program (e.g. steering's reverse NAT). */
  pref: number;
}

/** Attaches (or replaces) the program pinned at progPin on iface's egress. */
export async function attachTcEgress(exec: Executor, f: TcEgressFilter, progPin: string): Promise<void> {
  // `replace` adds clsact when missing and leaves an existing one (with its filters) alone.
  await run(exec, 'tc', ['qdisc', 'replace', 'dev', f.iface, 'clsact']);
  await run(exec, 'tc', ['filter', 'replace', 'dev', f.iface, 'egress', 'pref', String(f.pref), 'handle', HANDLE, 'bpf', 'direct-action', 'object-pinned', progPin]);
}

/** The id of the program attached at this filter, or undefined. */
export async function tcEgressProgId(exec: Executor, f: TcEgressFilter): Promise<number | undefined> {
  const r = await exec('tc', ['-j', 'filter', 'show', 'dev', f.iface, 'egress', 'pref', String(f.pref)], { allowFailure: true });
  if (r.exitCode !== 0 || !r.stdout.trim()) return undefined;
  const filters = JSON.parse(r.stdout) as { options?: { prog?: { id: number } } }[];
  return filters.find((x) => x.options?.prog)?.options?.prog?.id;
}

/** Removes the filter; no error when it is not there (or the interface is gone). */
export async function detachTcEgress(exec: Executor, f: TcEgressFilter): Promise<void> {
  await exec('tc', ['filter', 'del', 'dev', f.iface, 'egress', 'pref', String(f.pref)], { allowFailure: true });
}
