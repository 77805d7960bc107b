/**
 * A fleet's CA and certificates in a temporary folder, made with the same code as
 * `godwit certs` (lib/pki.ts), plus the bad credentials the attack suite presents: a
 * self-signed certificate, one from another CA, an expired one.
 */
import { webcrypto } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { identityUri, type Identity } from '../../lib/identity.js';
import { createCa, issueCertificate, pemKey, writeSecret } from '../../lib/pki.js';
import { loadTls, tlsFilesIn, type TlsSecurity } from '../../lib/tls.js';

export interface FleetPki {
  dir: string;
  caDir: string;
  /** The identity folder (--tls-dir) of a name made by issue(). */
  tlsDir(name: string): string;
  security(name: string): TlsSecurity;
  issue(name: string, id: Identity, opts?: Parameters<typeof issueCertificate>[3]): Promise<TlsSecurity>;
  remove(): void;
}

export async function makeFleetPki(prefix = 'godwit-sec-pki-'): Promise<FleetPki> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  await createCa(join(dir, 'ca'));
  return pkiOver(join(dir, 'ca'), dir);
}

/** Issues from an existing CA (a lab's: `${lab.pki.dir}/ca`) into a scratch folder of its own. */
export function pkiOver(caDir: string, dir = mkdtempSync(join(tmpdir(), 'godwit-sec-ids-'))): FleetPki {
  const tlsDir = (name: string) => join(dir, 'ids', name);
  const security = (name: string) => loadTls(tlsFilesIn(tlsDir(name)));
  return {
    dir,
    caDir,
    tlsDir,
    security,
    async issue(name, id, opts) {
      await issueCertificate(caDir, id, tlsDir(name), opts);
      return security(name);
    },
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/**
 * Credentials no fleet member would accept: `self-signed` (its own CA, presented alone),
 * `other-ca` (a valid certificate from a CA the fleet does not trust) and `expired` (from the
 * fleet's CA, validity over). Each claims `id`.
 */
export async function badCredentials(pki: FleetPki, id: Identity): Promise<Record<'self-signed' | 'other-ca' | 'expired', TlsSecurity>> {
  const other = join(pki.dir, 'other-ca');
  await createCa(other, { commonName: 'not the fleet CA' });
  await issueCertificate(other, id, join(pki.dir, 'ids', 'other-ca'));
  const otherCa = loadTls(tlsFilesIn(join(pki.dir, 'ids', 'other-ca')));
  // Self-signed: a certificate that is its own issuer, claiming the identity.
  const selfDir = join(pki.dir, 'ids', 'self-signed');
  mkdirSync(selfDir, { recursive: true });
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as unknown as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: 'CN=self, O=godwit',
    keys,
    signingAlgorithm: alg,
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: identityUri(id) }])],
  });
  writeSecret(join(selfDir, 'tls.key'), pemKey((await webcrypto.subtle.exportKey('pkcs8', keys.privateKey as webcrypto.CryptoKey)) as ArrayBuffer));
  writeFileSync(join(selfDir, 'tls.crt'), cert.toString('pem'));
  writeFileSync(join(selfDir, 'ca.crt'), cert.toString('pem'));
  const selfIssued = loadTls(tlsFilesIn(selfDir));
  const day = 24 * 3600_000;
  const expired = await pki.issue('expired', id, { notBefore: new Date(Date.now() - 10 * day), notAfter: new Date(Date.now() - day) });
  return {
    'self-signed': selfIssued,
    'other-ca': otherCa,
    expired,
  };
}
