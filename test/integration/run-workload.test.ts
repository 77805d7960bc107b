/**
 * `godwit run`: a real server (python3's http.server) started through the CLI on host a, placed
 * the way CRIU can move it (PID 1 of its own PID namespace is godwit-init, its own IPC namespace,
 * no inherited descriptors, output in a file), moved by name with `godwit migrate --workload`,
 * its output read with `godwit logs` across the move.
 */
import { readFile, readdir, readlink } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execCommand } from '../../lib/exec.js';
import { labUp, type Lab } from '../../lab/lab.js';
import { nsenterArgs } from '../../lab/topology.js';
import { processAlive, stopWorkload } from '../../lab/workload.js';
import { godwitCli } from '../support/godwit-cli.js';

const PORT = 8000;

describe('godwit run', () => {
  let lab: Lab;
  let pid = 0;
  let address: string;

  beforeAll(async () => {
    lab = await labUp({ hosts: ['a', 'b'] });
    address = lab.topology.workloadAddress(0);
  });

  afterAll(async () => {
    if (pid) await stopWorkload(pid).catch(() => undefined);
    await lab?.down();
  });

  const get = async (path: string) => {
    const r = await execCommand('nsenter', [...nsenterArgs(lab.topology.client), 'curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '10', `http://${address}:${PORT}${path}`]);
    return r.stdout.trim();
  };

  it('starts a command under a root init in new PID and IPC namespaces, moves it by name, and keeps its output readable', async () => {
    const run = await godwitCli(lab, ['run', '--host', 'a', '--name', 'web', '--endpoint', `tcp://${address}:${PORT}`, '--json', '--', '/usr/bin/python3', '-m', 'http.server', String(PORT), '--bind', address]);
    const started = JSON.parse(run.stdout) as { workload: string; host: string; pid: number; endpoints: string[] };
    expect(started).toMatchObject({ workload: 'web', host: 'a', endpoints: [`tcp://${address}:${PORT}`] });
    pid = started.pid;

    // PID 1 of a namespace of its own, root, session leader; its own IPC namespace.
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    expect(/^NSpid:\s*(.*)$/m.exec(status)?.[1].trim().split(/\s+/)).toEqual([String(pid), '1']);
    expect(/^Uid:\s*(\d+)/m.exec(status)?.[1]).toBe('0');
    expect((await readFile(`/proc/${pid}/comm`, 'utf8')).trim()).toBe('godwit-init');
    expect(await readlink(`/proc/${pid}/ns/ipc`)).not.toBe(await readlink('/proc/self/ns/ipc'));
    // The command: its init's child, stdin /dev/null, output to its file, nothing inherited.
    const [child] = (await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8')).trim().split(/\s+/).map(Number);
    const fds = await readdir(`/proc/${child}/fd`);
    const targets = new Map(await Promise.all(fds.map(async (fd) => [fd, await readlink(`/proc/${child}/fd/${fd}`)] as const)));
    expect(targets.get('0')).toBe('/dev/null');
    expect(targets.get('1')).toBe(`${lab.dir}/workloads/web.log`);
    expect(targets.get('2')).toBe(`${lab.dir}/workloads/web.log`);
    for (const [fd, t] of targets) if (Number(fd) > 2) expect(t, `fd ${fd}`).toMatch(/^socket:/);
    // No signal blocked (the init blocks them all for itself).
    const childStatus = await readFile(`/proc/${child}/status`, 'utf8');
    expect(/^SigBlk:\s*(\S+)/m.exec(childStatus)?.[1]).toBe('0000000000000000');

    expect(await get('/before-move')).toBe('404');

    const moved = await godwitCli(lab, ['--json', 'migrate', '--workload', 'web', '--to', 'b', '--wait']);
    const m = JSON.parse(moved.stdout) as { phase: string; restoredPid: number; error: string };
    expect(m.error).toBe('');
    expect(m.phase).toBe('DONE');
    expect(processAlive(pid)).toBe(false);
    pid = m.restoredPid;

    const listed = JSON.parse((await godwitCli(lab, ['--json', 'workloads'])).stdout) as { workloads: { name: string; host: string; pid: number }[] };
    expect(listed.workloads).toEqual([expect.objectContaining({ name: 'web', host: 'b', pid })]);
    expect(await get('/after-move')).toBe('404');

    // Back by name again: the registry followed the first move.
    const back = JSON.parse((await godwitCli(lab, ['--json', 'migrate', '--workload', 'web', '--to', 'a', '--wait'])).stdout) as { phase: string; restoredPid: number; error: string };
    expect(back.error).toBe('');
    expect(back.phase).toBe('DONE');
    pid = back.restoredPid;
    expect(await get('/home-again')).toBe('404');

    // One output file across both moves: what it printed on a, on b, and on a again.
    const logs = (await godwitCli(lab, ['logs', 'web'])).stdout;
    for (const path of ['/before-move', '/after-move', '/home-again']) expect(logs).toMatch(new RegExp(`"GET ${path} HTTP/1.1" 404`));

    // SIGTERM to the init reaches the command; the init says how it ended and exits.
    await stopWorkload(pid);
    expect((await godwitCli(lab, ['logs', 'web'])).stdout).toContain('godwit-init: /usr/bin/python3 ended by signal 15');
    // A name whose workload has ended can be used again; one that runs cannot.
    const again = JSON.parse((await godwitCli(lab, ['--json', 'run', '--host', 'b', '--name', 'web', '--endpoint', `tcp://${address}:${PORT}`, '--', '/usr/bin/python3', '-m', 'http.server', String(PORT), '--bind', address])).stdout) as { host: string; pid: number };
    expect(again.host).toBe('b');
    pid = again.pid;
    // Reached where it started now, although the last migration had steered its address to a.
    expect(await get('/restarted-on-b')).toBe('404');
    const taken = await godwitCli(lab, ['run', '--host', 'a', '--name', 'web', '--', 'sleep', '100'], { allowFailure: true });
    expect(taken.exitCode).toBe(2);
    expect(taken.stderr).toMatch(/^ALREADY_EXISTS: a workload named "web" runs already \(pid \d+ on host "b"\)/);
  });
});
