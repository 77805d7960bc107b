/**
 * `godwit run` on the host: the workload's endpoint addresses up, then its command under
 * godwit-init (agent/linux/init-launcher.ts), and its output file read back for `godwit logs`.
 */
import { existsSync } from 'node:fs';
import { mkdir, open, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidArgumentError, PreconditionError } from '../lib/errors.js';
import { commandFromWire } from '../lib/wire.js';
import type { Endpoint } from '../lib/endpoint.js';
import type { Logger } from '../lib/log.js';
import type { HostPlatform } from './platform.js';

/** Workload names become file names and KV keys. */
export const WORKLOAD_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;
/** How long RunWorkload waits for the TCP endpoints to listen before answering. */
const READY_MS = 10_000;
const DEFAULT_OUTPUT_BYTES = 1024 * 1024;

export interface RunSpec {
  name: string;
  user: string;
  endpoints: Endpoint[];
  command: string[];
  cwd: string;
}

export class WorkloadRunner {
  /** Names being started now: two starts of one name would share (and remove) one output file. */
  private readonly starting = new Set<string>();

  constructor(private readonly opts: { platform: HostPlatform; workloadDir: string; log: Logger }) {}

  outputPath(name: string): string {
    if (!WORKLOAD_NAME.test(name)) throw new InvalidArgumentError('name', `workload name "${name}" must be 1-63 of [A-Za-z0-9_.-], starting with a letter or digit`);
    return join(this.opts.workloadDir, `${name}.log`);
  }

  async run(spec: RunSpec): Promise<{ pid: number; outputPath: string }> {
    this.outputPath(spec.name);
    commandFromWire(spec.command, spec.cwd, spec.user);
    if (this.starting.has(spec.name)) throw new PreconditionError(`workload "${spec.name}" is being started on this host already; wait for that start to answer`);
    this.starting.add(spec.name);
    try {
      return await this.start(spec);
    } finally {
      this.starting.delete(spec.name);
    }
  }

  private async start(spec: RunSpec): Promise<{ pid: number; outputPath: string }> {
    const p = this.opts.platform;
    const outputPath = this.outputPath(spec.name);
    await mkdir(this.opts.workloadDir, { recursive: true });
    // A command that does not start leaves nothing behind: not its address, not a new output file.
    const hadOutput = existsSync(outputPath);
    const added: string[] = [];
    const addresses = [...new Set(spec.endpoints.map((e) => e.address))];
    try {
      for (const a of addresses) if (await p.network.addAddress(a)) added.push(a);
      await Promise.all(addresses.map((a) => p.network.announce(a)));
      const pid = await p.launchWorkload({ command: spec.command, user: spec.user, cwd: spec.cwd, outputPath });
      await this.waitReady(pid, spec, outputPath);
      this.opts.log.info({ workload: spec.name, pid, command: spec.command, endpoints: spec.endpoints }, 'workload started');
      return { pid, outputPath };
    } catch (err) {
      for (const a of added) await p.network.removeAddress(a).catch(() => undefined);
      if (!hadOutput) await rm(outputPath, { force: true });
      throw err;
    }
  }

  /** The last `maxBytes` of the workload's output. */
  async output(name: string, maxBytes: number): Promise<{ output: Buffer; size: number; path: string }> {
    const path = this.outputPath(name);
    const st = await stat(path).catch(() => undefined);
    if (!st) throw new PreconditionError(`workload "${name}" has no output on this host (${path})`);
    const want = Math.min(st.size, maxBytes || DEFAULT_OUTPUT_BYTES);
    const fh = await open(path, 'r');
    try {
      const buf = Buffer.alloc(want);
      const { bytesRead } = await fh.read(buf, 0, want, st.size - want);
      return { output: buf.subarray(0, bytesRead), size: st.size, path };
    } finally {
      await fh.close();
    }
  }

  /**
   * Until every TCP endpoint's port has a listener in the tree (on whatever address: preflight
   * says later if it is one that cannot move); a command that dies meanwhile is an error.
   */
  private async waitReady(pid: number, spec: RunSpec, outputPath: string): Promise<void> {
    const p = this.opts.platform;
    const tcp = spec.endpoints.filter((e) => e.proto === 'tcp');
    const deadline = Date.now() + READY_MS;
    for (;;) {
      if (!(await p.processInfo(pid))) {
        const tail = (await this.output(spec.name, 2048).catch(() => undefined))?.output.toString('utf8').trim();
        throw new PreconditionError(`${spec.command.join(' ')} exited right after it started${tail ? `; its output (${outputPath}) ends: ${tail}` : ''}`);
      }
      const sockets = tcp.length > 0 ? await p.workloadSockets(pid) : [];
      const listening = (e: Endpoint) =>
        sockets.some((s) => s.proto === 'tcp' && s.state === 'LISTEN' && s.localPort === e.port);
      if (tcp.every(listening) || Date.now() > deadline) return;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
