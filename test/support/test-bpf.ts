/**
 * Builds the BPF programs that only tests use (test/support/bpf/*.c) into a folder of the
 * caller's, with the same flags and include path as scripts/build-bpf.sh.
 */
import { arch } from 'node:os';
import { fileURLToPath } from 'node:url';
import { execCommand } from '../../lib/exec.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const MULTIARCH: Record<string, string> = { x64: 'x86_64', arm64: 'aarch64' };

/** Compiles test/support/bpf/<name>.c to <outDir>/<name>.o; returns the object's path. */
export async function buildTestBpf(name: string, outDir: string): Promise<string> {
  const out = `${outDir}/${name}.o`;
  await execCommand('clang', [
    '-O2', '-g', '-Wall', '-Werror', '-target', 'bpf',
    `-I/usr/include/${MULTIARCH[arch()] ?? arch()}-linux-gnu`, `-I${REPO}bpf`,
    '-c', `${REPO}test/support/bpf/${name}.c`, '-o', out,
  ], { timeoutMs: 60_000 });
  return out;
}
