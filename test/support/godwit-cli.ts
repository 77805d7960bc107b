/** Runs the operator's CLI (dist/controller/cli.js) against a lab's controller, as a user would. */
import { join } from 'node:path';
import { execCommand, type ExecResult } from '../../lib/exec.js';
import { REPO_ROOT } from '../../lib/rpc.js';
import type { Lab } from '../../lab/lab.js';

/** The CLI's security flags for a lab: its admin client's identity folder (or --insecure for an insecure lab). */
export function labCliSecurity(lab: Lab, who: 'client-admin' | 'client-read' = 'client-admin'): string[] {
  return lab.pki ? ['--tls-dir', lab.pki.tlsDir(who)] : ['--insecure'];
}

export function godwitCli(lab: Lab, args: readonly string[], opts: { allowFailure?: boolean } = {}): Promise<ExecResult> {
  return execCommand(process.execPath, [join(REPO_ROOT, 'dist', 'controller', 'cli.js'), '--controller', lab.controllerAddress, ...labCliSecurity(lab), ...args], {
    allowFailure: opts.allowFailure,
    timeoutMs: 120_000,
  });
}
