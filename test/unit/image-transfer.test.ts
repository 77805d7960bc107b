/**
 * The image stream between agents (agent/images.ts), over a real gRPC server on loopback with real
 * files: every byte and mode arrives, logs stay behind, and a damaged or malformed stream is
 * refused with the status that says why.
 */
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import type { ImageChunk } from '../../proto/gen/godwit/v1/ImageChunk.js';
import type { AgentClient } from '../../proto/gen/godwit/v1/Agent.js';
import { IMAGE_STREAM_FORMAT, ImageStream, receiveImage } from '../../agent/images.js';
import { createLogger } from '../../lib/log.js';
import { AgentService, agentClient, bindServer, newServer } from '../../lib/rpc.js';
import { useSecurity } from '../../lib/tls.js';
import { makeFleetPki, type FleetPki } from '../support/fleet-pki.js';

let root: string;
let server: grpc.Server;
let client: AgentClient;
let pki: FleetPki;
const received = new Map<string, string>();

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'godwit-image-'));
  // Mutual TLS as between two agents: this process is agent a on both ends.
  pki = await makeFleetPki();
  useSecurity(await pki.issue('agent-a', { role: 'agent', host: 'a' }));
  server = newServer(createLogger('test'), { 'grpc.max_receive_message_length': 16 * 1024 * 1024 });
  server.addService(AgentService, {
    ReceiveImage: (call: grpc.ServerReadableStream<never, never>, cb: grpc.sendUnaryData<unknown>) => {
      receiveImage(call as never, (id) => join(root, 'target', id)).then(
        (r) => {
          received.set(r.migrationId, join(root, 'target', r.migrationId));
          cb(null, { ...r.totals, steps: r.steps.wire('t') });
        },
        (err: { code?: number; message: string }) => cb({ code: err.code ?? grpc.status.INTERNAL, details: err.message }),
      );
    },
  } as never);
  const port = await bindServer(server, ['127.0.0.1:0']);
  client = agentClient(`127.0.0.1:${port}`);
});

afterAll(() => {
  client?.close();
  server?.forceShutdown();
  rmSync(root, { recursive: true, force: true });
  pki?.remove();
});

/** An image folder shaped like CRIU's: many small files, one large pages file, a log. */
function makeImage(id: string, small: number, largeBytes: number): string {
  const dir = join(root, 'source', id);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  for (let i = 0; i < small; i++) writeFileSync(join(dir, `tcp-stream-${i.toString(16)}.img`), Buffer.alloc(200 + (i % 300), i & 0xff));
  const pages = Buffer.alloc(largeBytes - (largeBytes % 4));
  for (let i = 0; i < pages.length; i += 4) pages.writeUInt32LE(Math.imul(i, 2654435761) >>> 0, i);
  writeFileSync(join(dir, 'pages-1.img'), pages);
  chmodSync(join(dir, 'pages-1.img'), 0o640);
  writeFileSync(join(dir, 'dump.log'), 'a log that stays on the source\n');
  return dir;
}

describe('image transfer', () => {
  it('moves every image file byte for byte with its mode, and leaves the logs behind', async () => {
    const dir = makeImage('m-ok', 1000, 3 * 1024 * 1024 + 17);
    const r = await new ImageStream(client, 'm-ok', dir, 30_000).finish();
    expect(r.files).toBe(1001);
    const out = received.get('m-ok')!;
    const names = readdirSync(out).sort();
    expect(names).toEqual(readdirSync(dir).filter((n) => n !== 'dump.log').sort());
    for (const n of names) expect(readFileSync(join(out, n)).equals(readFileSync(join(dir, n)))).toBe(true);
    expect(statSync(join(out, 'pages-1.img')).mode & 0o777).toBe(0o640);
    expect(r.peerSteps.map((s) => s.step)).toContain('(concurrent) receive: write files');
  });

  it('a cancelled stream ends the receiver without an image', async () => {
    const dir = makeImage('m-cancel', 50, 0);
    const s = new ImageStream(client, 'm-cancel', dir, 30_000);
    s.cancel();
    await new Promise((r) => setTimeout(r, 100));
    expect(received.has('m-cancel')).toBe(false);
  });

  it('refuses a file sent twice (INVALID_ARGUMENT)', async () => {
    const files = [{ name: 'a.img', mode: 0o600, data: Buffer.from('abc') }];
    await expect(stream([{ ...base, files }, { ...base, files }])).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
  });

  const stream = (chunks: ImageChunk[]) =>
    new Promise<void>((resolve, reject) => {
      const call = client.ReceiveImage((err) => (err ? reject(err) : resolve()));
      for (const c of chunks) call.write(c);
      call.end();
    });
  const base = { migrationId: 'm-bad', format: IMAGE_STREAM_FORMAT };

  it('refuses a stream whose checksum does not match (DATA_LOSS)', async () => {
    const files = [{ name: 'a.img', mode: 0o600, data: Buffer.from('abc') }];
    await expect(stream([{ ...base, files }, { ...base, end: { files: 1, bytes: 3, sha256: '00' } }])).rejects.toMatchObject({ code: grpc.status.DATA_LOSS });
  });

  it('refuses a stream cut short (DATA_LOSS) and names that are not plain file names (INVALID_ARGUMENT)', async () => {
    await expect(stream([{ ...base, files: [{ name: 'a.img', mode: 0o600, data: Buffer.from('x') }] }])).rejects.toMatchObject({ code: grpc.status.DATA_LOSS });
    for (const name of ['../escape', '.hidden', 'a/b', 'x'.repeat(300)])
      await expect(stream([{ ...base, files: [{ name, mode: 0o600, data: Buffer.from('x') }] }])).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    expect(readdirSync(root)).not.toContain('escape');
  });

  it('refuses a sender of another stream format (FAILED_PRECONDITION)', async () => {
    await expect(stream([{ migrationId: 'm-old', file: 'a.img', header: { size: 1, mode: 0o600 }, data: Buffer.from('x'), trailer: { sha256: '' } }])).rejects.toMatchObject({
      code: grpc.status.FAILED_PRECONDITION,
    });
  });
});
