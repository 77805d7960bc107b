/** The Linux platform's post-copy (agent/platform.ts PostCopy) on CRIU's lazy pages (lazy-pages.ts). */
import type { Logger } from '../../lib/log.js';
import type { PostCopy } from '../platform.js';
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
    return { durationMs, pageServer: `${listen.address}:${listen.port}`, lazyBytes: await imageLazyBytes(imageDir), server };
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
