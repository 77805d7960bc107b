/** The Linux platform's post-copy (agent/platform.ts PostCopy) on CRIU's lazy pages (lazy-pages.ts). */
import type { Logger } from '../../lib/log.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { LazyProcess, PostCopy, ProcessId } from '../platform.js';
import { adoptProcess, processStartTime } from './adopted-process.js';
import type { Criu } from './criu.js';
import { ensurePipeMaxSize, freePort, imageLazyBytes, parsePageServer, reclaimPages, startLazyDump, startLazyPagesDaemon } from './lazy-pages.js';

export interface LinuxPostCopyOptions {
  criu: Criu;
  /** This host's address that the target reaches: where the page server listens. */
  address: string;
  log: Logger;
}

export class LinuxPostCopy implements PostCopy {
  constructor(private readonly opts: LinuxPostCopyOptions) {}

  async dump(pid: number, imageDir: string) {
    await this.pipeLimit();
    const started = performance.now();
    const listen = { address: this.opts.address, port: await freePort(this.opts.address) };
    const server = startLazyDump(this.opts.criu.path, pid, imageDir, listen);
    await server.ready;
    const durationMs = performance.now() - started;
    const startTime = server.pid ? processStartTime(server.pid) : undefined;
    const serverId = server.pid && startTime !== undefined ? { pid: server.pid, startTime } : undefined;
    return { durationMs, pageServer: `${listen.address}:${listen.port}`, lazyBytes: await imageLazyBytes(imageDir), server, serverId };
  }

  /** How it ended comes from its log: the lazy dump ends like any dump once every page was fetched. */
  findServer(serverId: ProcessId, imageDir: string): LazyProcess | undefined {
    const finished = () => {
      try {
        return /Dumping finished successfully/.test(readFileSync(join(imageDir, 'dump.log'), 'utf8'));
      } catch {
        return false;
      }
    };
    return adoptProcess(serverId.pid, serverId.startTime, () => (finished() ? 0 : 1));
  }

  async restore(imageDir: string, pageServer: string) {
    await this.pipeLimit();
    const started = performance.now();
    const daemon = startLazyPagesDaemon(this.opts.criu.path, imageDir, parsePageServer(pageServer));
    try {
      await daemon.ready;
      const r = await this.opts.criu.restore(imageDir, 'skip', { lazyPages: true });
      return { pid: r.pid, durationMs: performance.now() - started, daemon };
    } catch (err) {
      daemon.kill();
      throw err;
    }
  }

  reclaim(imageDir: string, pageServer: string): Promise<number> {
    return reclaimPages(imageDir, parsePageServer(pageServer));
  }

  private async pipeLimit(): Promise<void> {
    const before = await ensurePipeMaxSize();
    if (before < 4 * 1024 * 1024) this.opts.log.warn({ before, now: 4 * 1024 * 1024 }, 'raised fs.pipe-max-size for CRIU\'s page server (post-copy)');
  }
}
