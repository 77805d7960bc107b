/**
 * Post-copy with CRIU (verified on this kernel, CRIU 4.2.1):
 *
 *   source:  criu dump -t PID -D DIR --tcp-established --network-lock skip --lazy-pages
 *                 --address SRC --port P --status-fd 3
 *            writes the image without the memory of its lazy-capable mappings (private anonymous
 *            ones: the heap, a workload's data), then runs a page server on SRC:P and writes one
 *            byte to fd 3. The dumped tasks stay frozen (their pages held in CRIU's pipes) until a
 *            client has fetched what it wanted and closed the session; then CRIU kills them, their
 *            TCP sockets still in repair mode (so peers see nothing), and exits 0.
 *   target:  criu lazy-pages --page-server --address SRC --port P -D DIR --status-fd 3
 *            (waits on DIR/lazy-pages.socket), then criu restore -D DIR --lazy-pages: the restored
 *            tasks hand their userfaultfds to the daemon and resume; the daemon connects to the page
 *            server, serves faults first and fetches everything else in the background, then closes
 *            the session and exits 0.
 *
 * Two facts of this machine shape the code:
 *  - CRIU's page server tee()s pages into a pipe that it sizes to 4 MiB with F_SETPIPE_SZ; above
 *    fs.pipe-max-size (1 MiB by default) that needs CAP_SYS_RESOURCE, which this VM's root lacks,
 *    and CRIU ignores the failure and then fails every request past 64 KiB ("tee: 65536: Operation
 *    not permitted"). ensurePipeMaxSize() raises the limit first.
 *  - If CRIU dies while it serves, the tasks resume, but their TCP sockets stay in repair mode and
 *    the connections break. So the source never kills it to roll back: it fetches the pages itself
 *    over the same page server (reclaimPages: the image becomes whole), closes the session, lets
 *    CRIU end the frozen tasks as a normal dump does, and restores from the whole image.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { constants as fsConstants } from 'node:fs';
import { access, open, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { encodeCompletePagemap, isLazyOnly, lazyBytes, PAGE_SIZE, parsePagemap } from './lazy-pagemap.js';
import { stderrProblem } from './criu.js';

export const LAZY_DUMP_LOG = 'dump.log';
export const LAZY_PAGES_LOG = 'lazy-pages.log';
/** CRIU's page_pipe tee pipe: PIPE_MAX_SIZE pages (819, rounded up to a power of two: 1,024) of 4 KiB. */
const PIPE_BYTES_NEEDED = 4 * 1024 * 1024;
const PIPE_MAX_SIZE = '/proc/sys/fs/pipe-max-size';

/** criu/page-xfer.c */
const PS_IOV_GET = 7;
const PS_IOV_ADD_F = 6;
const PS_IOV_CLOSE = 0x1023;
const PS_CMD_MASK = 0xffff;
/** struct page_server_iov { u32 cmd; u64 nr_pages; u64 vaddr; u64 dst_id; } with the u32 padded to 8. */
const IOV_BYTES = 32;

export class LazyPagesError extends Error {
  constructor(readonly step: string, message: string) {
    super(`post-copy ${step}: ${message}`);
    this.name = 'LazyPagesError';
  }
}

/** Why this host cannot restore with userfaultfd, or undefined when it can. A real check, not a config read. */
export async function userfaultfdProblem(): Promise<string | undefined> {
  // /dev/userfaultfd (Linux 6.1+) hands out userfaultfds to whoever may open it: root here.
  try {
    const fd = await open('/dev/userfaultfd', fsConstants.O_RDWR);
    await fd.close();
    return undefined;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // Older kernels have only the syscall; the sysctl exists exactly when CONFIG_USERFAULTFD is built.
    try {
      await access('/proc/sys/vm/unprivileged_userfaultfd');
      return undefined;
    } catch {
      return `no userfaultfd on this kernel (/dev/userfaultfd: ${code ?? String(err)}, no /proc/sys/vm/unprivileged_userfaultfd)`;
    }
  }
}

/** Raises fs.pipe-max-size to what CRIU's page server needs (see above); returns the value before. */
export async function ensurePipeMaxSize(): Promise<number> {
  const now = Number((await readFile(PIPE_MAX_SIZE, 'utf8')).trim());
  if (now < PIPE_BYTES_NEEDED) await writeFile(PIPE_MAX_SIZE, String(PIPE_BYTES_NEEDED));
  return now;
}

/** A free TCP port on `address` (the OS picks; closed again at once, so CRIU can bind it). */
export async function freePort(address: string): Promise<number> {
  const server = createServer();
  server.listen(0, address);
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  server.close();
  await once(server, 'close');
  return port;
}

/** A long-running CRIU process that reports readiness with one byte on fd 3 (--status-fd 3). */
export class CriuChild {
  /** Resolves when CRIU wrote its status byte; rejects if it ended first. */
  readonly ready: Promise<void>;
  /** Resolves with the exit code (null when killed) when it ends. */
  readonly ended: Promise<number | null>;
  readonly readyAtMs: Promise<number>;
  private readonly child: ChildProcess;
  private exit: number | null | undefined;

  constructor(criuPath: string, args: string[], cwd: string, readonly what: string) {
    this.child = spawn(criuPath, [...args, '--status-fd', '3'], { cwd, stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
    let stderr = '';
    this.child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
    this.ended = new Promise((resolve) => {
      this.child.on('exit', (code) => {
        this.exit = code;
        resolve(code);
      });
      this.child.on('error', () => resolve(null));
    });
    const status = this.child.stdio[3] as NodeJS.ReadableStream;
    this.ready = new Promise<void>((resolve, reject) => {
      status.once('data', () => resolve());
      this.ended.then((code) =>
        reject(new LazyPagesError(what, `criu ended (${code === null ? 'killed' : `exit ${code}`}) before it was ready${stderrProblem(stderr) ? `: ${stderrProblem(stderr)}` : ''}`)),
      );
    });
    this.ready.catch(() => undefined);
    this.readyAtMs = this.ready.then(() => Date.now());
    this.readyAtMs.catch(() => undefined);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.exit === undefined;
  }

  kill(): void {
    if (this.running) this.child.kill('SIGKILL');
  }
}

/** Source: dumps lazily and serves the memory on address:port; `ready` once the image is written. */
export function startLazyDump(criuPath: string, pid: number, imageDir: string, listen: { address: string; port: number }): CriuChild {
  return new CriuChild(
    criuPath,
    [
      'dump', '--tree', String(pid), '--images-dir', imageDir, '--tcp-established', '--network-lock', 'skip',
      '--lazy-pages', '--address', listen.address, '--port', String(listen.port),
      '--log-file', LAZY_DUMP_LOG, '-v4',
    ],
    imageDir,
    'dump',
  );
}

/** Target: the lazy-pages daemon for the image in imageDir, fetching from the source's page server. */
export function startLazyPagesDaemon(criuPath: string, imageDir: string, pageServer: { address: string; port: number }): CriuChild {
  return new CriuChild(
    criuPath,
    [
      'lazy-pages', '--page-server', '--address', pageServer.address, '--port', String(pageServer.port),
      '--images-dir', imageDir, '--log-file', LAZY_PAGES_LOG, '-v4',
    ],
    imageDir,
    'lazy-pages daemon',
  );
}

export function parsePageServer(text: string): { address: string; port: number } {
  const m = /^(\d+\.\d+\.\d+\.\d+):(\d+)$/.exec(text);
  if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) throw new LazyPagesError('page server', `"${text}" is not IPv4:port`);
  return { address: m[1], port: Number(m[2]) };
}

/** Bytes of memory a lazy dump in imageDir left to its page server. */
export async function imageLazyBytes(imageDir: string): Promise<number> {
  let total = 0;
  for (const name of await pagemapFiles(imageDir)) total += lazyBytes(parsePagemap(await readFile(join(imageDir, name))));
  return total;
}

async function pagemapFiles(imageDir: string): Promise<string[]> {
  return (await readdir(imageDir)).filter((n) => /^pagemap-\d+\.img$/.test(n));
}

/**
 * Rollback on the source: fetches every page the lazy dump left out from its own page server,
 * makes the image whole (pages files rebuilt in entry order, every entry flagged present), and
 * closes the session, after which CRIU ends the frozen tasks as a normal dump does. Only possible
 * while no target daemon holds the page server (it serves one session). Returns the bytes fetched.
 */
export async function reclaimPages(imageDir: string, pageServer: { address: string; port: number }): Promise<number> {
  const sock = connect({ host: pageServer.address, port: pageServer.port });
  try {
    await Promise.race([
      once(sock, 'connect'),
      once(sock, 'error').then(([e]) => {
        throw new LazyPagesError('rollback', `cannot reach the page server ${pageServer.address}:${pageServer.port} (${(e as Error).message}); a target may already hold it`);
      }),
    ]);
    const reader = new SocketReader(sock);
    let fetched = 0;
    for (const name of await pagemapFiles(imageDir)) {
      const vpid = BigInt(/^pagemap-(\d+)\.img$/.exec(name)![1]);
      const path = join(imageDir, name);
      const map = parsePagemap(await readFile(path));
      if (!map.entries.some(isLazyOnly)) continue;
      const pagesPath = join(imageDir, `pages-${map.pagesId}.img`);
      const old = await readFile(pagesPath).catch(() => Buffer.alloc(0));
      const out = await open(`${pagesPath}.whole`, 'w');
      try {
        let oldOffset = 0;
        for (const e of map.entries) {
          const bytes = e.nrPages * PAGE_SIZE;
          if (isLazyOnly(e)) {
            for (let done = 0; done < e.nrPages; ) {
              const got = await getPages(sock, reader, vpid, e.vaddr + BigInt(done * PAGE_SIZE), e.nrPages - done);
              await out.write(got.data);
              done += got.pages;
              fetched += got.data.length;
            }
          } else if (e.flags & 4 /* PE_PRESENT */) {
            await out.write(old.subarray(oldOffset, oldOffset + bytes));
            oldOffset += bytes;
          }
        }
      } finally {
        await out.close();
      }
      await rename(`${pagesPath}.whole`, pagesPath);
      await writeFile(`${path}.whole`, encodeCompletePagemap(map));
      await rename(`${path}.whole`, path);
    }
    // The session's end: CRIU answers with a 32-bit status, then waits for us to close.
    sock.write(iov(PS_IOV_CLOSE, 0n, 0n, 0n));
    const status = (await reader.read(4)).readInt32LE(0);
    if (status !== 0) throw new LazyPagesError('rollback', `page server closed with status ${status}`);
    return fetched;
  } finally {
    sock.end();
  }
}

async function getPages(sock: Socket, reader: SocketReader, vpid: bigint, vaddr: bigint, nrPages: number): Promise<{ pages: number; data: Buffer }> {
  sock.write(iov(PS_IOV_GET, BigInt(nrPages), vaddr, vpid));
  const head = await reader.read(IOV_BYTES);
  const cmd = head.readUInt32LE(0) & PS_CMD_MASK;
  const pages = Number(head.readBigUInt64LE(8));
  if (cmd !== PS_IOV_ADD_F || pages === 0 || pages > nrPages || head.readBigUInt64LE(16) !== vaddr)
    throw new LazyPagesError('rollback', `unexpected page server answer (cmd ${cmd}, ${pages} pages at 0x${head.readBigUInt64LE(16).toString(16)}) for ${nrPages} pages at 0x${vaddr.toString(16)}`);
  return { pages, data: await reader.read(pages * PAGE_SIZE) };
}

function iov(cmd: number, nrPages: bigint, vaddr: bigint, dstId: bigint): Buffer {
  const b = Buffer.alloc(IOV_BYTES);
  b.writeUInt32LE(cmd, 0);
  b.writeBigUInt64LE(nrPages, 8);
  b.writeBigUInt64LE(vaddr, 16);
  b.writeBigUInt64LE(dstId, 24);
  return b;
}

/** Exact-length reads from a socket. */
class SocketReader {
  private chunks: Buffer[] = [];
  private length = 0;
  private waiter?: () => void;
  private failure?: Error;

  constructor(sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.length += d.length;
      this.waiter?.();
    });
    const fail = (e: Error) => {
      this.failure = e;
      this.waiter?.();
    };
    sock.on('error', fail);
    sock.on('end', () => fail(new LazyPagesError('rollback', 'the page server closed the connection')));
  }

  async read(n: number): Promise<Buffer> {
    while (this.length < n) {
      if (this.failure) throw this.failure;
      await new Promise<void>((resolve) => (this.waiter = resolve));
      this.waiter = undefined;
    }
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.length = rest.length;
    return Buffer.from(out);
  }
}
