/**
 * Streaming a CRIU image folder from the source agent to the target agent over gRPC, with a
 * SHA-256 per file checked on arrival. Files are flat in the folder (CRIU writes no subfolders).
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, type WriteStream } from 'node:fs';
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import { once } from 'node:events';
import { join } from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import type { AgentClient } from '../proto/gen/godwit/v1/Agent.js';
import type { ImageChunk, ImageChunk__Output } from '../proto/gen/godwit/v1/ImageChunk.js';
import type { ReceiveImageResponse, ReceiveImageResponse__Output } from '../proto/gen/godwit/v1/ReceiveImageResponse.js';

/** 1 MiB: large enough to keep per-message overhead small, well under the 16 MiB message limit. */
const CHUNK_BYTES = 1 << 20;
/** Files of ours that are not part of the image. */
const NOT_IMAGE = new Set(['restored.pid', 'restore.log']);

export interface TransferTotals {
  bytes: number;
  files: number;
}

export async function imageTotals(dir: string): Promise<TransferTotals> {
  let bytes = 0;
  const names = await imageFiles(dir);
  for (const n of names) bytes += (await stat(join(dir, n))).size;
  return { bytes, files: names.length };
}

async function imageFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  return entries.filter((e) => e.isFile() && !NOT_IMAGE.has(e.name)).map((e) => e.name).sort();
}

/** Source side: streams every file of `dir` to the peer's ReceiveImage. */
export async function sendImage(client: AgentClient, migrationId: string, dir: string, timeoutMs: number): Promise<TransferTotals> {
  let call!: grpc.ClientWritableStream<ImageChunk>;
  const answer = new Promise<ReceiveImageResponse__Output>((resolve, reject) => {
    call = client.ReceiveImage({ deadline: Date.now() + timeoutMs }, (err, res) => (err ? reject(err) : resolve(res!)));
  });
  const write = async (chunk: ImageChunk) => {
    if (!call.write(chunk)) await once(call, 'drain');
  };
  let bytes = 0;
  const names = await imageFiles(dir);
  for (const file of names) {
    const path = join(dir, file);
    const st = await stat(path);
    await write({ migrationId, file, header: { size: st.size, mode: st.mode & 0o777 } });
    const hash = createHash('sha256');
    for await (const data of createReadStream(path, { highWaterMark: CHUNK_BYTES })) {
      hash.update(data as Buffer);
      bytes += (data as Buffer).length;
      await write({ migrationId, file, data: data as Buffer });
    }
    await write({ migrationId, file, trailer: { sha256: hash.digest('hex') } });
  }
  call.end();
  const res = await answer;
  if (Number(res.files) !== names.length || Number(res.bytes) !== bytes) {
    throw new Error(`peer stored ${res.files} files / ${res.bytes} bytes, sent ${names.length} / ${bytes}`);
  }
  return { bytes, files: names.length };
}

export class ImageReceiveError extends Error {
  constructor(readonly code: status, message: string) {
    super(message);
    this.name = 'ImageReceiveError';
  }
}

/**
 * Target side: writes the streamed files into the folder `dirFor(migrationId)` (emptied first, so
 * a retried transfer starts clean) and checks each file's size and SHA-256.
 */
export async function receiveImage(
  chunks: AsyncIterable<ImageChunk__Output>,
  dirFor: (migrationId: string) => string,
): Promise<{ migrationId: string; totals: ReceiveImageResponse }> {
  let migrationId: string | undefined;
  let dir = '';
  let current: { file: string; out: WriteStream; hash: ReturnType<typeof createHash>; size: number; written: number } | undefined;
  let bytes = 0;
  let files = 0;
  for await (const c of chunks) {
    if (migrationId === undefined) {
      migrationId = c.migrationId;
      dir = dirFor(migrationId);
      await rm(dir, { recursive: true, force: true });
      await mkdir(dir, { recursive: true });
    } else if (c.migrationId !== migrationId) {
      throw new ImageReceiveError(status.INVALID_ARGUMENT, `chunk for migration ${c.migrationId} in a stream for ${migrationId}`);
    }
    if (!/^[A-Za-z0-9._-]+$/.test(c.file) || c.file.startsWith('.')) {
      throw new ImageReceiveError(status.INVALID_ARGUMENT, `image file name "${c.file}" is not a plain file name`);
    }
    if (c.part === 'header') {
      if (current) throw new ImageReceiveError(status.INVALID_ARGUMENT, `header for ${c.file} before ${current.file} ended`);
      const out = createWriteStream(join(dir, c.file), { mode: c.header!.mode || 0o600 });
      current = { file: c.file, out, hash: createHash('sha256'), size: Number(c.header!.size), written: 0 };
    } else if (c.part === 'data') {
      if (!current || current.file !== c.file) throw new ImageReceiveError(status.INVALID_ARGUMENT, `data for ${c.file} without its header`);
      current.hash.update(c.data!);
      current.written += c.data!.length;
      if (!current.out.write(c.data!)) await once(current.out, 'drain');
    } else if (c.part === 'trailer') {
      if (!current || current.file !== c.file) throw new ImageReceiveError(status.INVALID_ARGUMENT, `trailer for ${c.file} without its header`);
      current.out.end();
      await once(current.out, 'close');
      const digest = current.hash.digest('hex');
      if (digest !== c.trailer!.sha256 || current.written !== current.size) {
        throw new ImageReceiveError(
          status.DATA_LOSS,
          `image file ${c.file} arrived damaged: ${current.written}/${current.size} bytes, sha256 ${digest} != ${c.trailer!.sha256}`,
        );
      }
      bytes += current.written;
      files += 1;
      current = undefined;
    }
  }
  if (current) throw new ImageReceiveError(status.DATA_LOSS, `stream ended inside image file ${current.file}`);
  if (migrationId === undefined) throw new ImageReceiveError(status.INVALID_ARGUMENT, 'empty image stream');
  return { migrationId, totals: { bytes, files } };
}
