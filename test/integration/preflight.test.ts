/**
 * Preflight refuses, at Migrate and before anything is locked or frozen, what CRIU would fail on
 * after the freeze, each reached for real on this machine: a process of another user (the agents
 * lack CAP_SYS_RESOURCE here), SysV shared memory in the host's IPC namespace, a listener on the
 * host's own address, a file that exists only on the source (hosts with folders of their own), a
 * CPU feature the target lacks (given to the target's probe). Then what does move: SysV memory
 * in the workload's own IPC namespace (godwit run), its content verified; and a CRIU failure
 * preflight cannot foresee (an io_uring instance), explained by CRIU's first error line and the
 * full log kept for `godwit logs`.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execCommand } from '../../lib/exec.js';
import { isServiceError, REPO_ROOT } from '../../lib/rpc.js';
import type { MigrateRequest } from '../../proto/gen/godwit/v1/MigrateRequest.js';
import { labUp, privateDir, type Lab } from '../../lab/lab.js';
import { nsenterArgs } from '../../lab/topology.js';
import { processAlive, stopWorkload } from '../../lab/workload.js';
import { godwitCli } from '../support/godwit-cli.js';
import { lockEntries } from '../support/lab-state.js';

const PYTHON = '/usr/bin/python3';
const SHM_SERVER = join(REPO_ROOT, 'test', 'support', 'shm-server.py');
const IO_URING_SERVER = join(REPO_ROOT, 'test', 'support', 'io-uring-server.py');
/** A feature every x86-64 CPU this runs on has, removed from host c's list. */
const MISSING_FEATURE = 'sse4_2';

describe('preflight', () => {
  let lab: Lab;
  let scratch: string;
  const pids: number[] = [];
  let n = 0;

  beforeAll(async () => {
    scratch = mkdtempSync(join(tmpdir(), 'godwit-preflight-'));
    const flags = (/^flags\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? '').split(/\s+/);
    if (!flags.includes(MISSING_FEATURE)) throw new Error(`this CPU lacks ${MISSING_FEATURE}; pick another feature for the test`);
    writeFileSync(join(scratch, 'cpu-c'), flags.filter((f) => f !== MISSING_FEATURE).join(' '));
    lab = await labUp({ hosts: ['a', 'b', 'c'], privateFolders: true, hostAgentFlags: { c: ['--cpu-features', join(scratch, 'cpu-c')] } });
  });

  afterAll(async () => {
    for (const pid of pids) await stopWorkload(pid).catch(() => undefined);
    await lab?.down();
    rmSync(scratch, { recursive: true, force: true });
  });

  /** A fresh workload address and port per test. */
  const nextEndpoint = () => {
    n++;
    return { address: lab.topology.workloadAddress(n), port: 8000 + n };
  };

  const run = async (name: string, ep: { address: string; port: number }, command: string[], extra: string[] = []) => {
    const r = await godwitCli(lab, ['--json', 'run', '--host', 'a', '--name', name, '--endpoint', `tcp://${ep.address}:${ep.port}`, ...extra, '--', ...command]);
    const w = JSON.parse(r.stdout) as { pid: number };
    pids.push(w.pid);
    return w.pid;
  };

  const get = async (ep: { address: string; port: number }, path = '/') => {
    const r = await execCommand('nsenter', [...nsenterArgs(lab.topology.client), 'curl', '-s', '--max-time', '10', '-w', '\n%{http_code}', `http://${ep.address}:${ep.port}${path}`]);
    const lines = r.stdout.split('\n');
    return { code: lines.pop(), body: lines.join('\n') };
  };

  /** Refused with FAILED_PRECONDITION; nothing recorded, locked or frozen; the workload still answers. */
  async function expectRefused(req: MigrateRequest, pid: number, ep: { address: string; port: number }): Promise<string> {
    const before = (await lab.controller.listMigrations()).migrations.length;
    const err = await lab.controller.migrate(req).then(
      () => undefined,
      (e: unknown) => e,
    );
    if (!isServiceError(err)) throw new Error(`expected a refusal, got ${JSON.stringify(err)}`);
    expect(status[err.code]).toBe('FAILED_PRECONDITION');
    expect((await lab.controller.listMigrations()).migrations.length, 'no migration recorded').toBe(before);
    for (const h of ['a', 'b', 'c']) expect(await lockEntries(lab, h), `no lock on ${h}`).toEqual([]);
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    expect(stat.slice(stat.lastIndexOf(')') + 2)[0], 'not stopped or traced').toMatch(/[SR]/);
    expect((await get(ep)).code).toBe('200');
    return err.details;
  }

  it("refuses another user's process, naming CAP_SYS_RESOURCE (the agents here lack it)", async () => {
    const ep = nextEndpoint();
    const pid = await run('as-nobody', ep, [PYTHON, '-m', 'http.server', String(ep.port), '--bind', ep.address], ['--user', 'nobody', '--cwd', '/tmp']);
    const details = await expectRefused({ workloadName: 'as-nobody', targetHost: 'b' }, pid, ep);
    expect(details).toMatch(/process \d+ \(python3\) as nobody \(uid 65534\) on host "a" runs as another user than the agent/);
    expect(details).toContain('CRIU needs CAP_SYS_RESOURCE');
    expect(details).toContain('host "a" and host "b" lack it');
  });

  it("refuses SysV shared memory in the host's IPC namespace, saying to use godwit run", async () => {
    const ep = nextEndpoint();
    await execCommand('ip', ['-n', lab.host('a').netns, 'addr', 'add', `${ep.address}/32`, 'dev', 'eth0']);
    // Placed by hand as the README once showed: its own PID namespace, the host's IPC namespace.
    const child = spawn('nsenter', [...nsenterArgs(lab.host('a')), 'unshare', '--pid', '--fork', 'setsid', PYTHON, SHM_SERVER, ep.address, String(ep.port), String(1 << 20)], {
      detached: true,
      stdio: 'ignore',
    });
    child.unref();
    let pid = 0;
    for (let i = 0; i < 200 && !pid; i++) {
      await new Promise((r) => setTimeout(r, 50));
      const kids = readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').trim();
      if (kids && (await get(ep).catch(() => ({ code: '' }))).code === '200') pid = Number(kids.split(/\s+/)[0]);
    }
    expect(pid).toBeGreaterThan(0);
    pids.push(pid);
    const details = await expectRefused({ sourceHost: 'a', targetHost: 'b', workload: { pid, endpoints: [{ protocol: 'TCP', address: ep.address, port: ep.port }] } }, pid, ep);
    expect(details).toMatch(new RegExp(`process ${pid} \\(python3\\) on host "a" maps SysV shared memory \\(shmid \\d+, 1048576 bytes`));
    expect(details).toContain("of the host's IPC namespace");
    expect(details).toContain('start the workload with godwit run (its own IPC namespace)');
  });

  it("refuses a listener on the host's own address, naming it", async () => {
    const ep = nextEndpoint();
    const hostAddress = lab.host('a').address;
    const pid = await run('host-bound', ep, ['sh', '-c', `${PYTHON} -m http.server ${ep.port} --bind ${ep.address} & exec ${PYTHON} -m http.server ${ep.port + 100} --bind ${hostAddress}`]);
    const details = await expectRefused({ workloadName: 'host-bound', targetHost: 'b' }, pid, ep);
    expect(details).toContain(`tcp ${hostAddress}:${ep.port + 100} (LISTEN)`);
    expect(details).toContain(`its local address ${hostAddress} is host a's own and does not move with the workload`);
  });

  it('refuses a file that exists only on the source, naming it', async () => {
    const ep = nextEndpoint();
    const file = join(privateDir(lab), 'state.db');
    // Host a's own folder: written inside agent a's mount namespace, where its workloads run.
    await execCommand('nsenter', [`--mount=/proc/${lab.pids.get('agent-a')}/ns/mnt`, 'sh', '-c', `echo 'only on a' > ${file}`]);
    const pid = await run('private-file', ep, ['sh', '-c', `exec 3<${file}; exec ${PYTHON} -m http.server ${ep.port} --bind ${ep.address}`]);
    const details = await expectRefused({ workloadName: 'private-file', targetHost: 'b' }, pid, ep);
    expect(details).toMatch(/1 file\(s\) the workload uses on host "a" are missing or differ on target host "b"/);
    expect(details).toMatch(new RegExp(`${file} \\(fd 3 of process \\d+\\): missing`));
    expect(details).toContain('make them identical on both hosts');
  });

  it('refuses a target whose CPU lacks a feature the source has, naming it', async () => {
    const ep = nextEndpoint();
    const pid = await run('cpu', ep, [PYTHON, '-m', 'http.server', String(ep.port), '--bind', ep.address]);
    const details = await expectRefused({ workloadName: 'cpu', targetHost: 'c' }, pid, ep);
    expect(details).toBe(
      `target host "c" lacks CPU feature(s) that source host "a" has: ${MISSING_FEATURE}; code that chose them at start would die of SIGILL after the restore ` +
        '(criu cpuinfo check); move it to a host with the same CPU features, or start it on hosts pinned to a common baseline',
    );
  });

  it('moves SysV shared memory in the workload\'s own IPC namespace (godwit run), its content intact', async () => {
    const ep = nextEndpoint();
    const size = 8 << 20;
    await run('shm', ep, [PYTHON, SHM_SERVER, ep.address, String(ep.port), String(size)]);
    const before = JSON.parse((await get(ep)).body) as { shmid: number; expected: string; actual: string };
    expect(before.actual).toBe(before.expected);
    for (const to of ['b', 'a']) {
      const m = JSON.parse((await godwitCli(lab, ['--json', 'migrate', '--workload', 'shm', '--to', to, '--wait'])).stdout) as { phase: string; error: string; restoredPid: number };
      expect(m.error).toBe('');
      expect(m.phase).toBe('DONE');
      pids.push(m.restoredPid);
      const after = JSON.parse((await get(ep)).body) as { shmid: number; expected: string; actual: string };
      expect(after).toEqual(before);
    }
    // Its output file is in host a's own folder: it went to b with the image and came back.
    const logs = (await godwitCli(lab, ['logs', 'shm'])).stdout;
    expect(logs).toContain(`shm-server: segment ${before.shmid}, ${size} bytes, sha256 ${before.expected}`);
  });

  it("explains a CRIU failure with CRIU's first error line, and keeps the full log for godwit logs", async () => {
    const ep = nextEndpoint();
    const pid = await run('uring', ep, [PYTHON, IO_URING_SERVER, ep.address, String(ep.port)]);
    const accepted = await lab.controller.migrate({ workloadName: 'uring', targetHost: 'b' });
    const m = await lab.controller.wait(accepted.id);
    expect(m.phase).toBe('FAILED');
    expect(m.failedPhase).toBe('DUMP');
    // The workload runs on where it was, and answers.
    expect(processAlive(pid)).toBe(true);
    expect((await get(ep)).code).toBe('200');

    const logs = JSON.parse((await godwitCli(lab, ['--json', 'logs', m.id])).stdout) as { files: { host: string; name: string; text: string }[] };
    const dump = logs.files.find((f) => f.host === 'a' && f.name === 'dump.log');
    expect(dump, `logs: ${JSON.stringify(logs.files.map((f) => [f.host, f.name]))}`).toBeDefined();
    const firstError = dump!.text
      .split('\n')
      .filter((l) => /Error \(/.test(l) && !/RLIMIT_NOFILE/.test(l))[0]
      ?.replace(/^\(\s*\d+\.\d+\)\s*/, '')
      .trim();
    expect(firstError).toBeTruthy();
    expect(m.error).toContain(firstError);
    expect(dump!.text.split('\n').length).toBeGreaterThan(100);
    console.log(JSON.stringify({ error: m.error }));
  });
});
