/**
 * The controller killed (SIGKILL, the real process) at points of a live migration and started
 * again, or replaced by a standby: the migration is resumed from its KV record and ends DONE or
 * FAILED, the workload runs exactly once, 200 connections live with 0 bytes lost or duplicated,
 * and nothing is left on the hosts (bench/fault-case.ts checks it all from the hosts themselves).
 */
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentHandle } from '../../controller/agent-client.js';
import { isServiceError } from '../../lib/rpc.js';
import { useSecurity } from '../../lib/tls.js';
import { handBackLead, runFaultCase, setupFaultEnv, startStandby, STANDBY_SERVICE, teardownFaultEnv, type FaultCase, type FaultEnv, type FaultRow } from '../../bench/fault-case.js';
import { endpointToWire } from '../../lib/wire.js';
import { expectSafe } from '../support/intact.js';

const CONNECTIONS = 200;
/** A case: the kill, the part's restart (an agent's took up to 25 s here), the migration's end, the connections settling. */
const CASE_TIMEOUT_MS = 600_000;

function expectSafeAt(row: FaultRow) {
  expect(row.killedAtPoint, JSON.stringify(row)).toBe(true);
  expect(['DONE', 'FAILED'], JSON.stringify(row)).toContain(row.outcome);
  expectSafe(row, CONNECTIONS);
}

describe('controller crashes mid-migration', () => {
  let env: FaultEnv | undefined;

  beforeAll(async () => {
    env = await setupFaultEnv({ connections: CONNECTIONS, log: (l) => process.stderr.write(`${l}\n`) });
  });

  afterAll(async () => {
    await teardownFaultEnv(env);
  });

  const cases: (FaultCase & { expect: string })[] = [
    // Before the pivot: the new controller rolls back; the workload runs on the source again.
    { killed: 'controller', point: 'after-lock', standby: false, expect: 'FAILED' },
    { killed: 'controller', point: 'after-dump', standby: false, expect: 'FAILED' },
    // At the pivot: RESTORE is asked again and the target answers with the restore it did.
    { killed: 'controller', point: 'during-restore', standby: false, expect: 'DONE' },
    // A standby takes over instead of the controller coming back.
    { killed: 'controller', point: 'after-restore', standby: true, expect: 'DONE' },
  ];

  for (const c of cases) {
    it(`killed ${c.point}${c.standby ? ', a standby takes over' : ', restarted'}: ${c.expect}, exactly once, every byte`, async () => {
      const row = await runFaultCase(env!, c);
      expectSafeAt(row);
      expect(row.outcome, JSON.stringify(row)).toBe(c.expect);
    }, CASE_TIMEOUT_MS);
  }

  it('a standby serves WatchMigration: it follows the leader\'s migration on NATS, phase by phase, to its end', async () => {
    const e = env!;
    await startStandby(e);
    try {
      const leader = e.controllers.get(e.leader)!.api;
      const standby = e.controllers.get(STANDBY_SERVICE)!.api;
      const from = e.place.host;
      const to = e.lab.topology.hosts.map((h) => h.name).find((h) => h !== from)!;
      // Writes are the leader's, steering changes too: UNAVAILABLE naming it, and nothing stored.
      for (const write of [
        () => standby.call('CreateService', { service: { vip: '198.18.9.9', port: 80 } }, { retry: false }),
        () => standby.call('Migrate', { sourceHost: from, targetHost: to, workload: { pid: e.place.pid, endpoints: [endpointToWire(e.endpoint)] } }, { retry: false }),
      ]) {
        const err = await write().then(() => undefined, (x: unknown) => x);
        expect((err as { code: number }).code).toBe(status.UNAVAILABLE);
        expect((err as { details: string }).details).toMatch(/standby; the leader is controller/);
      }
      expect((await leader.call('ListServices', {})).services.some((s) => s.vip === '198.18.9.9')).toBe(false);
      const m = await leader.migrate({ sourceHost: from, targetHost: to, workload: { pid: e.place.pid, endpoints: [endpointToWire(e.endpoint)] } });
      const seen: string[] = [];
      for await (const ev of standby.watch(m.id)) seen.push(`${ev.phase}/${ev.kind}`);
      expect(seen[0]).toMatch(/\/SNAPSHOT$/);
      expect(seen.at(-1)).toBe('DONE/SUCCEEDED');
      // Every forward phase after the snapshot's, each once.
      const succeeded = seen.filter((s) => s.endsWith('/SUCCEEDED')).map((s) => s.split('/')[0]);
      expect(new Set(succeeded).size).toBe(succeeded.length);
      expect(succeeded).toEqual(expect.arrayContaining(['RESTORE', 'UNLOCK', 'CLEANUP', 'DONE']));
      // Its reads come from KV as the leader records it (reloaded every second).
      const deadline = Date.now() + 10_000;
      while ((await standby.getMigration(m.id)).phase !== 'DONE' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
      expect((await standby.getMigration(m.id)).phase).toBe('DONE');
    } finally {
      await handBackLead(e);
    }
  }, CASE_TIMEOUT_MS);

  // Last: it leaves host a's agent fenced above every real controller's token.
  it('an agent refuses a command carrying an older fencing token than one it has seen: FAILED_PRECONDITION', async () => {
    const { lab } = env!;
    // Only the controller may command an agent (lib/authz.ts): these handles speak as it.
    if (lab.pki) useSecurity(lab.pki.security('controller'));
    const newer = new AgentHandle('a', lab.agentAddress('a'), () => '9000000000000');
    const older = new AgentHandle('a', lab.agentAddress('a'), () => '8999999999999');
    useSecurity(lab.security);
    try {
      // An Abort of a migration the agent never saw changes nothing, and admits the newer token.
      await newer.abort('m-fencing-check');
      const err = await older.abort('m-fencing-check').then(() => undefined, (e: unknown) => e);
      expect(isServiceError(err)).toBe(true);
      expect((err as { code: number }).code).toBe(status.FAILED_PRECONDITION);
      expect((err as { details: string }).details).toMatch(/fencing token 8999999999999: a newer leader \(token 9000000000000\)/);
      // The agent remembers it across a restart.
      await lab.crash('agent-a');
      await lab.restart('agent-a');
      const again = await older.abort('m-fencing-check').then(() => undefined, (e: unknown) => e);
      expect((again as { code: number }).code).toBe(status.FAILED_PRECONDITION);
    } finally {
      newer.close();
      older.close();
    }
  }, CASE_TIMEOUT_MS);
});
