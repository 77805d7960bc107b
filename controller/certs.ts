/**
 * `godwit certs`: the fleet's CA and its certificates (lib/pki.ts does the work).
 *
 *   godwit certs init  --ca-dir DIR [--days N]
 *   godwit certs issue --ca-dir DIR --out DIR --role controller|agent|client|nats
 *                      [--host H] [--name N --access admin|read] [--ip A]... [--dns NAME]... [--days N]
 *
 * `issue` writes ca.crt, tls.crt and tls.key (0600) into --out: the folder a process's --tls-dir
 * points at. No key is ever printed.
 */
import { Command, InvalidArgumentError } from 'commander';
import type { ClientAccess, Identity } from '../lib/identity.js';

const collect = (v: string, acc: string[]) => [...acc, v];
const days = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('a whole number of days, at least 1');
  return n;
};

/** The identity the issue flags name; an error saying what is missing otherwise. */
export function identityFromFlags(o: { role: string; host?: string; name?: string; access?: string }): Identity {
  switch (o.role) {
    case 'controller':
      return { role: 'controller' };
    case 'nats':
      return { role: 'nats' };
    case 'agent':
      if (!o.host) throw new InvalidArgumentError('--role agent needs --host');
      return { role: 'agent', host: o.host };
    case 'client':
      if (!o.name) throw new InvalidArgumentError('--role client needs --name');
      if (o.access !== 'admin' && o.access !== 'read') throw new InvalidArgumentError('--role client needs --access admin or read');
      return { role: 'client', name: o.name, access: o.access as ClientAccess };
    default:
      throw new InvalidArgumentError(`--role ${o.role}: want controller, agent, client or nats`);
  }
}

export function certsCommand(): Command {
  const certs = new Command('certs').description('the fleet\'s certificate authority and certificates');
  certs
    .command('init')
    .description('make a new CA (ca.crt, ca.key) in --ca-dir')
    .requiredOption('--ca-dir <dir>', 'where the CA lives (keep it off the fleet\'s hosts)')
    .option('--days <n>', 'validity', days, 3650)
    .action(async (o: { caDir: string; days: number }) => {
      const { createCa } = await import('../lib/pki.js'); // the certificate library loads only for `certs`
      await createCa(o.caDir, { days: o.days });
      process.stdout.write(`CA written to ${o.caDir} (ca.crt; ca.key is 0600)\n`);
    });
  certs
    .command('issue')
    .description('sign a certificate for one identity; writes ca.crt, tls.crt, tls.key to --out')
    .requiredOption('--ca-dir <dir>', 'the CA made by `certs init`')
    .requiredOption('--out <dir>', 'the identity\'s folder (give it to the process as --tls-dir)')
    .requiredOption('--role <role>', 'controller | agent | client | nats')
    .option('--host <name>', 'the agent\'s host name (--role agent)')
    .option('--name <name>', 'the client\'s name (--role client)')
    .option('--access <level>', 'admin | read (--role client): read may only Get/List/Watch')
    .option('--ip <address>', 'an IP address the holder serves on (NATS server: required by NATS clients)', collect, [])
    .option('--dns <name>', 'a DNS name the holder serves on', collect, [])
    .option('--days <n>', 'validity', days, 365)
    .action(async (o: { caDir: string; out: string; role: string; host?: string; name?: string; access?: string; ip: string[]; dns: string[]; days: number }) => {
      const id = identityFromFlags(o);
      const { issueCertificate } = await import('../lib/pki.js');
      await issueCertificate(o.caDir, id, o.out, { days: o.days, ips: o.ip, dnsNames: o.dns });
      process.stdout.write(`certificate for ${JSON.stringify(id)} written to ${o.out} (tls.key is 0600)\n`);
    });
  return certs;
}
