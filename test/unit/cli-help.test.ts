/** The CLI as operators meet it: a complete --help with the exit statuses, and exit 3 when no controller answers. */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { execCommand } from '../../lib/exec.js';
import { REPO_ROOT } from '../../lib/rpc.js';

const cli = (args: string[]) => execCommand(process.execPath, [join(REPO_ROOT, 'dist', 'controller', 'cli.js'), ...args], { allowFailure: true, timeoutMs: 60_000 });

describe('godwit CLI', () => {
  it('--help describes every command and lists the exit statuses', async () => {
    const r = await cli(['--help']);
    expect(r.exitCode).toBe(0);
    for (const command of ['hosts', 'run', 'workloads', 'logs', 'migrate', 'get', 'list', 'watch', 'service']) expect(r.stdout).toMatch(new RegExp(`^  ${command}\\b.*\\S{3,}`, 'm'));
    expect(r.stdout).toMatch(/Exit status:\n  0 .*\n  1 .*\n  2 .*\n  3 /);
  });

  it('exits 3 when the controller cannot be reached', async () => {
    const r = await cli(['--controller', '127.0.0.1:1', '--insecure', '--json', 'hosts']);
    expect(r.exitCode).toBe(3);
    expect(r.stderr).toMatch(/^UNAVAILABLE: /m);
  });
});
