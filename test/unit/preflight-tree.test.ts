import { describe, expect, it } from 'vitest';
import { capabilityNames } from '../../agent/linux/capabilities.js';
import { filesRefusal } from '../../controller/preflight-files.js';
import { treeRefusal, type HostCapabilities } from '../../controller/preflight-tree.js';
import type { TreeFacts, TreeProcess } from '../../lib/workload-facts.js';

/** This machine's bounding set: everything up to CAP_CHECKPOINT_RESTORE except CAP_SYS_RESOURCE (FIELD-NOTES). */
const HERE = capabilityNames('1fffeffffff');
const host = (name: string, over: Partial<HostCapabilities> = {}): HostCapabilities => ({ host: name, capabilities: HERE, cpuFeatures: ['fpu', 'sse4_2'], criuVersion: '4.2', ...over });
const proc = (pid: number, nsPid: number, uid = 0, user = 'root', command = 'server'): TreeProcess => ({ pid, nsPid, uid, user, command });
const facts = (over: Partial<TreeFacts> = {}): TreeFacts => ({ tree: [proc(100, 1, 0, 'root', 'godwit-init'), proc(101, 2)], sharesHostIpcNamespace: false, sysvShm: [], outsideUnixSockets: [], files: [], ...over });

describe('preflight on the tree and the hosts', () => {
  it('reads capability masks by name (this machine lacks CAP_SYS_RESOURCE)', () => {
    expect(HERE).toContain('CAP_SYS_ADMIN');
    expect(HERE).toContain('CAP_CHECKPOINT_RESTORE');
    expect(HERE).not.toContain('CAP_SYS_RESOURCE');
  });

  it('passes a root tree in its own namespaces between equal hosts', () => {
    expect(treeRefusal(facts(), host('a'), host('b'))).toBeUndefined();
  });

  it("refuses another user's process unless both agents have CAP_SYS_RESOURCE", () => {
    const f = facts({ tree: [proc(100, 1), proc(101, 2, 33, 'www-data', 'nginx')] });
    const r = treeRefusal(f, host('a'), host('b'));
    expect(r?.check).toBe('capability');
    expect(r?.message).toContain('process 101 (nginx) as www-data (uid 33) on host "a" runs as another user than the agent');
    const all = [...HERE, 'CAP_SYS_RESOURCE'];
    expect(treeRefusal(f, host('a', { capabilities: all }), host('b', { capabilities: all }))).toBeUndefined();
    expect(treeRefusal(f, host('a', { capabilities: all }), host('b'))?.message).toContain('the agent on host "b" lacks it');
  });

  it('refuses a non-root first process of a PID namespace, pointing to godwit run', () => {
    const r = treeRefusal(facts({ tree: [proc(200, 1, 105, 'postgres', 'postgres')] }), host('a'), host('b'));
    expect(r?.check).toBe('namespace-init');
    expect(r?.message).toContain('start the workload with godwit run (a root init as PID 1, the command as --user postgres)');
  });

  it('refuses SysV memory only in a shared IPC namespace', () => {
    const sysvShm = [{ pid: 101, shmid: 7, bytes: 4096 }];
    expect(treeRefusal(facts({ sysvShm }), host('a'), host('b'))).toBeUndefined();
    expect(treeRefusal(facts({ sysvShm, sharesHostIpcNamespace: true }), host('a'), host('b'))?.check).toBe('sysv-shm');
  });

  it('refuses a unix socket whose peer is outside the tree, naming both ends', () => {
    const r = treeRefusal(facts({ outsideUnixSockets: [{ pid: 101, fd: 7, path: '/run/dbus/system_bus_socket', peerPid: 55, peerCommand: 'dbus-daemon' }] }), host('a'), host('b'));
    expect(r?.check).toBe('unix-socket');
    expect(r?.message).toContain('process 101 (server) on host "a" holds a unix socket (fd 7, /run/dbus/system_bus_socket) connected to process 55 (dbus-daemon), outside the workload');
  });

  it('refuses a target without a CPU feature or with an older CRIU', () => {
    expect(treeRefusal(facts(), host('a'), host('b', { cpuFeatures: ['fpu'] }))?.message).toContain('lacks CPU feature(s) that source host "a" has: sse4_2');
    expect(treeRefusal(facts(), host('a'), host('b', { cpuFeatures: ['fpu', 'sse4_2', 'avx'] }))).toBeUndefined();
    expect(treeRefusal(facts(), host('a', { criuVersion: '4.2' }), host('b', { criuVersion: '4.1.1' }))?.check).toBe('criu-version');
    expect(treeRefusal(facts(), host('a', { criuVersion: '4.1' }), host('b', { criuVersion: '4.2' }))).toBeUndefined();
  });

  it('names the files that are missing or differ on the target', () => {
    const file = { path: '/srv/app/state.db', size: 10, buildId: '', sha256: '', pid: 101, usage: 'fd 3' };
    const r = filesRefusal([{ file, problem: 'missing' }], 'a', 'b');
    expect(r?.check).toBe('files');
    expect(r?.message).toContain('/srv/app/state.db (fd 3 of process 101): missing');
    expect(filesRefusal([], 'a', 'b')).toBeUndefined();
  });
});
