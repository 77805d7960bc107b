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

/** Bytes as bpftool's `hex` arguments: ['c6', '12', ...]. */
export function toBpftoolHex(b: Buffer): string[] {
  return [...b].map((x) => x.toString(16).padStart(2, '0'));
}

/** `key hex c6 12 ...` / `value hex ...` argument lists for bpftool map commands. */
export function bpftoolHexArgs(keyword: 'key' | 'value', b: Buffer): string[] {
  return [keyword, 'hex', ...toBpftoolHex(b)];
}

/** Bytes as `bpftool -j map dump` prints them: ['0xc6', '0x12', ...] (plain 'c6' accepted too). */
export function fromBpftoolHex(bytes: readonly string[]): Buffer {
  return Buffer.from(
    bytes.map((x) => {
      if (!/^(0x)?[0-9a-f]{1,2}$/i.test(x)) throw new RangeError(`"${x}" is not a hex byte`);
      return Number.parseInt(x.replace(/^0x/i, ''), 16);
    }),
  );
}
