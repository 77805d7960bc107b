/**
 * Post-copy with real parts: a lab of namespace hosts, CRIU's lazy dump, page server and
 * lazy-pages daemon, a workload holding 64 MiB of memory it keeps rewriting, and a bystander
 * client checking every echoed byte. The memory is checked page by page after every move.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isServiceError } from '../../lib/rpc.js';
import { endpointToWire } from '../../lib/wire.js';
import { migrateHop, settle } from '../../lab/hop.js';
import { labUp, type Lab } from '../../lab/lab.js';
import { memcheck, startMemoryWorkload, type MemoryWorkload } from '../../lab/memory-workload.js';
import { startTraffic, type TrafficHandle } from '../../lab/traffic.js';
import { startWorkload, stopWorkload } from '../../lab/workload.js';
import { addressesOn, lockEntries, processesNamed } from '../support/lab-state.js';

const MEMORY_MIB = 64;
const CONNECTIONS = 100;
const PORT = 7000;
const CONTROL_PORT = 7001;

describe('post-copy migration of a memory-heavy workload', () => {
  let lab: Lab;
  let traffic: TrafficHandle;
  let w: MemoryWorkload;
  let home = 'a';

  beforeAll(async () => {
    lab = await labUp({ hosts: ['a', 'b'] });
    w = await startMemoryWorkload(lab, 'a', { port: PORT, controlPort: CONTROL_PORT, memoryMiB: MEMORY_MIB });
    traffic = startTraffic(lab.topology.client, { address: w.endpoint.address, port: PORT }, { connections: CONNECTIONS });
    await traffic.ready;
  });

  afterAll(async () => {
    await traffic?.stop();
    await lab?.down();
  });

  async function expectRunsOnceOn(host: string) {
    const running = [...(await processesNamed(lab, 'echo-server')).entries()];
    expect(running.flatMap(([, pids]) => pids), 'the workload runs exactly once').toEqual([w.pid]);
    expect(running.find(([h]) => h === host)?.[1]).toEqual([w.pid]);
    for (const h of ['a', 'b']) {
      expect(await lockEntries(lab, h), `no lock left on ${h}`).toEqual([]);
      expect((await addressesOn(lab, h)).includes(w.endpoint.address), `address on ${h}`).toBe(h === host);
    }
  }

  async function move(postCopy: boolean) {
    const to = home === 'a' ? 'b' : 'a';
    const before = await memcheck(lab, w);
    expect(before.pagesBad).toBe(0);
    const hop = await migrateHop(lab.controller, traffic, { from: home, to, pid: w.pid, endpoints: [w.endpoint], postCopy });
    expect(hop.phase, hop.error).toBe('DONE');
    w.pid = hop.pid;
    home = to;
    const after = await memcheck(lab, w);
    expect(after.memoryMiB).toBe(MEMORY_MIB);
    expect(after.pagesBad, `first bad page ${after.firstBadPage}`).toBe(0);
    // The workload went on rewriting its memory across the move.
    expect(after.writes).toBeGreaterThan(before.writes);
    expect(hop.alive).toBe(CONNECTIONS);
    expect(hop.bytesLost).toBe(0);
    expect(hop.corrupted).toBe(0);
    await expectRunsOnceOn(home);
    return { hop, migration: await lab.controller.getMigration(hop.migrationId) };
  }

  it('moves it without post-copy: every page in the image, memory intact', async () => {
    const { hop, migration } = await move(false);
    expect(hop.imageBytes).toBeGreaterThan(MEMORY_MIB * 1024 * 1024);
    expect(migration.request?.postCopy).toBe(false);
    expect(migration.lazyPagesMs).toBe(0);
  });

  it('moves it with post-copy: the image leaves the memory behind, the target fetches it, memory intact', async () => {
    const { hop, migration } = await move(true);
    expect(migration.request?.postCopy).toBe(true);
    // The memory did not travel in the image: the target fetched it from the source's page server.
    expect(hop.imageBytes).toBeLessThan(MEMORY_MIB * 1024 * 1024);
    // CLEANUP waited for the source's page server to end: every page reached the target.
    expect(migration.lazyPagesMs).toBeGreaterThan(0);
    expect(migration.warnings).toEqual([]);
  });

  it('the source agent killed while it sends the image: started again, it follows the page server it left serving, and the move ends DONE with memory intact', async () => {
    const from = home;
    const to = from === 'a' ? 'b' : 'a';
    const before = await memcheck(lab, w);
    const window = await traffic.window();
    const m = await lab.controller.migrate({ sourceHost: from, targetHost: to, workload: { pid: w.pid, endpoints: [endpointToWire(w.endpoint)] }, postCopy: true });
    // The lazy dump is written and its page server serves: the image is on its way to the target.
    const arriving = join(lab.dir, 'hosts', to, 'images', m.id);
    const deadline = Date.now() + 120_000;
    while ((await readdir(arriving).catch(() => [])).length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    await lab.crash(`agent-${from}`);
    await lab.restart(`agent-${from}`);
    const end = await lab.controller.wait(m.id);
    expect(end.phase, end.error).toBe('DONE');
    w.pid = end.restoredPid;
    home = to;
    const agentLog = await readFile(join(lab.dir, 'logs', `agent-${from}.log`), 'utf8');
    // Release waited for the page server the killed agent had started (not "unknown to this agent").
    expect(agentLog, agentLog.split('\n').filter((l) => /post-copy|page server|lazy/i.test(l)).slice(-8).join('\n')).toMatch(/found the page server an earlier run of this agent started/);
    expect(end.lazyPagesMs).toBeGreaterThan(0);
    const after = await memcheck(lab, w);
    expect(after.pagesBad, `first bad page ${after.firstBadPage}`).toBe(0);
    expect(after.writes).toBeGreaterThan(before.writes);
    await settle(traffic, 60_000);
    const now = await traffic.window();
    expect(now.alive).toBe(CONNECTIONS);
    expect(now.bytesLost - window.bytesLost).toBe(0);
    expect(now.corrupted - window.corrupted).toBe(0);
    await expectRunsOnceOn(home);
  }, 300_000);

  it('a post-copy restore that fails for real rolls back: the source fetches its memory back and restores it intact', async () => {
    const target = home === 'a' ? 'b' : 'a';
    // Something already listens on the workload's port on the target: CRIU's restore fails there.
    const squatter = await startWorkload(lab.host(target), '0.0.0.0', PORT);
    try {
      const hop = await migrateHop(lab.controller, traffic, { from: home, to: target, pid: w.pid, endpoints: [w.endpoint], postCopy: true });
      expect(hop.phase).toBe('FAILED');
      const m = await lab.controller.getMigration(hop.migrationId);
      expect(m.failedPhase).toBe('RESTORE');
      expect(m.restoredPid).toBeGreaterThan(1);
      w.pid = m.restoredPid;
      expect(hop.alive).toBe(CONNECTIONS);
      expect(hop.bytesLost).toBe(0);
      expect(hop.corrupted).toBe(0);
    } finally {
      await stopWorkload(squatter.pid);
    }
    const after = await memcheck(lab, w);
    expect(after.pagesBad, `first bad page ${after.firstBadPage}`).toBe(0);
    await expectRunsOnceOn(home);
    const final = await traffic.drain(15_000);
    expect(final.drained).toBe(true);
    expect(final.alive).toBe(CONNECTIONS);
    expect(final.bytesLost).toBe(0);
    expect(final.corrupted).toBe(0);
  }, 300_000);
});

describe('post-copy to a host without userfaultfd', () => {
  let lab: Lab;
  let w: MemoryWorkload;

  beforeAll(async () => {
    // Every host of this kind has userfaultfd: the agents are told to report it absent.
    lab = await labUp({ hosts: ['a', 'b'], agentFlags: ['--assume-no-userfaultfd'] });
    w = await startMemoryWorkload(lab, 'a', { port: PORT, controlPort: CONTROL_PORT, memoryMiB: 8 });
  });

  afterAll(async () => {
    await lab?.down();
  });

  it('is refused with FAILED_PRECONDITION naming the host and why, before anything is locked', async () => {
    const before = (await lab.controller.listMigrations()).migrations.length;
    const err = await lab.controller
      .migrate({ sourceHost: 'a', targetHost: 'b', workload: { pid: w.pid, endpoints: [endpointToWire(w.endpoint)] }, postCopy: true })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    if (!isServiceError(err)) throw new Error(`expected a gRPC error, got ${JSON.stringify(err)}`);
    expect(status[err.code]).toBe('FAILED_PRECONDITION');
    expect(err.details).toMatch(/target host "b" cannot take a post-copy migration: .*userfaultfd/);
    // Nothing was recorded, so no LOCK either; no host holds a lock; the workload runs on.
    expect((await lab.controller.listMigrations()).migrations.length).toBe(before);
    for (const h of ['a', 'b']) expect(await lockEntries(lab, h)).toEqual([]);
    expect((await memcheck(lab, w)).pagesBad).toBe(0);
    // Without post-copy the same move is accepted and works.
    const hop = await migrateHop(lab.controller, undefined, { from: 'a', to: 'b', pid: w.pid, endpoints: [w.endpoint] });
    expect(hop.phase, hop.error).toBe('DONE');
  });
});
