/**
 * Who a peer is in a godwit fleet, as its certificate says: one URI in the certificate's subject
 * alternative names. The CA (lib/pki.ts) writes it; TLS (lib/tls.ts) and authorization
 * (lib/authz.ts) read it back. Nothing else in the certificate is trusted for identity.
 *
 *   godwit://controller
 *   godwit://agent/<host>
 *   godwit://client/<name>?role=admin|read
 *   godwit://nats                    (the NATS server's own certificate)
 */
import { HOST_NAME } from './subjects.js';

export type ClientAccess = 'admin' | 'read';

export type Identity =
  | { role: 'controller' }
  | { role: 'agent'; host: string }
  | { role: 'client'; name: string; access: ClientAccess }
  | { role: 'nats' };

export type Role = Identity['role'];

/** A client name: the same safe alphabet as host names (it becomes a NATS user and a file name). */
export const CLIENT_NAME = HOST_NAME;

export class IdentityError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'IdentityError';
  }
}

export function identityUri(id: Identity): string {
  switch (id.role) {
    case 'controller':
      return 'godwit://controller';
    case 'nats':
      return 'godwit://nats';
    case 'agent':
      if (!HOST_NAME.test(id.host)) throw new IdentityError(`host "${id.host}" must match ${HOST_NAME}`);
      return `godwit://agent/${id.host}`;
    case 'client':
      if (!CLIENT_NAME.test(id.name)) throw new IdentityError(`client name "${id.name}" must match ${CLIENT_NAME}`);
      return `godwit://client/${id.name}?role=${id.access}`;
  }
}

/** The identity a godwit URI names, or undefined for anything else (strict: no extra parts). */
export function parseIdentityUri(uri: string): Identity | undefined {
  if (uri === 'godwit://controller') return { role: 'controller' };
  if (uri === 'godwit://nats') return { role: 'nats' };
  let m = /^godwit:\/\/agent\/([^/?#]+)$/.exec(uri);
  if (m && HOST_NAME.test(m[1]!)) return { role: 'agent', host: m[1]! };
  m = /^godwit:\/\/client\/([^/?#]+)\?role=(admin|read)$/.exec(uri);
  if (m && CLIENT_NAME.test(m[1]!)) return { role: 'client', name: m[1]!, access: m[2] as ClientAccess };
  return undefined;
}

/**
 * The godwit identity in a certificate's subjectAltName as Node prints it
 * ("URI:godwit://agent/a, IP Address:198.18.1.1"). Exactly one godwit URI is accepted: a
 * certificate naming two identities is nobody.
 */
export function identityOfSubjectAltName(san: string | undefined): Identity | undefined {
  if (!san) return undefined;
  const found = san
    .split(/,\s*/)
    .filter((part) => part.startsWith('URI:godwit://'))
    .map((part) => parseIdentityUri(part.slice('URI:'.length)));
  return found.length === 1 ? found[0] : undefined;
}

/** How logs and error messages name an identity. */
export function describeIdentity(id: Identity | undefined): string {
  if (!id) return 'an unidentified peer';
  switch (id.role) {
    case 'agent':
      return `agent ${id.host}`;
    case 'client':
      return `client ${id.name} (${id.access})`;
    default:
      return id.role;
  }
}
