/**
 * The one place gRPC and NATS credentials come from. A process chooses its security once at
 * start (useSecurity: from --tls-dir, or --insecure said out loud); lib/rpc.ts's clients and
 * servers and lib/bus.ts's connection take theirs from here, so every server and client added
 * later is mutual TLS without knowing it.
 *
 * Identity is the godwit URI in the certificate (lib/identity.ts), not the host name the peer
 * was dialled by: addresses of agents change, their host names do not. A client therefore checks
 * the server's role (an agent client wants an agent) instead of the name in the address.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { PeerCertificate } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { describeIdentity, identityOfSubjectAltName, type Identity, type Role } from './identity.js';

export interface TlsSecurity {
  kind: 'tls';
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  /** Who this process is, read from its own certificate. */
  identity: Identity;
}
export interface InsecureSecurity {
  kind: 'insecure';
}
export type Security = TlsSecurity | InsecureSecurity;

/** Plain TCP, no identities, no authorization: development only, and only when asked for by name. */
export const INSECURE: InsecureSecurity = { kind: 'insecure' };

/**
 * Channels are made with this target name instead of the dialled address: the certificate's
 * godwit URI is what is checked (checkServerIdentity below), and an IP as TLS server name is
 * not allowed by RFC 6066 (Node warns about it).
 */
const TARGET_NAME = 'godwit';

export class SecurityConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SecurityConfigError';
  }
}

/**
 * An identity folder's files (`godwit certs issue` writes them; lib/pki.ts). Here, not in
 * pki.ts: every process reads them, and the certificate library pki.ts loads took 1.3-1.6 s to
 * import on this loaded machine, too much for each agent's, controller's and CLI's start.
 */
export const CA_CERT = 'ca.crt';
export const TLS_CERT = 'tls.crt';
export const TLS_KEY = 'tls.key';

export interface TlsFiles {
  ca: string;
  cert: string;
  key: string;
}

/** The three files of an identity folder made by `godwit certs issue`. */
export function tlsFilesIn(dir: string): TlsFiles {
  return { ca: join(dir, CA_CERT), cert: join(dir, TLS_CERT), key: join(dir, TLS_KEY) };
}

/** Reads an identity's files; refuses a key others can read (as ssh does) and a certificate without a godwit URI. */
export function loadTls(files: TlsFiles): TlsSecurity {
  const read = (what: string, path: string) => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new SecurityConfigError(`cannot read the ${what} ${path}: ${(err as Error).message}`);
    }
  };
  const key = read('private key', files.key);
  if ((statSync(files.key).mode & 0o077) !== 0) throw new SecurityConfigError(`private key ${files.key} is readable by others: chmod 600 it`);
  const cert = read('certificate', files.cert);
  const ca = read('CA certificate', files.ca);
  const identity = identityOfSubjectAltName(new X509Certificate(cert).subjectAltName);
  if (!identity) throw new SecurityConfigError(`certificate ${files.cert} names no godwit identity (a URI like godwit://agent/<host>); issue it with \`godwit certs issue\``);
  return { kind: 'tls', ca, cert, key, identity };
}

let current: Security | undefined;

/** Sets this process's security; clients and servers made afterwards use it. */
export function useSecurity(s: Security): void {
  current = s;
}

/**
 * Runs `make` (which builds clients: credentials are taken when a channel is made) as another
 * identity, then restores this process's own. For tools and tests that act as two identities,
 * e.g. the lab's admin client that also calls an agent as the controller would.
 */
export function withSecurity<T>(s: Security, make: () => T): T {
  const prev = current;
  current = s;
  try {
    return make();
  } finally {
    current = prev;
  }
}

export function currentSecurity(): Security {
  if (!current) throw new SecurityConfigError('no security chosen for this process: give --tls-dir (or --cert/--key/--ca), or --insecure for development');
  return current;
}

/** What securityFromFlags logs through (a pino logger, or the CLI's stderr). */
export interface SecurityLog {
  info(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface SecurityFlags {
  tlsDir?: string;
  cert?: string;
  key?: string;
  ca?: string;
  insecure?: boolean;
}

/** Help texts of the flags every godwit program takes (SecurityFlags). */
export const SECURITY_FLAG_HELP = {
  tlsDir: 'folder with this identity\'s ca.crt, tls.crt, tls.key (`godwit certs issue`); env GODWIT_TLS_DIR',
  cert: 'this identity\'s certificate (instead of --tls-dir)',
  key: 'its private key, mode 0600 (instead of --tls-dir)',
  ca: 'the fleet\'s CA certificate (instead of --tls-dir)',
  insecure: 'DEVELOPMENT ONLY: plain TCP and NATS, no certificates, no authorization',
} as const;

/**
 * The security a program's flags ask for, chosen for the process. --insecure must be given by
 * name and is logged as loudly as the logger allows; giving nothing is an error, not a default.
 */
export function securityFromFlags(flags: SecurityFlags, log: SecurityLog): Security {
  const tlsDir = flags.tlsDir ?? process.env.GODWIT_TLS_DIR;
  const some = tlsDir !== undefined || flags.cert !== undefined || flags.key !== undefined || flags.ca !== undefined;
  if (flags.insecure) {
    if (some) throw new SecurityConfigError('--insecure and TLS flags together: choose one');
    log.error(
      { insecure: true },
      '!!! INSECURE: --insecure given: no TLS, no client certificates, no authorization. Anyone who reaches this process\'s ports can ' +
        'checkpoint, restore and run code as root on its hosts. Never use this outside a development machine. !!!',
    );
    useSecurity(INSECURE);
    return INSECURE;
  }
  let files: TlsFiles;
  if (tlsDir !== undefined && flags.cert === undefined && flags.key === undefined && flags.ca === undefined) files = tlsFilesIn(tlsDir);
  else if (flags.cert !== undefined && flags.key !== undefined && flags.ca !== undefined && tlsDir === undefined) files = { cert: flags.cert, key: flags.key, ca: flags.ca };
  else throw new SecurityConfigError('give --tls-dir, or all of --cert, --key and --ca (or --insecure for development)');
  const s = loadTls(files);
  log.info({ identity: describeIdentity(s.identity) }, 'mutual TLS');
  useSecurity(s);
  return s;
}

/** Client credentials for a channel to a server of role `expect` (an agent client refuses a controller's certificate). */
export function channelCredentials(expect: Role, s: Security = currentSecurity()): grpc.ChannelCredentials {
  if (s.kind === 'insecure') return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(s.ca, s.key, s.cert, {
    checkServerIdentity: (_host: string, cert: PeerCertificate) => {
      const id = identityOfSubjectAltName(cert.subjectaltname);
      if (id?.role === expect) return undefined;
      return new Error(`server presented ${describeIdentity(id)}'s certificate; a ${expect} was expected`);
    },
  });
}

/** Channel options TLS needs (see TARGET_NAME); merged into every channel's options. */
export function channelSecurityOptions(s: Security = currentSecurity()): grpc.ChannelOptions {
  return s.kind === 'tls' ? { 'grpc.ssl_target_name_override': TARGET_NAME } : {};
}

/** Server credentials: the client must present a certificate from the fleet's CA (checked in the handshake). */
export function serverCredentials(s: Security = currentSecurity()): grpc.ServerCredentials {
  if (s.kind === 'insecure') return grpc.ServerCredentials.createInsecure();
  return grpc.ServerCredentials.createSsl(s.ca, [{ private_key: s.key, cert_chain: s.cert }], true);
}

/** The godwit identity of a call's peer, from the certificate it presented; undefined on a plain connection. */
export function peerIdentity(call: { getAuthContext(): { sslPeerCertificate?: PeerCertificate } | null }): Identity | undefined {
  return identityOfSubjectAltName(call.getAuthContext()?.sslPeerCertificate?.subjectaltname);
}

/**
 * TLS options for a NATS connection (nats.js passes them to tls.connect), or none on the
 * insecure path. As for gRPC, the server is checked by the godwit identity in its certificate
 * (godwit://nats), not by the name it was dialled by.
 */
export function natsTlsOptions(s: Security = currentSecurity()): { ca: string; cert: string; key: string; checkServerIdentity: (host: string, cert: PeerCertificate) => Error | undefined } | undefined {
  if (s.kind === 'insecure') return undefined;
  return {
    ca: s.ca.toString(),
    cert: s.cert.toString(),
    key: s.key.toString(),
    checkServerIdentity: (_host, cert) => {
      const id = identityOfSubjectAltName(cert.subjectaltname);
      return id?.role === 'nats' ? undefined : new Error(`NATS server presented ${describeIdentity(id)}'s certificate; godwit://nats was expected`);
    },
  };
}
