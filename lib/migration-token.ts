/**
 * The controller's permission for one image transfer: "agent <src> may send migration <id>'s
 * image to agent <dst> until <exp>". The controller signs it with its own certificate's key and
 * puts it in the request that makes the source send (CheckpointRequest / SendImageRequest
 * image_token); the source presents it as call metadata of ReceiveImage; the target checks it
 * before it touches a file. A peer certificate alone is not enough: any agent holds one, and
 * without the token one compromised host could push images (code run as root at restore) to
 * every other.
 *
 * Format: v1.<claims>.<signature>.<controller certificate>, each base64url; the claims are
 * JSON. The controller's certificate travels with the token and must chain to the fleet's CA
 * and name godwit://controller, so a target needs nothing but its own CA to check it.
 */
import { X509Certificate, createPrivateKey, sign, verify } from 'node:crypto';
import { status } from '@grpc/grpc-js';
import { GodwitError } from './errors.js';
import { identityOfSubjectAltName } from './identity.js';
import { currentSecurity, type TlsSecurity } from './tls.js';

/** The ReceiveImage call metadata key that carries the token. */
export const IMAGE_TOKEN_METADATA = 'godwit-image-token';
/**
 * How long a token may be presented: it is checked when the stream opens (not for the whole
 * transfer), which is within seconds of the controller's request, even on a loaded host.
 */
export const IMAGE_TOKEN_TTL_MS = 2 * 60_000;

export interface ImageTokenClaims {
  v: 1;
  /** What the token permits: only image transfers today (a fencing token may share the format). */
  phase: 'transfer';
  migrationId: string;
  source: string;
  target: string;
  /** Expiry, ms since the epoch. */
  exp: number;
}

/** The token was missing, forged, expired, or for another migration or host. */
export class ImageTokenError extends GodwitError {
  constructor(readonly code: status, message: string) {
    super(message);
    this.name = 'ImageTokenError';
  }
}

const b64 = (b: Buffer | string) => Buffer.from(b).toString('base64url');

/** Signs a token with the controller's own key (its TLS identity). */
export function signImageToken(controller: TlsSecurity, c: Omit<ImageTokenClaims, 'v' | 'exp' | 'phase'>, ttlMs = IMAGE_TOKEN_TTL_MS, nowMs = Date.now()): string {
  if (controller.identity.role !== 'controller') throw new Error('only the controller signs image tokens');
  const claims: ImageTokenClaims = { v: 1, phase: 'transfer', ...c, exp: nowMs + ttlMs };
  const body = b64(JSON.stringify(claims));
  const signature = sign('sha256', Buffer.from(body), createPrivateKey(controller.key));
  return `v1.${body}.${b64(signature)}.${b64(new X509Certificate(controller.cert).raw)}`;
}

/** The token the controller puts in a request that makes `source` send to `target`; none on the insecure path. */
export function imageTokenFor(c: Omit<ImageTokenClaims, 'v' | 'exp' | 'phase'>): string {
  const s = currentSecurity();
  return s.kind === 'tls' ? signImageToken(s, c) : '';
}

export interface ImageTokenExpectation {
  migrationId: string;
  /** The host of the agent presenting it (from its certificate). */
  source: string;
  /** This host. */
  target: string;
}

/** Checks a token as the target agent; returns its claims or throws ImageTokenError. */
export function verifyImageToken(token: string | undefined, ca: Buffer, want: ImageTokenExpectation, nowMs = Date.now()): ImageTokenClaims {
  const refuse = (code: status, why: string): never => {
    throw new ImageTokenError(code, `ReceiveImage for migration ${want.migrationId} refused: ${why}`);
  };
  if (!token) return refuse(status.UNAUTHENTICATED, `no image token (the controller's permission, metadata "${IMAGE_TOKEN_METADATA}")`);
  const parts = token.split('.');
  if (parts.length !== 4 || parts[0] !== 'v1') return refuse(status.UNAUTHENTICATED, 'malformed image token');
  const [, body, sig, certDer] = parts as [string, string, string, string];
  let cert: X509Certificate;
  let caCert: X509Certificate;
  try {
    cert = new X509Certificate(Buffer.from(certDer, 'base64url'));
    caCert = new X509Certificate(ca);
  } catch {
    return refuse(status.UNAUTHENTICATED, 'the image token\'s certificate does not parse');
  }
  if (!cert.checkIssued(caCert) || !cert.verify(caCert.publicKey)) return refuse(status.UNAUTHENTICATED, 'the image token is signed by a certificate the fleet\'s CA did not issue');
  if (nowMs < Date.parse(cert.validFrom) || nowMs > Date.parse(cert.validTo)) return refuse(status.UNAUTHENTICATED, 'the image token\'s certificate is not valid now');
  if (identityOfSubjectAltName(cert.subjectAltName)?.role !== 'controller') return refuse(status.PERMISSION_DENIED, 'the image token is not signed by the controller');
  if (!verify('sha256', Buffer.from(body), cert.publicKey, Buffer.from(sig, 'base64url'))) return refuse(status.UNAUTHENTICATED, 'the image token\'s signature does not match (forged or altered)');
  let claims: ImageTokenClaims;
  try {
    claims = JSON.parse(Buffer.from(body, 'base64url').toString()) as ImageTokenClaims;
  } catch {
    return refuse(status.UNAUTHENTICATED, 'the image token\'s claims do not parse');
  }
  if (claims.v !== 1 || claims.phase !== 'transfer') return refuse(status.PERMISSION_DENIED, 'the image token is not for an image transfer');
  if (typeof claims.exp !== 'number' || nowMs > claims.exp) return refuse(status.PERMISSION_DENIED, 'the image token has expired');
  if (claims.migrationId !== want.migrationId) return refuse(status.PERMISSION_DENIED, `the image token is for migration ${claims.migrationId}`);
  if (claims.target !== want.target) return refuse(status.PERMISSION_DENIED, `the image token is for target host ${claims.target}, this is ${want.target}`);
  if (claims.source !== want.source) return refuse(status.PERMISSION_DENIED, `the image token is for source host ${claims.source}; agent ${want.source} presented it`);
  return claims;
}
