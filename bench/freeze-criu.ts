/**
 * CRIU alone: the floor under godwit's freeze. The same workload as a migration (the lab's echo
 * server with N connections from the lab's client) is dumped and restored on one host by calling
 * CRIU directly, with the flags the agent uses (criu.ts) and nothing of godwit in between: no
 * lock, no transfer, no RPC. Its connections are idle while this runs (the client sent once and
 * waits): without a lock, a segment arriving while the process is gone would be answered with a
 * reset. The restored workload must be running afterwards; its bytes are not checked here (the
 * migration rows check every byte).
 */
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { nsExecutor } from '../agent/linux/netns-exec.js';
import { execCommand } from '../lib/exec.js';
import type { Lab } from '../lab/lab.js';
import { startTraffic } from '../lab/traffic.js';
import { processAlive } from '../lab/workload.js';
import type { Cleanup } from './lab-cleanup.js';
import { emptyRow, withOverhead, type FreezeRow } from './freeze-report.js';

const IDLE_INTERVAL_MS = 3_600_000;
const CRIU = process.env.GODWIT_CRIU ?? '/opt/godwit/criu/bin/criu';

export interface CriuAloneSpec {
  /** Where the workload runs (where the steering table places its address). */
  host: string;
  connections: number;
  run: number;
  port: number;
  logLevel: number;
  /** Starts the workload on a host (the plain echo server, or one holding memory). */
  start: (lab: Lab, host: string) => Promise<{ pid: number }>;
  memoryMiB: number;
}

export async function criuAlone(lab: Lab, spec: CriuAloneSpec, cleanup: Cleanup): Promise<FreezeRow> {
  const row = emptyRow({ kind: 'criu-alone', connections: spec.connections, memoryMiB: spec.memoryMiB, postCopy: false, run: spec.run, criuLogLevel: spec.logLevel });

  const dir = join(lab.dir, 'criu-alone');
  try {
    const { pid } = await spec.start(lab, spec.host);
    cleanup.pids.push(pid);
    if (spec.connections > 0) {
      const vip = lab.topology.workloadAddress(0);
      const traffic = startTraffic(lab.topology.client, { address: vip, port: spec.port }, { connections: spec.connections, intervalMs: IDLE_INTERVAL_MS, connectTimeoutMs: 120_000 });
      cleanup.traffic = traffic;
      await traffic.ready;
    }
    // Let the first chunk's echo come back: the connections are quiet from here on.
    await new Promise((r) => setTimeout(r, 1_000));
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    const exec = nsExecutor(lab.host(spec.host).netns, execCommand);
    const v = `-v${spec.logLevel}`;
    let t0 = performance.now();
    await exec(CRIU, ['dump', '--tree', String(pid), '--images-dir', dir, '--tcp-established', '--network-lock', 'skip', '--log-file', 'dump.log', v], { cwd: dir });
    row.criuDumpMs = performance.now() - t0;
    const pidFile = join(dir, 'restored.pid');
    t0 = performance.now();
    await exec(CRIU, ['restore', '--images-dir', dir, '--restore-detached', '--pidfile', pidFile, '--tcp-established', '--network-lock', 'skip', '--log-file', 'restore.log', v], { cwd: dir });
    row.criuRestoreMs = performance.now() - t0;
    const restored = Number(readFileSync(pidFile, 'utf8').trim());
    cleanup.pids.push(restored);
    row.ok = processAlive(restored);
    if (!row.ok) row.error = `the restored workload (pid ${restored}) is not running`;
    row.survived = row.ok ? spec.connections : 0;
  } catch (e) {
    row.error = e instanceof Error ? e.message.slice(0, 300) : String(e);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  row.freezeMs = row.criuDumpMs + row.criuRestoreMs;
  return { ...row, ...withOverhead(row) };
}
