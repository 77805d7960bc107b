/**
 * The one case no controller can answer by itself: both hosts lost while the migration is undone.
 * The workload is dumped (it runs nowhere), then both agents die (SIGKILL, the real processes);
 * the rollback cannot reach them, so the migration ends in NEEDS_ATTENTION saying where the image
 * is and which locks hold until when: never silently, never FAILED as if it had been undone.
 * Once the operator brings the agents back, RetryMigration (`godwit retry`) rolls it back: the
 * workload runs on its source again, exactly once, every connection alive and every byte checked.
 */
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reachPoint, setupFaultEnv, teardownFaultEnv, verdict, waitForEnd, type FaultEnv } from '../../bench/fault-case.js';
import { endpointToWire } from '../../lib/wire.js';
import { expectSafe } from '../support/intact.js';

const CONNECTIONS = 100;
/**
 * How long a phase waits for a lost host here (the default is 90 s): the rollback gives up soon,
 * and the retried one still outlasts a reconnect backoff (at most 2 s, lib/rpc.ts).
 */
const HOST_WAIT_MS = 6_000;

describe('both hosts lost during the rollback', () => {
  let env: FaultEnv | undefined;

  beforeAll(async () => {
    env = await setupFaultEnv({ connections: CONNECTIONS, controllerFlags: ['--host-wait-ms', String(HOST_WAIT_MS)], log: (l) => process.stderr.write(`${l}\n`) });
  }, 300_000);

  afterAll(async () => {
    await teardownFaultEnv(env);
  });

  it('ends in NEEDS_ATTENTION with what is known; retried once the agents are back, it rolls back with every connection and byte intact', async () => {
    const { lab } = env!;
    const api = lab.controller;
    const from = env!.place.host;
    const to = lab.topology.hosts.map((h) => h.name).find((h) => h !== from)!;
    const before = await env!.traffic.window();
    const m = await api.migrate({ sourceHost: from, targetHost: to, workload: { pid: env!.place.pid, endpoints: [endpointToWire(env!.endpoint)] } });
    expect(await reachPoint(env!, m.id, 'after-dump', from, to)).toBe(true);
    await lab.crash(`agent-${from}`);
    await lab.crash(`agent-${to}`);

    const stuck = await waitForEnd(env!, m.id);
    expect(stuck.phase, JSON.stringify(stuck)).toBe('NEEDS_ATTENTION');
    const recorded = await api.getMigration(m.id);
    expect(recorded.attention).toContain(`images/${m.id}`);
    expect(recorded.attention).toMatch(/held until \d{4}-\d\d-\d\dT/);
    expect(recorded.error).toMatch(/rollback failed/);

    // Asked while the agents are gone: refused, naming what to do, and nothing changes.
    const early = await api.retryMigration(m.id).then(() => undefined, (e: unknown) => e);
    expect((early as { code: number }).code).toBe(status.FAILED_PRECONDITION);
    expect((early as { details: string }).details).toMatch(/bring its agent back/);
    expect((await api.getMigration(m.id)).phase).toBe('NEEDS_ATTENTION');
    // A migration that is not in NEEDS_ATTENTION cannot be retried.
    const missing = await api.retryMigration('m-no-such-migration').then(() => undefined, (e: unknown) => e);
    expect((missing as { code: number }).code).toBe(status.NOT_FOUND);

    // The operator brings both agents back; the controller hears them, then the retry is taken.
    await lab.restart(`agent-${from}`);
    await lab.restart(`agent-${to}`);
    let retried: Awaited<ReturnType<typeof api.retryMigration>> | undefined;
    const deadline = Date.now() + 60_000;
    while (!retried) {
      retried = await api.retryMigration(m.id).catch(async (err: unknown) => {
        if (Date.now() > deadline || !/heartbeat|no agent registered/.test(String((err as { details?: string }).details))) throw err;
        await new Promise((r) => setTimeout(r, 500));
        return undefined;
      });
    }
    expect(retried.phase).toBe('ROLLBACK');
    const end = await api.wait(m.id);
    expect(end.phase, JSON.stringify(end)).toBe('FAILED');
    expect(end.warnings.join('\n')).toMatch(/NEEDS_ATTENTION retried by request/);
    const again = await api.retryMigration(m.id).then(() => undefined, (e: unknown) => e);
    expect((again as { code: number }).code).toBe(status.FAILED_PRECONDITION);

    const v = await verdict(env!, { id: m.id, from, to, end: { phase: String(end.phase), error: end.error }, before });
    expect(v.survived, JSON.stringify(v)).toBe(from);
    expectSafe(v, CONNECTIONS);
  }, 600_000);
});
