/**
 * The churn benchmark at its CI size (bench/follow-churn.ts): a routed lab of three hosts, one
 * echo workload answering TCP and UDP on one endpoint, a TCP VIP and a UDP VIP in front of it,
 * 50 TCP connections and 50 UDP flows checking every echo while the controller migrates the
 * workload a -> b -> c -> a. Nothing may break or be lost, and every migration must end DONE.
 * runChurn brings the lab up and takes it down itself, also when something fails.
 */
import { describe, expect, it } from 'vitest';
import { CHURN_SIZES, churnJsonLine, renderChurnTable, runChurn, type ChurnResult } from '../../bench/follow-churn.js';

describe('follow churn (CI size): migrations a -> b -> c -> a with TCP connections and UDP flows through VIPs', () => {
  it('breaks no flow, loses no byte, and every migration is DONE', async () => {
    const r: ChurnResult = await runChurn({ ...CHURN_SIZES.ci, say: (l) => process.stderr.write(l + '\n') });
    process.stderr.write(renderChurnTable(r) + '\n' + JSON.stringify(churnJsonLine(r)) + '\n');
    expect(
      r.hops.map((h) => `${h.from}->${h.to} ${h.phase}${h.error ? `: ${h.error}` : ''}`),
      'every migration DONE',
    ).toEqual(['a->b DONE', 'b->c DONE', 'c->a DONE']);
    expect(
      { failedMigrations: r.failedMigrations, brokenTcp: r.brokenTcp, brokenUdp: r.brokenUdp, bytesLost: r.bytesLost, tcpDrained: r.tcpDrained },
      r.notes.join('\n'),
    ).toEqual({ failedMigrations: 0, brokenTcp: 0, brokenUdp: 0, bytesLost: 0, tcpDrained: true });
    // Traffic really flowed through both VIPs the whole time.
    expect(r.udpSent).toBeGreaterThan(0);
    expect(r.udpLost).toBeLessThan(r.udpSent);
  }, 600_000);
});
