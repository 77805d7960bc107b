/** The security flags every godwit program takes, in one place (lib/tls.ts decides what they mean). */
import type { Command } from 'commander';
import { SECURITY_FLAG_HELP } from './tls.js';

export function withSecurityOptions(cmd: Command): Command {
  return cmd
    .option('--tls-dir <dir>', SECURITY_FLAG_HELP.tlsDir)
    .option('--cert <file>', SECURITY_FLAG_HELP.cert)
    .option('--key <file>', SECURITY_FLAG_HELP.key)
    .option('--ca <file>', SECURITY_FLAG_HELP.ca)
    .option('--insecure', SECURITY_FLAG_HELP.insecure);
}
