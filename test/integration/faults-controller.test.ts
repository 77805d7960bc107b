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
import { runFaultCase, setupFaultEnv, teardownFaultEnv, type FaultCase, type FaultEnv, type FaultRow } from '../../bench/fault-case.js';

const CONNECTIONS = 200;
/** A case: the kill, the part's restart (an agent's took up to 25 s here), the migration's end, the connections settling. */
const CASE_TIMEOUT_MS = 600_000;

function expectSafe(row: FaultRow) {
  const summary = JSON.stringify(row);
  expect(row.killedAtPoint, summary).toBe(true);
  expect(['DONE', 'FAILED'], summary).toContain(row.outcome);
  expect(row.exactlyOnce, summary).toBe(true);
  expect(row.alive, summary).toBe(CONNECTIONS);
  expect(row.bytesLost, summary).toBe(0);
  expect(row.bytesDuplicated, summary).toBe(0);
  expect(row.leftovers, summary).toEqual([]);
  expect(row.eventsInOrder, summary).toBe(true);
  expect(row.safe, summary).toBe(true);
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
      expectSafe(row);
      expect(row.outcome, JSON.stringify(row)).toBe(c.expect);
    }, CASE_TIMEOUT_MS);
  }

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
