/**
 * A fleet's small certificate authority: `godwit certs init` makes it, `godwit certs issue`
 * signs one certificate per controller, agent host, client and NATS server. Certificates are
 * built by @peculiar/x509 over Node's WebCrypto (ECDSA P-256, SHA-256): no ASN.1 written here.
 *
 * Layout (what every godwit process's --tls-dir points at):
 *   <dir>/ca.crt   the fleet's CA certificate (the only one trusted)
 *   <dir>/tls.crt  this identity's certificate
 *   <dir>/tls.key  its private key, mode 0600
 * The CA's own folder holds ca.crt and ca.key (0600); keep it off the fleet's hosts.
 */
import { webcrypto } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { describeIdentity, identityUri, type Identity } from './identity.js';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

import { CA_CERT, TLS_CERT, TLS_KEY } from './tls.js';

export { CA_CERT, TLS_CERT, TLS_KEY };
export const CA_KEY = 'ca.key';

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 24 * 3600_000;
/** Certificates start a few minutes in the past: hosts' clocks differ a little. */
const CLOCK_SKEW_MS = 5 * 60_000;

export class PkiError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PkiError';
  }
}

export interface CaOptions {
  commonName?: string;
  days?: number;
}

export interface IssueOptions {
  days?: number;
  /** IP addresses and DNS names the certificate's holder serves on (the NATS server needs them: NATS clients check the name). */
  ips?: string[];
  dnsNames?: string[];
  /** Explicit validity (tests make expired certificates with these). */
  notBefore?: Date;
  notAfter?: Date;
}

/** Writes a file readable by its owner only: keys never sit world-readable, not even briefly. */
export function writeSecret(path: string, text: string): void {
  writeFileSync(path, text, { mode: 0o600 });
  chmodSync(path, 0o600); // the file may have existed with wider bits
}

/** A PKCS#8 private key as PEM (64-character lines, as OpenSSL writes it). */
export function pemKey(der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
  return `-----BEGIN PRIVATE KEY-----\n${b64}\n-----END PRIVATE KEY-----\n`;
}

function derOfPem(pem: string): Buffer {
  return Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
}

async function newKeys(): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as unknown as CryptoKeyPair;
}

/** Makes a CA in `dir` (ca.crt, ca.key). Refuses to overwrite one: its certificates would all die. */
export async function createCa(dir: string, opts: CaOptions = {}): Promise<void> {
  if (existsSync(join(dir, CA_KEY))) throw new PkiError(`${join(dir, CA_KEY)} exists: a CA is already there (remove it first to start a new fleet)`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const keys = await newKeys();
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: `CN=${opts.commonName ?? 'godwit fleet CA'}, O=godwit`,
    notBefore: new Date(now - CLOCK_SKEW_MS),
    notAfter: new Date(now + (opts.days ?? 3650) * DAY_MS),
    keys,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  writeSecret(join(dir, CA_KEY), pemKey((await webcrypto.subtle.exportKey('pkcs8', keys.privateKey as webcrypto.CryptoKey)) as ArrayBuffer));
  writeFileSync(join(dir, CA_CERT), cert.toString('pem') + '\n', { mode: 0o644 });
}

/**
 * Signs a certificate for `id` with the CA in `caDir` and writes ca.crt, tls.crt and tls.key to
 * `outDir`: everything one process needs for --tls-dir.
 */
export async function issueCertificate(caDir: string, id: Identity, outDir: string, opts: IssueOptions = {}): Promise<void> {
  const caCert = new x509.X509Certificate(readFileSync(join(caDir, CA_CERT), 'utf8'));
  let caKey: CryptoKey;
  try {
    caKey = (await webcrypto.subtle.importKey('pkcs8', derOfPem(readFileSync(join(caDir, CA_KEY), 'utf8')), ALG, false, ['sign'])) as unknown as CryptoKey;
  } catch (err) {
    throw new PkiError(`cannot read the CA key in ${caDir}: ${(err as Error).message}`);
  }
  const keys = await newKeys();
  const now = Date.now();
  const names: x509.JsonGeneralName[] = [{ type: 'url', value: identityUri(id) }];
  for (const ip of opts.ips ?? []) names.push({ type: 'ip', value: ip });
  for (const dns of opts.dnsNames ?? []) names.push({ type: 'dns', value: dns });
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: `CN=${describeIdentity(id).replace(/[,=+<>#;"\\]/g, ' ')}, O=godwit`,
    issuer: caCert.subject,
    notBefore: opts.notBefore ?? new Date(now - CLOCK_SKEW_MS),
    notAfter: opts.notAfter ?? new Date(now + (opts.days ?? 365) * DAY_MS),
    signingKey: caKey,
    publicKey: keys.publicKey,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
      // Every identity is both: agents serve the agent API and call peers' ReceiveImage.
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension(names),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
    ],
  });
  mkdirSync(outDir, { recursive: true, mode: 0o700 });
  writeSecret(join(outDir, TLS_KEY), pemKey((await webcrypto.subtle.exportKey('pkcs8', keys.privateKey as webcrypto.CryptoKey)) as ArrayBuffer));
  writeFileSync(join(outDir, TLS_CERT), cert.toString('pem') + '\n', { mode: 0o644 });
  writeFileSync(join(outDir, CA_CERT), caCert.toString('pem') + '\n', { mode: 0o644 });
}

function randomSerial(): string {
  const b = webcrypto.getRandomValues(new Uint8Array(16));
  b[0] = b[0]! & 0x7f; // a positive INTEGER
  return Buffer.from(b).toString('hex');
}
