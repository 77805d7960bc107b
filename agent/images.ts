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
 * - In a pipelined freeze the stream opens before CRIU starts and follows the folder while the
 *   dump writes it (ImageStream.follow): what is left for after the dump is the last few files.
 */
import { createHash, type Hash } from 'node:crypto';
import { closeSync, fstatSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { once } from 'node:events';
import { join } from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import type { AgentClient } from '../proto/gen/godwit/v1/Agent.js';
import type { ImageChunk, ImageChunk__Output } from '../proto/gen/godwit/v1/ImageChunk.js';
import type { ReceiveImageResponse__Output } from '../proto/gen/godwit/v1/ReceiveImageResponse.js';
import { StepTimer, type StepTime } from './step-timer.js';

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
/** While CRIU writes: how long a file must be unchanged before it goes out, and how often to look. */
const SETTLE_NS = 10_000_000n;
const FOLLOW_INTERVAL_MS = 5;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

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
 * Source side: an image stream to the peer's ReceiveImage. It can start while CRIU is still
 * writing the image (follow()): every file that has not changed for SETTLE_MS goes out then, so
 * that when the dump ends most of the image is on the target already. finish() sends what is
 * left: files not sent yet, and any file sent early that changed afterwards (its size or mtime
 * differs from when it was read), sent again whole; the receiver keeps the last copy.
 *
 * Why a settled file cannot change unnoticed: tmpfs stamps mtime from a coarse clock (one tick,
 * at most about 4 ms, behind), so a write after our read gets an mtime later than one that was
 * already SETTLE_MS old when we read.
 */
export class ImageStream {
  private readonly call: grpc.ClientWritableStream<ImageChunk>;
  private readonly answer: Promise<ReceiveImageResponse__Output>;
  private readonly hash = createHash('sha256');
  /** Size and mtime of each file when it was read for sending. */
  private readonly sent = new Map<string, { size: bigint; mtimeNs: bigint }>();
  private batch: { name: string; mode: number; data: Buffer }[] = [];
  private batchBytes = 0;
  private bytes = 0;
  private following?: Promise<void>;
  private stopping = false;
  /** Files and bytes that went out while the image was still being written. */
  readonly early = { files: 0, bytes: 0, ms: 0 };

  constructor(client: AgentClient, private readonly migrationId: string, private readonly dir: string, timeoutMs: number) {
    let call!: grpc.ClientWritableStream<ImageChunk>;
    this.answer = new Promise<ReceiveImageResponse__Output>((resolve, reject) => {
      call = client.ReceiveImage({ deadline: Date.now() + timeoutMs }, (err, res) => (err ? reject(err) : resolve(res!)));
    });
    // A cancelled stream's answer is an error nobody waits for.
    this.answer.catch(() => undefined);
    this.call = call;
  }

  /** Sends the files that have settled, over and over, until finish() or cancel(). */
  follow(): void {
    this.following ??= (async () => {
      while (!this.stopping) {
        const t0 = performance.now();
        const before = this.sent.size;
        const bytes = this.bytes;
        await this.pass(false);
        if (this.sent.size > before) {
          this.early.files += this.sent.size - before;
          this.early.bytes += this.bytes - bytes;
          this.early.ms += performance.now() - t0;
        }
        await sleep(FOLLOW_INTERVAL_MS);
      }
    })();
  }

  /** Everything not sent yet or changed since, then the end; resolves with the receiver's answer. */
  async finish(): Promise<SendResult> {
    this.stopping = true;
    await this.following;
    await this.pass(true);
    await this.flush();
    await this.write({ end: { files: this.sent.size, bytes: this.bytes, sha256: this.hash.digest('hex') } });
    this.call.end();
    const res = await this.answer;
    if (Number(res.files) !== this.sent.size || Number(res.bytes) !== this.bytes) {
      throw new Error(`peer stored ${res.files} files / ${res.bytes} bytes, sent ${this.sent.size} / ${this.bytes}`);
    }
    return { bytes: this.bytes, files: this.sent.size, peerSteps: res.steps.map((s) => ({ step: s.step, ms: s.ms, host: s.host })) };
  }

  /** Stops following and abandons the stream (the dump failed): the receiver drops what it got. */
  async cancel(): Promise<void> {
    this.stopping = true;
    // Cancelled first: a pass waiting for the stream to drain ends with it.
    this.call.cancel();
    await this.following?.catch(() => undefined);
  }

  /** One look at the folder: each file new or changed since it was sent (and, unless final, settled) goes out. */
  private async pass(final: boolean): Promise<void> {
    const now = BigInt(Date.now()) * 1_000_000n;
    for (const name of imageFiles(this.dir)) {
      if (!final && this.stopping) return;
      let st;
      try {
        st = statSync(join(this.dir, name), { bigint: true });
      } catch {
        continue; // gone again (CRIU renames some files into place)
      }
      const prev = this.sent.get(name);
      if (prev && prev.size === st.size && prev.mtimeNs === st.mtimeNs) continue;
      if (!final && now - st.mtimeNs < SETTLE_NS) continue;
      // A large file is memory pages, written in many passes and last: sent early, it would go
      // again whole (1 GiB twice); it goes at the end.
      if (!final && st.size > BigInt(CHUNK_BYTES)) continue;
      await this.sendFile(name);
    }
  }

  private async sendFile(name: string): Promise<void> {
    const fd = openSync(join(this.dir, name), 'r');
    try {
      const st = fstatSync(fd, { bigint: true });
      this.sent.set(name, { size: st.size, mtimeNs: st.mtimeNs });
      const size = Number(st.size);
      const mode = Number(st.mode) & 0o777;
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

/** Source side: streams every image file of `dir` to the peer's ReceiveImage (the image is complete). */
export function sendImage(client: AgentClient, migrationId: string, dir: string, timeoutMs: number): Promise<SendResult> {
  return new ImageStream(client, migrationId, dir, timeoutMs).finish();
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

export class ImageReceiveError extends Error {
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
  /** Distinct files: a file sent again (it changed after an early send) replaces the first copy. */
  const seen = new Set<string>();
  const hash = createHash('sha256');
  let ended = false;
  const fail = (code: status, message: string) => new ImageReceiveError(code, message);
  const checkName = (name: string) => {
    if (!FILE_NAME.test(name) || name.startsWith('.')) throw fail(status.INVALID_ARGUMENT, `image file name "${name}" is not a plain file name`);
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
    steps.add('receive: write files', writeMs);
    steps.add('receive: stream', performance.now() - started - writeMs);
    return { migrationId, totals: { bytes, files }, steps };
  } finally {
    if (current) closeSync(current.fd);
  }
}
