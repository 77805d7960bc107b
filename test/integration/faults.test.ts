/**
 * The fault matrix's CI subset (bench/faults-report.ts QUICK_CASES): at least one case per
 * killed part (controller, source agent, target agent, nats-server; and a standby taking over),
 * each checked on the real lab with 200 live connections as `npm run bench -- faults` does.
 */
import { afterAll, beforeAll, describe, it } from 'vitest';
import { runFaultCase, setupFaultEnv, teardownFaultEnv, type FaultEnv } from '../../bench/fault-case.js';
import { QUICK_CASES } from '../../bench/faults-report.js';
import { expectSafe } from '../support/intact.js';

const CONNECTIONS = 200;
/** A case: the kill, the part's restart (an agent's took up to 25 s here), the migration's end, the connections settling. */
const CASE_TIMEOUT_MS = 600_000;

describe('fault matrix, CI subset', () => {
  let env: FaultEnv | undefined;

  beforeAll(async () => {
    env = await setupFaultEnv({ connections: CONNECTIONS, log: (l) => process.stderr.write(`${l}\n`) });
  });

  afterAll(async () => {
    await teardownFaultEnv(env);
  });

  for (const c of QUICK_CASES) {
    it(`${c.killed} killed ${c.point}${c.standby ? ' (a standby takes over)' : ''}: safe`, async () => {
      expectSafe(await runFaultCase(env!, c), CONNECTIONS);
    }, CASE_TIMEOUT_MS);
  }
});
