/**
 * The target's side of the image token (lib/migration-token.ts): a ReceiveImage stream is
 * accepted only from an agent that presents the controller's token for this migration, naming
 * that agent as the source and this host as the target. Checked when the first message names
 * the migration, before any file is touched.
 */
import { status } from '@grpc/grpc-js';
import { describeIdentity } from '../lib/identity.js';
import { IMAGE_TOKEN_METADATA, ImageTokenError, verifyImageToken } from '../lib/migration-token.js';
import { currentSecurity, peerIdentity } from '../lib/tls.js';
import type { Metadata } from '@grpc/grpc-js';

/** Returns the check for the stream's migration id; throws ImageTokenError when it fails. */
export function imagePermit(call: { metadata: Metadata } & Parameters<typeof peerIdentity>[0], host: string): (migrationId: string) => void {
  const security = currentSecurity();
  if (security.kind === 'insecure') return () => undefined; // --insecure: no identities to check
  const peer = peerIdentity(call);
  const token = call.metadata.get(IMAGE_TOKEN_METADATA)[0];
  return (migrationId) => {
    if (peer?.role !== 'agent') throw new ImageTokenError(status.PERMISSION_DENIED, `ReceiveImage for migration ${migrationId} refused: ${describeIdentity(peer)} is not an agent`);
    verifyImageToken(typeof token === 'string' ? token : undefined, security.ca, { migrationId, source: peer.host, target: host });
  };
}
