/** `godwit migrate --wait` progress: plain lines off a terminal, one line per phase updated in place on one. */
import { describe, expect, it } from 'vitest';
import { PhaseProgress } from '../../controller/cli-progress.js';
import type { MigrationEvent__Output } from '../../proto/gen/godwit/v1/MigrationEvent.js';

const ev = (phase: string, kind: string, durationMs = 0, detail = '') => ({ migrationId: 'm-1', phase, kind, atMs: 0, durationMs, detail, migration: null }) as unknown as MigrationEvent__Output;
const run = (isTTY: boolean) => {
  let text = '';
  const p = new PhaseProgress({ isTTY, write: (t: string) => (text += t) });
  for (const e of [ev('PENDING', 'SNAPSHOT'), ev('PENDING', 'SUCCEEDED'), ev('LOCK', 'STARTED'), ev('LOCK', 'SUCCEEDED', 3.2), ev('DUMP', 'STARTED'), ev('DUMP', 'FAILED', 40, 'criu dump failed'), ev('FAILED', 'FAILED', 0, 'criu dump failed')]) p.event(e);
  p.end();
  return text;
};

describe('PhaseProgress', () => {
  it('writes one plain line per finished phase when not on a terminal', () => {
    expect(run(false).split('\n')).toEqual(['LOCK      ok          3 ms', 'DUMP      FAILED     40 ms  criu dump failed', 'FAILED    FAILED  criu dump failed', '']);
  });

  it('on a terminal, shows the running phase and replaces its line with the result', () => {
    const text = run(true);
    expect(text).toContain('\r\x1b[2KLOCK      ...');
    expect(text).toContain('\r\x1b[2KLOCK      ok          3 ms\n');
    expect(text.split('\n').filter((l) => l.includes('ok') || l.includes('FAILED'))).toHaveLength(2 + 1);
  });
});
