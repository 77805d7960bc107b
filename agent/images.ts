/**
 * Streaming a CRIU image folder from the source agent to the target agent over gRPC, checked on
 * arrival by one SHA-256 over the whole stream. Files are flat in the folder (CRIU writes no
 * subfolders). This runs inside the freeze, so it is built for an image's shape:
 *
 * - An image of a process with many connections is mostly small files (about one per socket:
 *   1,000 connections make about 1,000 files of a few hundred bytes). Per-file and per-message
 *   costs dominate, so small files travel whole, many to a message (up to BATCH_BYTES), and are
 *   read and written with synchronous calls: on this machine's tmpfs a synchronous read or
 *   write costs about 40 µs, the same through libuv's thread pool about five times that. Each
 *   batch blocks the event loop for a few milliseconds at most; while the peer handles one
 *   batch the sender reads the next.
 * - A large file (memory pages) is streamed in CHUNK_BYTES pieces, alone in its messages.
 * - The hash is computed as the bytes go by on both sides; nothing is read twice.
 */
import { GodwitError } from '../lib/errors.js';
import { createHash, type Hash } from 'node:crypto';
import { closeSync, fstatSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { once } from 'node:events';
import { join } from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { Metadata, status } from '@grpc/grpc-js';
import { IMAGE_TOKEN_METADATA } from '../lib/migration-token.js';
import type { AgentClient } from '../proto/gen/godwit/v1/Agent.js';
import type { ImageChunk, ImageChunk__Output } from '../proto/gen/godwit/v1/ImageChunk.js';
import type { ReceiveImageResponse__Output } from '../proto/gen/godwit/v1/ReceiveImageResponse.js';
import { CONCURRENT_STEP, StepTimer, type StepTime } from './step-timer.js';

/** The stream's layout version (ImageChunk.format); a receiver refuses another. */
export const IMAGE_STREAM_FORMAT = 2;
/** 1 MiB: large enough to keep per-message overhead small, well under the 16 MiB message limit. */
const CHUNK_BYTES = 1 << 20;
/**
 * Small files go out whole, batched up to this many bytes or files per message: small enough
 * that the receiver writes one batch while the sender reads the next (an image of 1,000
 * connections is about 0.5 MB of small files: one batch would make reading and writing take
 * turns), large enough that per-message cost stays small.
 */
const BATCH_BYTES = 256 * 1024;
const BATCH_FILES = 64;
/**
 * Files in the folder that are not part of the image: ours, and CRIU's logs (CRIU's restore does
 * not read them; at -v4 the dump's log is as large as a small image).
 */
const NOT_IMAGE = new Set(['restored.pid', 'restore.log', 'dump.log']);
const FILE_NAME = /^[A-Za-z0-9._-]{1,255}$/;

export interface TransferTotals {
  bytes: number;
  files: number;
}

export interface SendResult extends TransferTotals {
  /** The receiving host's steps, as it reported them. */
  peerSteps: StepTime[];
}

/** The image's files and their total size (synchronous: stat of 1,000 files on tmpfs is a few ms). */
export function imageTotals(dir: string): TransferTotals {
  let bytes = 0;
  const names = imageFiles(dir);
  for (const n of names) bytes += statSync(join(dir, n)).size;
  return { bytes, files: names.length };
}

function imageFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.isFile() && !NOT_IMAGE.has(e.name))
    .map((e) => e.name)
    .sort();
}

/** Adds one file to the stream's hash: name, NUL, size (u64 LE), then its bytes as they go by. */
function hashFileStart(hash: Hash, name: string, size: number): void {
  const size8 = Buffer.alloc(8);
  size8.writeBigUInt64LE(BigInt(size));
  hash.update(name).update('\0').update(size8);
}

/**
 * Source side: an image stream to the peer's ReceiveImage. finish() sends every file of the
 * (complete) image and the end; cancel() abandons it.
 *
 * Measured and dropped: opening the stream before the dump and sending each file as soon as CRIU
 * had finished it. On this 2-core machine the reads and sends took CPU from CRIU itself: the dump
 * at 1,000 connections grew from about 350 to 480-610 ms and the freeze with it (bench freeze,
 * 3 runs each way); it may pay on hosts with cores to spare.
 */
export class ImageStream {
  private readonly call: grpc.ClientWritableStream<ImageChunk>;
  private readonly answer: Promise<ReceiveImageResponse__Output>;
  private readonly hash = createHash('sha256');
  private files = 0;
  private batch: { name: string; mode: number; data: Buffer }[] = [];
  private batchBytes = 0;
  private bytes = 0;

  /** imageToken: the controller's permission for this transfer (lib/migration-token.ts), presented as call metadata. */
  constructor(client: AgentClient, private readonly migrationId: string, private readonly dir: string, timeoutMs: number, imageToken = '') {
    let call!: grpc.ClientWritableStream<ImageChunk>;
    const md = new Metadata();
    if (imageToken) md.set(IMAGE_TOKEN_METADATA, imageToken);
    this.answer = new Promise<ReceiveImageResponse__Output>((resolve, reject) => {
      call = client.ReceiveImage(md, { deadline: Date.now() + timeoutMs }, (err, res) => (err ? reject(err) : resolve(res!)));
    });
    // A cancelled stream's answer is an error nobody waits for.
    this.answer.catch(() => undefined);
    this.call = call;
  }

  /** Every file, then the end; resolves with the receiver's answer. */
  async finish(): Promise<SendResult> {
    for (const name of imageFiles(this.dir)) await this.sendFile(name);
    await this.flush();
    await this.write({ end: { files: this.files, bytes: this.bytes, sha256: this.hash.digest('hex') } });
    this.call.end();
    const res = await this.answer;
    if (Number(res.files) !== this.files || Number(res.bytes) !== this.bytes) {
      throw new Error(`peer stored ${res.files} files / ${res.bytes} bytes, sent ${this.files} / ${this.bytes}`);
    }
    return { bytes: this.bytes, files: this.files, peerSteps: res.steps.map((s) => ({ step: s.step, ms: s.ms, host: s.host })) };
  }

  /** Abandons the stream: the receiver drops what it got. */
  cancel(): void {
    this.call.cancel();
  }

  private async sendFile(name: string): Promise<void> {
    const fd = openSync(join(this.dir, name), 'r');
    try {
      const st = fstatSync(fd);
      this.files += 1;
      const size = st.size;
      const mode = st.mode & 0o777;
      hashFileStart(this.hash, name, size);
      this.bytes += size;
      if (size <= CHUNK_BYTES) {
        const data = readAll(fd, size);
        this.hash.update(data);
        this.batch.push({ name, mode, data });
        this.batchBytes += data.length;
        if (this.batchBytes >= BATCH_BYTES || this.batch.length >= BATCH_FILES) await this.flush();
        return;
      }
      await this.flush();
      let first = true;
      for (let at = 0; at < size; ) {
        const data = readAll(fd, Math.min(CHUNK_BYTES, size - at), at);
        this.hash.update(data);
        at += data.length;
        await this.write({ file: name, header: first ? { size, mode } : null, data, ...(at >= size ? { trailer: {} } : {}) });
        first = false;
      }
    } finally {
      closeSync(fd);
    }
  }

  private async flush(): Promise<void> {
    if (this.batch.length === 0) return;
    const files = this.batch;
    this.batch = [];
    this.batchBytes = 0;
    await this.write({ files });
  }

  private async write(chunk: Omit<ImageChunk, 'migrationId' | 'format'>): Promise<void> {
    if (!this.call.write({ ...chunk, migrationId: this.migrationId, format: IMAGE_STREAM_FORMAT })) await once(this.call, 'drain');
  }
}

/** `length` bytes of the file at `position` (or at its current offset). */
function readAll(fd: number, length: number, position?: number): Buffer {
  const buf = Buffer.allocUnsafe(length);
  let got = 0;
  while (got < length) {
    const n = readSync(fd, buf, got, length - got, position === undefined ? null : position + got);
    if (n === 0) throw new Error(`image file shrank while being read (${got} of ${length} bytes)`);
    got += n;
  }
  return buf;
}

export class ImageReceiveError extends GodwitError {
  constructor(readonly code: status, message: string) {
    super(message);
    this.name = 'ImageReceiveError';
  }
}

/** A large file being written. */
interface IncomingFile {
  name: string;
  size: number;
  received: number;
  fd: number;
}

/**
 * Target side: writes the streamed files into the folder `dirFor(migrationId)` (emptied first, so
 * a retried transfer starts clean), and checks the totals and the stream's SHA-256 at its end.
 */
export async function receiveImage(
  chunks: AsyncIterable<ImageChunk__Output>,
  dirFor: (migrationId: string) => string,
): Promise<{ migrationId: string; totals: TransferTotals; steps: StepTimer }> {
  const steps = new StepTimer();
  const started = performance.now();
  let writeMs = 0;
  let migrationId: string | undefined;
  let dir = '';
  let current: IncomingFile | undefined;
  let bytes = 0;
  let files = 0;
  const seen = new Set<string>();
  const hash = createHash('sha256');
  let ended = false;
  const fail = (code: status, message: string) => new ImageReceiveError(code, message);
  const checkName = (name: string) => {
    if (!FILE_NAME.test(name) || name.startsWith('.')) throw fail(status.INVALID_ARGUMENT, `image file name "${name}" is not a plain file name`);
    if (seen.has(name)) throw fail(status.INVALID_ARGUMENT, `image file "${name}" sent twice`);
    seen.add(name);
  };
  try {
    for await (const c of chunks) {
      if (c.format !== IMAGE_STREAM_FORMAT)
        throw fail(status.FAILED_PRECONDITION, `image stream format ${c.format} from the source agent, this agent reads format ${IMAGE_STREAM_FORMAT}: run the same godwit version on both hosts`);
      if (ended) throw fail(status.INVALID_ARGUMENT, 'data after the end of the image stream');
      if (migrationId === undefined) {
        migrationId = c.migrationId;
        dir = dirFor(migrationId);
        rmSync(dir, { recursive: true, force: true });
        mkdirSync(dir, { recursive: true });
      } else if (c.migrationId !== migrationId) {
        throw fail(status.INVALID_ARGUMENT, `chunk for migration ${c.migrationId} in a stream for ${migrationId}`);
      }
      const t0 = performance.now();
      for (const f of c.files) {
        if (current) throw fail(status.INVALID_ARGUMENT, `file ${f.name} inside large file ${current.name}`);
        checkName(f.name);
        hashFileStart(hash, f.name, f.data.length);
        hash.update(f.data);
        writeFileSync(join(dir, f.name), f.data, { mode: f.mode || 0o600 });
        bytes += f.data.length;
      }
      if (c.header) {
        if (current) throw fail(status.INVALID_ARGUMENT, `header for ${c.file} before ${current.name} ended`);
        checkName(c.file);
        const size = Number(c.header.size);
        current = { name: c.file, size, received: 0, fd: openSync(join(dir, c.file), 'w', c.header.mode || 0o600) };
        hashFileStart(hash, c.file, size);
      }
      if (c.data.length > 0 || c.trailer) {
        if (!current || current.name !== c.file) throw fail(status.INVALID_ARGUMENT, `data for ${c.file} without its header`);
        current.received += c.data.length;
        if (current.received > current.size) throw fail(status.DATA_LOSS, `image file ${c.file} is longer than its header said (${current.size})`);
        hash.update(c.data);
        for (let at = 0; at < c.data.length; ) at += writeSync(current.fd, c.data, at);
        if (c.trailer) {
          if (current.received !== current.size) throw fail(status.DATA_LOSS, `image file ${c.file} ended at ${current.received} of ${current.size} bytes`);
          closeSync(current.fd);
          bytes += current.received;
          current = undefined;
        }
      }
      writeMs += performance.now() - t0;
      if (c.end) {
        if (current) throw fail(status.DATA_LOSS, `stream ended inside image file ${current.name}`);
        const digest = hash.digest('hex');
        files = seen.size;
        if (Number(c.end.files) !== files || Number(c.end.bytes) !== bytes || c.end.sha256 !== digest)
          throw fail(
            status.DATA_LOSS,
            `image arrived damaged: ${files} files / ${bytes} bytes / sha256 ${digest}, the source sent ${c.end.files} / ${c.end.bytes} / ${c.end.sha256}`,
          );
        ended = true;
      }
    }
    if (migrationId === undefined) throw fail(status.INVALID_ARGUMENT, 'empty image stream');
    if (!ended) throw fail(status.DATA_LOSS, `image stream for ${migrationId} ended before its last message (${seen.size} files received)`);
    // Both happen inside the sender's own "send image" step.
    steps.add(`${CONCURRENT_STEP} receive: write files`, writeMs);
    steps.add(`${CONCURRENT_STEP} receive: stream open, waiting for data`, performance.now() - started - writeMs);
    return { migrationId, totals: { bytes, files }, steps };
  } finally {
    if (current) closeSync(current.fd);
  }
}
