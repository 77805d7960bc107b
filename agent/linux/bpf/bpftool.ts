import type { Executor } from '../../../lib/exec.js';

/*
 * The commands the BPF lifecycle runs (bpftool, ip, tc, and a few file operations on bpffs),
 * with one timeout: they answer in milliseconds, and a hung one must not hold a migration forever.
 */

export const BPFTOOL_TIMEOUT_MS = 30_000;

export function run(exec: Executor, file: string, args: readonly string[]) {
  return exec(file, args, { timeoutMs: BPFTOOL_TIMEOUT_MS });
}

/** `bpftool -j ARGS`, parsed. */
export async function bpftoolJson<T>(exec: Executor, args: readonly string[]): Promise<T> {
  return JSON.parse((await run(exec, 'bpftool', ['-j', ...args])).stdout) as T;
}

/** Whether a path (a pin) exists. Through exec, like everything else the lifecycle touches. */
export async function pathExists(exec: Executor, path: string): Promise<boolean> {
  return (await exec('test', ['-e', path], { allowFailure: true, timeoutMs: BPFTOOL_TIMEOUT_MS })).exitCode === 0;
}

/** What `bpftool -j prog show` says of a program that the lifecycle uses. */
export interface ProgInfo {
  id: number;
  name?: string;
  tag?: string;
  map_ids?: number[];
}

export function pinnedProg(exec: Executor, pin: string): Promise<ProgInfo> {
  return bpftoolJson<ProgInfo>(exec, ['prog', 'show', 'pinned', pin]);
}
