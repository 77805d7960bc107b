/**
 * Streaming a CRIU image folder from the source agent to the target agent over gRPC, with a
 * SHA-256 per file checked on arrival. Files are flat in the folder (CRIU writes no subfolders).
 *
 * An image of a process with many connections is many small files (about one per socket), so
 * per-file cost dominates: a small file travels as one message and is written from memory
 * without waiting for the previous file; only large files are streamed chunk by chunk.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, type WriteStream } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
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

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** How many small files the sender reads ahead of what it has sent. */
const PREFETCH = 32;

interface SmallFile {
  size: number;
  mode: number;
  /** The contents, for a file small enough to travel as one message. */
  data?: Buffer;
}

async function loadSmall(path: string): Promise<SmallFile> {
  const st = await stat(path);
  const info = { size: st.size, mode: st.mode & 0o777 };
  return st.size <= CHUNK_BYTES ? { ...info, data: await readFile(path) } : info;
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
  // Reads run ahead of the sends (file system round trips dominate for small files); the window
  // bounds the memory held to PREFETCH small files.
  const loads = names.map((file) => () => loadSmall(join(dir, file)));
  const pending: Promise<SmallFile>[] = loads.slice(0, PREFETCH).map((l) => l());
  for (let i = 0; i < names.length; i++) {
    const file = names[i];
    const loaded = await pending[i];
    if (i + PREFETCH < names.length) pending.push(loads[i + PREFETCH]());
    const header = { size: loaded.size, mode: loaded.mode };
    if (loaded.data) {
      await write({ migrationId, file, header, data: loaded.data, trailer: { sha256: sha256(loaded.data) } });
      bytes += loaded.data.length;
      continue;
    }
    const hash = createHash('sha256');
    let first = true;
    for await (const data of createReadStream(join(dir, file), { highWaterMark: CHUNK_BYTES })) {
      hash.update(data as Buffer);
      bytes += (data as Buffer).length;
      await write({ migrationId, file, header: first ? header : null, data: data as Buffer });
      first = false;
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

interface IncomingFile {
  file: string;
  size: number;
  mode: number;
  hash: ReturnType<typeof createHash>;
  received: number;
  /** Small files are kept in memory and written in one go; large ones stream to disk. */
  parts?: Buffer[];
  out?: WriteStream;
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
  let current: IncomingFile | undefined;
  let bytes = 0;
  let files = 0;
  const writes: Promise<void>[] = [];
  const fail = (code: status, message: string) => new ImageReceiveError(code, message);
  try {
    for await (const c of chunks) {
      if (migrationId === undefined) {
        migrationId = c.migrationId;
        dir = dirFor(migrationId);
        await rm(dir, { recursive: true, force: true });
        await mkdir(dir, { recursive: true });
      } else if (c.migrationId !== migrationId) {
        throw fail(status.INVALID_ARGUMENT, `chunk for migration ${c.migrationId} in a stream for ${migrationId}`);
      }
      if (!/^[A-Za-z0-9._-]+$/.test(c.file) || c.file.startsWith('.')) {
        throw fail(status.INVALID_ARGUMENT, `image file name "${c.file}" is not a plain file name`);
      }
      if (c.header) {
        if (current) throw fail(status.INVALID_ARGUMENT, `header for ${c.file} before ${current.file} ended`);
        const size = Number(c.header.size);
        current = { file: c.file, size, mode: c.header.mode || 0o600, hash: createHash('sha256'), received: 0 };
        if (size <= CHUNK_BYTES) current.parts = [];
        else current.out = createWriteStream(join(dir, c.file), { mode: current.mode });
      }
      if (!current || current.file !== c.file) throw fail(status.INVALID_ARGUMENT, `data for ${c.file} without its header`);
      if (c.data.length > 0) {
        current.hash.update(c.data);
        current.received += c.data.length;
        if (current.received > current.size) throw fail(status.DATA_LOSS, `image file ${c.file} is longer than its header said (${current.size})`);
        if (current.parts) current.parts.push(c.data);
        else if (!current.out!.write(c.data)) await once(current.out!, 'drain');
      }
      if (c.trailer) {
        const digest = current.hash.digest('hex');
        if (digest !== c.trailer.sha256 || current.received !== current.size) {
          throw fail(status.DATA_LOSS, `image file ${c.file} arrived damaged: ${current.received}/${current.size} bytes, sha256 ${digest} != ${c.trailer.sha256}`);
        }
        if (current.parts) {
          writes.push(writeFile(join(dir, c.file), Buffer.concat(current.parts), { mode: current.mode }));
        } else {
          current.out!.end();
          await once(current.out!, 'close');
        }
        bytes += current.received;
        files += 1;
        current = undefined;
      }
    }
    if (current) throw fail(status.DATA_LOSS, `stream ended inside image file ${current.file}`);
    if (migrationId === undefined) throw fail(status.INVALID_ARGUMENT, 'empty image stream');
    await Promise.all(writes);
    return { migrationId, totals: { bytes, files } };
  } finally {
    current?.out?.destroy();
    await Promise.allSettled(writes);
  }
}
