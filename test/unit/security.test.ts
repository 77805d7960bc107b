/**
 * The security building blocks on their own: certificates from `godwit certs` (the real CLI),
 * the identity in them, the authorization table, and the image token's claims.
 */
import { mkdtempSync, rmSync, statSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { status } from '@grpc/grpc-js';
import { authorize, METHOD_CALLERS } from '../../lib/authz.js';
import { execCommand } from '../../lib/exec.js';
import { identityOfSubjectAltName, identityUri, parseIdentityUri } from '../../lib/identity.js';
import { signImageToken, verifyImageToken } from '../../lib/migration-token.js';
import { REPO_ROOT } from '../../lib/rpc.js';
import { AgentService, ControllerService, SteeringService } from '../../lib/rpc.js';
import { loadTls, tlsFilesIn, type Security } from '../../lib/tls.js';

const dir = mkdtempSync(join(tmpdir(), 'godwit-sec-unit-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const TLS: Security = { kind: 'tls', ca: Buffer.alloc(0), cert: Buffer.alloc(0), key: Buffer.alloc(0), identity: { role: 'controller' } };

describe('godwit certs', () => {
  it('init makes a CA, issue a certificate per identity with its URI; keys are 0600; a second init is refused', async () => {
    const ca = join(dir, 'ca');
    const node = (...a: string[]) => execCommand(process.execPath, [join(REPO_ROOT, 'dist', 'controller', 'cli.js'), ...a], { allowFailure: true });
    expect((await node('certs', 'init', '--ca-dir', ca)).exitCode).toBe(0);
    expect(statSync(join(ca, 'ca.key')).mode & 0o777).toBe(0o600);
    expect((await node('certs', 'init', '--ca-dir', ca)).exitCode).not.toBe(0);
    expect((await node('certs', 'issue', '--ca-dir', ca, '--role', 'agent', '--host', 'web-1', '--out', join(dir, 'web-1'))).exitCode).toBe(0);
    expect((await node('certs', 'issue', '--ca-dir', ca, '--role', 'client', '--name', 'ops', '--access', 'read', '--out', join(dir, 'ops'))).exitCode).toBe(0);
    expect((await node('certs', 'issue', '--ca-dir', ca, '--role', 'agent', '--host', '../etc', '--out', join(dir, 'bad'))).exitCode).not.toBe(0);
    expect((await node('certs', 'issue', '--ca-dir', ca, '--role', 'client', '--name', 'x', '--out', join(dir, 'bad'))).exitCode).not.toBe(0);
    const agent = loadTls(tlsFilesIn(join(dir, 'web-1')));
    expect(agent.identity).toEqual({ role: 'agent', host: 'web-1' });
    expect(statSync(join(dir, 'web-1', 'tls.key')).mode & 0o777).toBe(0o600);
    const cert = new X509Certificate(agent.cert);
    expect(cert.checkIssued(new X509Certificate(agent.ca))).toBe(true);
    expect(loadTls(tlsFilesIn(join(dir, 'ops'))).identity).toEqual({ role: 'client', name: 'ops', access: 'read' });
    // A key others can read is refused, as ssh refuses one.
    chmodSync(join(dir, 'ops', 'tls.key'), 0o644);
    expect(() => loadTls(tlsFilesIn(join(dir, 'ops')))).toThrow(/readable by others/);
  });

  it('identity URIs: strict both ways', () => {
    for (const id of [{ role: 'controller' }, { role: 'agent', host: 'a-1' }, { role: 'client', name: 'ops', access: 'admin' }] as const) {
      expect(parseIdentityUri(identityUri(id))).toEqual(id);
    }
    for (const bad of ['godwit://agent/../a', 'godwit://agent/a/b', 'godwit://client/ops', 'godwit://client/ops?role=root', 'godwit://controllerX', 'https://controller']) {
      expect(parseIdentityUri(bad), bad).toBeUndefined();
    }
    // Two godwit identities in one certificate is nobody.
    expect(identityOfSubjectAltName('URI:godwit://controller, URI:godwit://agent/a')).toBeUndefined();
    expect(identityOfSubjectAltName('IP Address:1.2.3.4, URI:godwit://agent/a')).toEqual({ role: 'agent', host: 'a' });
  });
});

describe('the authorization table', () => {
  const paths = (svc: Record<string, { path: string }>) => Object.values(svc).map((m) => m.path);
  const all = [...paths(AgentService as never), ...paths(ControllerService as never), ...paths(SteeringService as never)];

  it('lists every method godwit serves today', () => {
    for (const p of all) expect(METHOD_CALLERS[p], p).toBeDefined();
  });

  it('a method not in the table is refused for everyone (default deny)', () => {
    for (const peer of [{ role: 'controller' }, { role: 'client', name: 'ops', access: 'admin' }] as const) {
      const d = authorize('/godwit.v1.Controller/SomethingNew', peer, TLS);
      expect(d.ok).toBe(false);
      expect(!d.ok && d.code).toBe(status.PERMISSION_DENIED);
    }
  });

  it('the read-only client reaches Get/List/Watch methods only; agents only ReceiveImage; no identity is UNAUTHENTICATED', () => {
    const read = { role: 'client', name: 'g', access: 'read' } as const;
    for (const p of Object.keys(METHOD_CALLERS)) {
      const method = p.split('/').pop()!;
      if (authorize(p, read, TLS).ok && !p.startsWith('/grpc.')) expect(method, p).toMatch(/^(Get|List|Watch)/);
      if (authorize(p, { role: 'agent', host: 'a' }, TLS).ok && !p.startsWith('/grpc.')) expect(p).toBe('/godwit.v1.Agent/ReceiveImage');
    }
    const d = authorize('/godwit.v1.Controller/ListHosts', undefined, TLS);
    expect(!d.ok && d.code).toBe(status.UNAUTHENTICATED);
    expect(authorize('/godwit.v1.Agent/Restore', undefined, { kind: 'insecure' }).ok).toBe(true);
  });
});

describe('the image token', () => {
  it('binds migration, source, target and time', async () => {
    const { makeFleetPki } = await import('../support/fleet-pki.js');
    const pki = await makeFleetPki();
    try {
      const ctl = await pki.issue('controller', { role: 'controller' });
      const now = Date.now();
      const t = signImageToken(ctl, { migrationId: 'm1', source: 'a', target: 'b' }, 60_000, now);
      expect(verifyImageToken(t, ctl.ca, { migrationId: 'm1', source: 'a', target: 'b' }, now).migrationId).toBe('m1');
      expect(() => verifyImageToken(t, ctl.ca, { migrationId: 'm1', source: 'a', target: 'b' }, now + 61_000)).toThrow(/expired/);
      expect(() => verifyImageToken(t, ctl.ca, { migrationId: 'm2', source: 'a', target: 'b' }, now)).toThrow(/for migration m1/);
      expect(() => verifyImageToken(t.slice(0, -4) + 'AAAA', ctl.ca, { migrationId: 'm1', source: 'a', target: 'b' }, now)).toThrow();
      expect(() => verifyImageToken(undefined, ctl.ca, { migrationId: 'm1', source: 'a', target: 'b' })).toThrow(/no image token/);
    } finally {
      pki.remove();
    }
  });
});
