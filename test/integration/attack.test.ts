/**
 * The attack suite: a real lab (controller, agents, nats-server, each with the certificate
 * `lab up` issued it), attacked with real certificates and real connections. Every attempt must
 * be refused, at the TLS handshake or with the status that names what is missing, and leave no
 * trace on any host; then a legitimate migration passes end to end with every byte checked.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { IMAGE_STREAM_FORMAT } from '../../agent/images.js';
import { migrateHop } from '../../lab/hop.js';
import { labUp, startLabWorkload, type Lab } from '../../lab/lab.js';
import { startTraffic, type TrafficHandle } from '../../lab/traffic.js';
import { Bus } from '../../lib/bus.js';
import type { Identity } from '../../lib/identity.js';
import { IMAGE_TOKEN_METADATA, signImageToken } from '../../lib/migration-token.js';
import { AgentService, ControllerService } from '../../lib/rpc.js';
import { MIGRATIONS_BUCKET } from '../../lib/subjects.js';
import { channelCredentials, channelSecurityOptions, INSECURE, type Security, type TlsSecurity } from '../../lib/tls.js';
import { badCredentials, pkiOver, type FleetPki } from '../support/fleet-pki.js';

const PORT = 7400;
const CONNECTIONS = 50;
const CALL_MS = 20_000;

type AnyClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

/** A raw client of a service with exactly the credentials given (not the process's). */
function rawClient(service: grpc.ServiceDefinition, address: string, creds: grpc.ChannelCredentials, opts: grpc.ChannelOptions = {}): AnyClient {
  const Ctor = grpc.makeGenericClientConstructor(service, 'attack');
  return new Ctor(address, creds, opts) as unknown as AnyClient;
}

function clientAs(service: grpc.ServiceDefinition, address: string, expect: 'agent' | 'controller', s: Security): AnyClient {
  return rawClient(service, address, channelCredentials(expect, s), channelSecurityOptions(s));
}

/** One unary call; resolves with the error (or undefined when it succeeded). */
function callError(client: AnyClient, method: string, req: object, md = new grpc.Metadata()): Promise<grpc.ServiceError | undefined> {
  return new Promise((resolve) => {
    client[method]!(req, md, { deadline: Date.now() + CALL_MS }, (err: grpc.ServiceError | null) => resolve(err ?? undefined));
  });
}

/** A ReceiveImage stream of the given messages; resolves with the error (or undefined). */
function receiveImageError(client: AnyClient, chunks: object[], md = new grpc.Metadata()): Promise<grpc.ServiceError | undefined> {
  return new Promise((resolve) => {
    const call = client.ReceiveImage!(md, { deadline: Date.now() + CALL_MS }, (err: grpc.ServiceError | null) => resolve(err ?? undefined)) as grpc.ClientWritableStream<object>;
    call.on('error', () => undefined);
    for (const c of chunks) call.write(c);
    call.end();
  });
}

const HANDSHAKE_REFUSED = [grpc.status.UNAVAILABLE, grpc.status.UNAUTHENTICATED];

describe('attack suite: every attempt is refused and leaves no trace; the real migration still passes', () => {
  let lab: Lab;
  let pki: FleetPki;
  let controller: TlsSecurity;
  let agentB: TlsSecurity;
  let admin: TlsSecurity;
  let read: TlsSecurity;
  let bad: Awaited<ReturnType<typeof badCredentials>>;
  const imagesOf = (host: string) => join(lab.dir, 'hosts', host, 'images');
  const imageFolders = (host: string) => (existsSync(imagesOf(host)) ? readdirSync(imagesOf(host)) : []);
  const token = (migrationId: string, source = 'b', target = 'a', ttlMs?: number, signer: TlsSecurity = controller) =>
    signImageToken(signer, { migrationId, source, target }, ttlMs);
  const withToken = (t: string) => {
    const md = new grpc.Metadata();
    md.set(IMAGE_TOKEN_METADATA, t);
    return md;
  };
  const chunk = (migrationId: string, name = 'core-1.img') => ({ migrationId, format: IMAGE_STREAM_FORMAT, files: [{ name, mode: 0o600, data: Buffer.from('evil') }] });

  beforeAll(async () => {
    lab = await labUp({ hosts: ['a', 'b'] });
    pki = pkiOver(join(lab.pki!.dir, 'ca'));
    controller = lab.pki!.security('controller');
    agentB = lab.pki!.security('agent-b');
    admin = lab.pki!.security('client-admin');
    read = lab.pki!.security('client-read');
    bad = await badCredentials(pki, { role: 'controller' });
  });

  afterAll(async () => {
    pki?.remove();
    await lab?.down();
  });

  describe('gRPC: who you are', () => {
    it('a legitimate identity gets through (the control for everything below)', async () => {
      const c = clientAs(ControllerService, lab.controllerAddress, 'controller', admin);
      expect(await callError(c, 'ListHosts', {})).toBeUndefined();
      c.close();
      const a = clientAs(AgentService, lab.agentAddress('a'), 'agent', controller);
      expect(await callError(a, 'Probe', {})).toBeUndefined();
      a.close();
    });

    it('no certificate at all (plain TCP, and TLS without a client certificate): refused', async () => {
      for (const [service, address] of [[ControllerService, lab.controllerAddress], [AgentService, lab.agentAddress('a')]] as const) {
        const plain = rawClient(service, address, grpc.credentials.createInsecure());
        const e1 = await callError(plain, service === ControllerService ? 'ListHosts' : 'Probe', {});
        expect(HANDSHAKE_REFUSED).toContain(e1?.code);
        plain.close();
        const noClientCert = rawClient(service, address, grpc.credentials.createSsl(admin.ca, null, null, { checkServerIdentity: () => undefined }));
        const e2 = await callError(noClientCert, service === ControllerService ? 'ListHosts' : 'Probe', {});
        expect(HANDSHAKE_REFUSED).toContain(e2?.code);
        noClientCert.close();
      }
    });

    for (const kind of ['self-signed', 'other-ca', 'expired'] as const) {
      it(`a ${kind} certificate claiming to be the controller: refused at the handshake`, async () => {
        // The attacker trusts the fleet's CA (to reach the server) but presents its own certificate.
        const s: TlsSecurity = { ...bad[kind], ca: admin.ca };
        const a = clientAs(AgentService, lab.agentAddress('a'), 'agent', s);
        const e = await callError(a, 'Probe', {});
        expect(HANDSHAKE_REFUSED, e?.details).toContain(e?.code);
        a.close();
      });
    }
  });

  describe('gRPC: what you may do', () => {
    it('a client certificate calling agent RPCs: PERMISSION_DENIED naming the controller role', async () => {
      const a = clientAs(AgentService, lab.agentAddress('a'), 'agent', admin);
      for (const [method, req] of [['Probe', {}], ['Checkpoint', { migrationId: 'attack-1' }], ['Restore', { migrationId: 'attack-1' }], ['Abort', { migrationId: 'attack-1' }]] as const) {
        const e = await callError(a, method, req);
        expect(e?.code, method).toBe(grpc.status.PERMISSION_DENIED);
        expect(e?.details).toContain('controller');
      }
      a.close();
      expect(imageFolders('a')).toEqual([]);
    });

    it("an agent's certificate calling another agent's Restore: PERMISSION_DENIED", async () => {
      const a = clientAs(AgentService, lab.agentAddress('a'), 'agent', agentB);
      const e = await callError(a, 'Restore', { migrationId: 'attack-2' });
      expect(e?.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(e?.details).toMatch(/needs the role controller; the caller is agent b/);
      a.close();
    });

    it('the read-only client may list but not migrate; an agent may not call the controller API', async () => {
      const c = clientAs(ControllerService, lab.controllerAddress, 'controller', read);
      expect(await callError(c, 'ListHosts', {})).toBeUndefined();
      expect(await callError(c, 'ListMigrations', {})).toBeUndefined();
      const e = await callError(c, 'Migrate', { sourceHost: 'a', targetHost: 'b' });
      expect(e?.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(e?.details).toContain('client-admin');
      c.close();
      const asAgent = clientAs(ControllerService, lab.controllerAddress, 'controller', agentB);
      expect((await callError(asAgent, 'ListHosts', {}))?.code).toBe(grpc.status.PERMISSION_DENIED);
      asAgent.close();
      expect((await lab.controller.listMigrations()).migrations).toEqual([]);
    });

    it('a client refuses a server whose certificate has the wrong role (an agent posing as the controller)', async () => {
      // Dial agent a as if it were the controller: the TLS client wants godwit://controller.
      const c = clientAs(ControllerService, lab.agentAddress('a'), 'controller', admin);
      const e = await callError(c, 'ListHosts', {});
      expect(e?.code).toBe(grpc.status.UNAVAILABLE);
      c.close();
    });
  });

  describe('ReceiveImage: only the source the controller named, with its token', () => {
    let a: AnyClient;
    beforeAll(() => {
      a = clientAs(AgentService, lab.agentAddress('a'), 'agent', agentB);
    });
    afterAll(() => a?.close());

    it('no token: UNAUTHENTICATED, nothing written', async () => {
      const e = await receiveImageError(a, [chunk('attack-3')]);
      expect(e?.code).toBe(grpc.status.UNAUTHENTICATED);
      expect(e?.details).toContain('no image token');
      expect(imageFolders('a')).toEqual([]);
    });

    it('a forged token (claims altered, or signed by an agent\'s key): UNAUTHENTICATED / PERMISSION_DENIED', async () => {
      const real = token('attack-other').split('.');
      const claims = JSON.parse(Buffer.from(real[1]!, 'base64url').toString()) as Record<string, unknown>;
      claims.migrationId = 'attack-4';
      const altered = [real[0], Buffer.from(JSON.stringify(claims)).toString('base64url'), real[2], real[3]].join('.');
      let e = await receiveImageError(a, [chunk('attack-4')], withToken(altered));
      expect(e?.code).toBe(grpc.status.UNAUTHENTICATED);
      expect(e?.details).toMatch(/signature/);
      // Signed by agent b's own key, with its own certificate: not the controller.
      const byAgent = token('attack-4', 'b', 'a', undefined, { ...agentB, identity: { role: 'controller' } as Identity } as TlsSecurity);
      e = await receiveImageError(a, [chunk('attack-4')], withToken(byAgent));
      expect(e?.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(e?.details).toMatch(/not signed by the controller/);
      // Signed by a controller certificate from another CA.
      e = await receiveImageError(a, [chunk('attack-4')], withToken(token('attack-4', 'b', 'a', undefined, bad['other-ca'])));
      expect(e?.code).toBe(grpc.status.UNAUTHENTICATED);
      expect(imageFolders('a')).toEqual([]);
    });

    it('a real token replayed for another migration, another target, another source, or expired: PERMISSION_DENIED', async () => {
      const cases: [string, string][] = [
        [token('attack-5'), 'is for migration attack-5'], // presented for attack-6
        [token('attack-6', 'b', 'c'), 'target host c'],
        [token('attack-6', 'x', 'a'), 'source host x'],
        [token('attack-6', 'b', 'a', -1_000), 'expired'],
      ];
      for (const [t, why] of cases) {
        const e = await receiveImageError(a, [chunk('attack-6')], withToken(t));
        expect(e?.code, why).toBe(grpc.status.PERMISSION_DENIED);
        expect(e?.details).toContain(why);
      }
      expect(imageFolders('a')).toEqual([]);
    });

    it('the controller itself may not push an image (only an agent streams images)', async () => {
      const asController = clientAs(AgentService, lab.agentAddress('a'), 'agent', controller);
      const e = await receiveImageError(asController, [chunk('attack-7')], withToken(token('attack-7')));
      expect(e?.code).toBe(grpc.status.PERMISSION_DENIED);
      asController.close();
      expect(imageFolders('a')).toEqual([]);
    });
  });

  describe('paths and names: refused before any file is touched', () => {
    const bads = ['../../escape', 'a/b', '..', 'x\0y', 'x'.repeat(300)];

    it('migration ids with .., /, NUL or 300 characters, even with a valid token for them', async () => {
      const a = clientAs(AgentService, lab.agentAddress('a'), 'agent', agentB);
      for (const id of bads) {
        const e = await receiveImageError(a, [chunk(id)], withToken(token(id)));
        expect(e?.code, JSON.stringify(id)).toBe(grpc.status.INVALID_ARGUMENT);
      }
      a.close();
      const asController = clientAs(AgentService, lab.agentAddress('a'), 'agent', controller);
      for (const id of bads) {
        for (const method of ['Checkpoint', 'Restore', 'Abort', 'MigrationLogs']) {
          const e = await callError(asController, method, { migrationId: id });
          expect(e?.code, `${method} ${JSON.stringify(id)}`).toBe(grpc.status.INVALID_ARGUMENT);
        }
      }
      asController.close();
      expect(imageFolders('a')).toEqual([]);
      expect(existsSync(join(lab.dir, 'hosts', 'escape'))).toBe(false);
      expect(existsSync(join(lab.dir, 'escape'))).toBe(false);
    });

    it('image file names with .., / or NUL in a stream with a valid token: INVALID_ARGUMENT, nothing outside the image folder', async () => {
      const a = clientAs(AgentService, lab.agentAddress('a'), 'agent', agentB);
      for (const name of ['../../../escape.img', '/tmp/escape.img', '..', 'x\0.img', '.hidden', 'y'.repeat(300)]) {
        const e = await receiveImageError(a, [chunk('attack-8', name)], withToken(token('attack-8')));
        expect(e?.code, JSON.stringify(name)).toBe(grpc.status.INVALID_ARGUMENT);
      }
      a.close();
      // The stream's own folder may exist (the token was valid); it holds nothing.
      for (const f of imageFolders('a')) expect(readdirSync(join(imagesOf('a'), f))).toEqual([]);
      expect(existsSync(join(lab.dir, 'hosts', 'escape.img'))).toBe(false);
      expect(existsSync(join(lab.dir, 'escape.img'))).toBe(false);
      expect(existsSync('/tmp/escape.img')).toBe(false);
    });

    it('host names with .., /, NUL or 300 characters: refused by the controller, no migration recorded', async () => {
      for (const host of ['../b', 'b/..', 'b\0', 'h'.repeat(300)]) {
        const err = await lab.controller
          .migrate({ sourceHost: 'a', targetHost: host, workload: { pid: 1, endpoints: [{ proto: 'tcp', address: '198.18.0.1', port: 1 }] } } as never)
          .then(() => undefined, (e: grpc.ServiceError) => e);
        expect([grpc.status.INVALID_ARGUMENT, grpc.status.NOT_FOUND], JSON.stringify(host)).toContain(err?.code);
      }
      expect((await lab.controller.listMigrations()).migrations).toEqual([]);
    });
  });

  describe('NATS: credentials and subject permissions', () => {
    const connectAs = (s: Security, name: string) => Bus.connect({ servers: lab.natsUrl, name, security: s, connectTimeoutMs: 5_000 });

    it('no credentials, a certificate from another CA, an expired one, or one the server has no user for: refused', async () => {
      await expect(connectAs(INSECURE, 'attack-plain')).rejects.toThrow();
      // TLS that trusts the fleet's CA, but no client certificate.
      await expect(connectAs({ ...admin, cert: Buffer.alloc(0), key: Buffer.alloc(0) }, 'attack-no-cert')).rejects.toThrow();
      await expect(connectAs({ ...bad['other-ca'], ca: admin.ca }, 'attack-other-ca')).rejects.toThrow();
      await expect(connectAs({ ...bad.expired, ca: admin.ca }, 'attack-expired')).rejects.toThrow();
      await expect(connectAs({ ...bad['self-signed'], ca: admin.ca }, 'attack-self')).rejects.toThrow();
      // Issued by the fleet's CA, but for a host the NATS server has no user for.
      const stranger = await pki.issue('agent-zz', { role: 'agent', host: 'zz' });
      await expect(connectAs(stranger, 'attack-stranger')).rejects.toThrow(/authoriz/i);
    });

    it("an agent publishing another host's heartbeat and a client publishing a migration event: never delivered", async () => {
      const watcher = await connectAs(controller, 'attack-watcher');
      const seen: { subject: string; attack?: boolean }[] = [];
      watcher.subscribe<{ attack?: boolean }>('godwit.>', (m, subject) => m?.attack && seen.push({ subject, attack: true }));
      await watcher.flush();
      const asAgentA = await connectAs(lab.pki!.security('agent-a'), 'attack-agent-a');
      const asClient = await connectAs(admin, 'attack-client');
      asAgentA.publish('godwit.hosts.b.heartbeat', { host: 'b', attack: true });
      asClient.publish('godwit.events.migration.fake.done', { migrationId: 'fake', phase: 'DONE', attack: true });
      asClient.publish('godwit.hosts.a.heartbeat', { host: 'a', attack: true });
      // The control: what agent a may publish arrives.
      asAgentA.publish('godwit.hosts.a.attack-control', { attack: true });
      await Promise.all([asAgentA.flush().catch(() => undefined), asClient.flush().catch(() => undefined)]);
      const deadline = Date.now() + 10_000;
      while (!seen.some((s) => s.subject === 'godwit.hosts.a.attack-control') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      await new Promise((r) => setTimeout(r, 500));
      expect(seen.map((s) => s.subject)).toEqual(['godwit.hosts.a.attack-control']);
      // The controller still sees host b as the real b.
      const b = (await lab.controller.listHosts()).hosts.find((h) => h.name === 'b');
      expect(b?.ready).toBe(true);
      for (const bus of [watcher, asAgentA, asClient]) await bus.close().catch(() => undefined);
    });

    it('a client writing the migrations bucket: refused, the key never appears', async () => {
      const asClient = await connectAs(admin, 'attack-kv');
      const kv = await asClient.kv<unknown>(MIGRATIONS_BUCKET);
      await expect(kv.create('attack-kv', { phase: 'DONE' })).rejects.toThrow();
      await asClient.close().catch(() => undefined);
      const asController = await connectAs(controller, 'attack-kv-check');
      expect(await (await asController.kv<unknown>(MIGRATIONS_BUCKET)).get('attack-kv')).toBeUndefined();
      await asController.close();
    });
  });

  describe('and the legitimate migration', () => {
    let traffic: TrafficHandle | undefined;
    afterAll(async () => {
      await traffic?.stop();
    });

    it('moves a -> b over mutual TLS with its token, every byte checked', async () => {
      const { pid, endpoint } = await startLabWorkload(lab, 'a', PORT);
      traffic = startTraffic(lab.topology.client, { address: endpoint.address, port: PORT }, { connections: CONNECTIONS });
      await traffic.ready;
      const hop = await migrateHop(lab.controller, traffic, { from: 'a', to: 'b', pid, endpoints: [endpoint] });
      expect(hop.phase, hop.error).toBe('DONE');
      expect(hop.alive).toBe(CONNECTIONS);
      expect(hop.bytesLost).toBe(0);
      expect(hop.bytesDuplicated).toBe(0);
      expect(hop.corrupted).toBe(0);
      const stats = await traffic.stats();
      expect(stats.verifiedBytes).toBeGreaterThan(0);
    });
  });
});
