import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checkFiles, fileIdentity, treeFiles } from '../../agent/linux/tree-files.js';

const dir = mkdtempSync(join(tmpdir(), 'godwit-tree-files-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('the files a tree uses, and the target\'s comparison', () => {
  it("reads an executable's ELF build-id as readelf does", async () => {
    const readelf = /Build ID: ([0-9a-f]+)/.exec(execFileSync('readelf', ['-n', process.execPath], { encoding: 'utf8' }))?.[1];
    expect(readelf).toBeTruthy();
    expect((await fileIdentity(process.execPath)).buildId).toBe(readelf);
  });

  it('lists this process\'s executable (with its build-id) and the libraries it maps', async () => {
    const files = await treeFiles([process.pid]);
    const exe = files.find((f) => f.usage === 'exe');
    expect(exe?.buildId).toMatch(/^[0-9a-f]{40}$/);
    expect(files.some((f) => /libc\.so/.test(f.path) && f.usage === 'mapped' && f.buildId !== '')).toBe(true);
    expect(files.every((f) => !f.path.startsWith('/proc/') && !f.path.startsWith('/dev/'))).toBe(true);
  });

  it('names a missing file, another size, and other content', async () => {
    const same = join(dir, 'same');
    const grown = join(dir, 'grown');
    writeFileSync(same, 'abc');
    writeFileSync(grown, 'abcdef');
    const base = { buildId: '', sha256: '', pid: 1, usage: 'fd 3' };
    const sha = (await fileIdentity(same)).sha256;
    const r = await checkFiles([
      { ...base, path: same, size: 3 },
      { ...base, path: grown, size: 3 },
      { ...base, path: join(dir, 'absent'), size: 1 },
      { ...base, path: same, size: 3, sha256: 'f'.repeat(64), usage: 'mapped' },
      { ...base, path: same, size: 3, sha256: sha, usage: 'mapped' },
    ]);
    expect(r.map((m) => m.problem)).toEqual(['size 6 here, 3 on the source', 'missing', 'content differs (SHA-256)']);
  });
});
