/**
 * Debian's nginx (master + 2 workers), started with `godwit run`, moved a -> b -> a by name while
 * keep-alive clients check every response body: no request fails, no connection is reopened,
 * and afterwards exactly one master and two workers run, on a.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { labUp, type Lab } from '../../lab/lab.js';
import { startHttpKeepAlive, type HttpKeepAlive } from '../../lab/http-keepalive.js';
import { NGINX_BODY_PREFIX, nginxWorkload } from '../../lab/nginx.js';
import { stopWorkload } from '../../lab/workload.js';
import { godwitCli } from '../support/godwit-cli.js';
import { processesNamed } from '../support/lab-state.js';

const PORT = 8080;
const CONNECTIONS = 8;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function childrenOf(pid: number): Promise<number[]> {
  return (await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '')).trim().split(/\s+/).filter(Boolean).map(Number);
}

async function cmdline(pid: number): Promise<string> {
  return (await readFile(`/proc/${pid}/cmdline`, 'utf8')).replace(/\0/g, ' ').trim();
}

describe('nginx under godwit run', () => {
  let lab: Lab;
  let clients: HttpKeepAlive | undefined;
  let pid = 0;

  beforeAll(async () => {
    lab = await labUp({ hosts: ['a', 'b'] });
  });

  afterAll(async () => {
    await clients?.quit();
    if (pid) await stopWorkload(pid).catch(() => undefined);
    await lab?.down();
  });

  it('moves a -> b -> a with every keep-alive request answered and checked', async () => {
    const address = lab.topology.workloadAddress(0);
    const command = nginxWorkload(join(lab.dir, 'nginx'), address, PORT);
    const started = JSON.parse((await godwitCli(lab, ['--json', 'run', '--host', 'a', '--name', 'nginx', '--endpoint', `tcp://${address}:${PORT}`, '--', ...command])).stdout) as { pid: number };
    pid = started.pid;

    clients = startHttpKeepAlive(lab.topology.client, { address, port: PORT }, CONNECTIONS, NGINX_BODY_PREFIX);
    await clients.ready;
    await sleep(1000);
    const hops: { to: string; freezeMs: number; id: string; imageBytes: number; phases: Record<string, number> }[] = [];
    for (const to of ['b', 'a']) {
      const m = JSON.parse((await godwitCli(lab, ['--json', 'migrate', '--workload', 'nginx', '--to', to, '--wait'])).stdout) as {
        id: string;
        phase: string;
        error: string;
        restoredPid: number;
        freezeMs: number;
        imageBytes: string;
        timings: { phase: string; durationMs: number }[];
      };
      expect(m.error).toBe('');
      expect(m.phase).toBe('DONE');
      pid = m.restoredPid;
      hops.push({ to, freezeMs: Math.round(m.freezeMs), id: m.id, imageBytes: Number(m.imageBytes), phases: Object.fromEntries(m.timings.map((t) => [t.phase, Math.round(t.durationMs)])) });
      await sleep(1000);
    }
    const final = await clients.stop();
    console.log(JSON.stringify({ nginx: { ...final, hops } }));
    expect(final.errors).toEqual([]);
    expect(final.failures).toBe(0);
    expect(final.bodyMismatches).toBe(0);
    expect(final.reconnects).toBe(0);
    expect(final.requests).toBeGreaterThan(1000);

    // One master (godwit-init's child) and two workers (the master's), on a only.
    const [master, ...others] = await childrenOf(pid);
    expect(others).toEqual([]);
    expect(await cmdline(master)).toMatch(/^nginx: master process/);
    const workers = await childrenOf(master);
    expect(workers).toHaveLength(2);
    for (const w of workers) expect(await cmdline(w)).toBe('nginx: worker process');
    const running = await processesNamed(lab, 'nginx');
    expect(running.get('a')?.sort()).toEqual([master, ...workers].sort());
    expect(running.get('b')).toEqual([]);

    // nginx's own log lines, from before the moves, in the workload's output.
    const logs = (await godwitCli(lab, ['logs', 'nginx'])).stdout;
    expect(logs).toContain('start worker processes');
  });
});
