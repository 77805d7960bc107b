/**
 * A lab's CA and certificates, made at `lab up` in the lab's state folder (a tmpfs that
 * `lab down` unmounts and removes): one identity folder per service, as an operator would make
 * with `godwit certs` (lib/pki.ts), and the nats-server configuration that maps each identity
 * to its NATS user and permissions (lib/nats-auth.ts).
 *
 * Identity folders, under <dir>/pki/:
 *   controller, agent-<host>, nats, client-admin (godwit://client/lab-admin?role=admin),
 *   client-read (godwit://client/lab-read?role=read); the CA in ca/.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Identity } from '../lib/identity.js';
import { natsServerConfig } from '../lib/nats-auth.js';
import { createCa, issueCertificate } from '../lib/pki.js';
import { loadTls, tlsFilesIn, type TlsSecurity } from '../lib/tls.js';

export type LabIdentityName = 'controller' | 'nats' | 'client-admin' | 'client-read' | `agent-${string}`;

export interface LabPki {
  dir: string;
  tlsDir(name: LabIdentityName): string;
  security(name: LabIdentityName): TlsSecurity;
  /** Writes nats-server's configuration for this lab; returns its path. */
  writeNatsConfig(o: { host: string; port: number; storeDir: string }): string;
}

export async function makeLabPki(stateDir: string, hosts: string[], natsIps: string[]): Promise<LabPki> {
  const dir = join(stateDir, 'pki');
  const caDir = join(dir, 'ca');
  await createCa(caDir, { commonName: 'godwit lab CA', days: 30 });
  const tlsDir = (name: LabIdentityName) => join(dir, name);
  const identities: [LabIdentityName, Identity][] = [
    ['controller', { role: 'controller' }],
    ['client-admin', { role: 'client', name: 'lab-admin', access: 'admin' }],
    ['client-read', { role: 'client', name: 'lab-read', access: 'read' }],
    ...hosts.map((h): [LabIdentityName, Identity] => [`agent-${h}`, { role: 'agent', host: h }]),
  ];
  for (const [name, id] of identities) await issueCertificate(caDir, id, tlsDir(name), { days: 30 });
  await issueCertificate(caDir, { role: 'nats' }, tlsDir('nats'), { days: 30, ips: natsIps });
  return {
    dir,
    tlsDir,
    security: (name) => loadTls(tlsFilesIn(tlsDir(name))),
    writeNatsConfig(o) {
      const path = join(dir, 'nats.conf');
      writeFileSync(path, natsServerConfig({ ...o, tls: tlsFilesIn(tlsDir('nats')), users: identities.map(([, id]) => id) }), { mode: 0o600 });
      return path;
    },
  };
}
