/**
 * The follow benchmark's handoff kind end to end, small: the real steering object loaded under
 * two pin folders, real batch syscalls, the real file. Every entry must arrive (count, digest,
 * lost 0), the JSON lines must carry issue 9's fields, and no pin may be left behind. Times are
 * reported, never asserted (a shared CI machine).
 */
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { execCommand } from '../../lib/exec.js';
import { REPO_ROOT } from '../../lib/rpc.js';

const ENTRIES = [1_000, 5_000];

describe('bench follow --kinds handoff (CI size)', () => {
  const results = mkdtempSync(join(tmpdir(), 'godwit-follow-bench-'));
  afterAll(() => rmSync(results, { recursive: true, force: true }));

  it('hands off every entry at each size, reports the times, leaves no pin', async () => {
    await execCommand('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: REPO_ROOT, allowFailure: true, timeoutMs: 120_000 });
    const r = await execCommand(
      process.execPath,
      [join(REPO_ROOT, 'dist', 'bench', 'main.js'), 'follow', '--kinds', 'handoff', '--entries', ENTRIES.join(','), '--runs', '1', '--rnat', '--json', '--results', results],
      { allowFailure: true, timeoutMs: 300_000 },
    );
    expect(r.exitCode, r.stderr).toBe(0);
    const rows = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(rows.map((x) => x.entries)).toEqual(ENTRIES);
    for (const row of rows) {
      expect(Object.keys(row).slice(0, 5)).toEqual(['kind', 'entries', 'exportMs', 'importMs', 'lost']);
      expect(row).toMatchObject({ kind: 'handoff', lost: 0, digestOk: true, rnat: row.entries, runs: 1 });
      expect(row.exportMs as number).toBeGreaterThan(0);
      expect(row.importMs as number).toBeGreaterThan(0);
      expect(row.fileBytes as number).toBeGreaterThan((row.entries as number) * (16 + 12 + 16 + 8));
    }
    expect(readFileSync(join(results, 'follow.jsonl'), 'utf8').trim().split('\n')).toHaveLength(ENTRIES.length);
    expect(readFileSync(join(results, 'follow-handoff.svg'), 'utf8')).toContain('data-series="export + import"');
    expect(existsSync('/sys/fs/bpf') && readdirSync('/sys/fs/bpf').filter((d) => d.startsWith('godwit-bench-follow-'))).toEqual([]);
  }, 320_000);
});
