/** What a test asks of a lab's hosts, read from the hosts themselves (not from godwit's records). */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CriuNetfilter } from '../../agent/linux/criu-netfilter.js';
import { EbpfNetLock } from '../../agent/linux/netlock-ebpf.js';
import { nsExecutor } from '../../agent/linux/netns-exec.js';
import type { LockEntry } from '../../agent/netlock.js';
import { execCommand } from '../../lib/exec.js';
import { REPO_ROOT } from '../../lib/rpc.js';
import { agentPinDir, type Lab } from '../../lab/lab.js';

/** PIDs of processes named `comm` in each host's network namespace. */
export async function processesNamed(lab: Lab, comm: string): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>();
  for (const h of lab.topology.hosts) {
    const r = await execCommand('ip', ['netns', 'pids', h.netns], { allowFailure: true });
    const pids: number[] = [];
    for (const pid of r.stdout.split(/\s+/).filter(Boolean).map(Number)) {
      const name = await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '');
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
      if (name.trim() === comm && !/\) Z /.test(stat)) pids.push(pid);
    }
    out.set(h.name, pids);
  }
  return out;
}

/** The lock entries held on a host, read from its pinned map. */
export async function lockEntries(lab: Lab, host: string): Promise<LockEntry[]> {
  const lock = new EbpfNetLock({
    exec: execCommand,
    iface: 'eth0',
    pinDir: agentPinDir(lab.topology.index, host),
    objectPath: join(REPO_ROOT, 'build', 'bpf', 'lock.o'),
  });
  return lock.list();
}

export async function addressesOn(lab: Lab, host: string): Promise<string[]> {
  const r = await execCommand('ip', ['-n', lab.host(host).netns, '-j', '-4', 'addr', 'show', 'dev', 'eth0']);
  return (JSON.parse(r.stdout) as { addr_info: { local: string }[] }[]).flatMap((l) => l.addr_info.map((a) => a.local));
}

/**
 * CRIU's network lock on a host, read from the host's netfilter: its per-connection iptables
 * rules (the ones with `-m mark ! --mark 0xc114`) and its nftables tables (inet CRIU-*).
 */
export async function criuLockOn(lab: Lab, host: string): Promise<{ iptablesRules: number; nftTables: string[] }> {
  const netfilter = new CriuNetfilter(nsExecutor(lab.host(host).netns, execCommand));
  const [rules, tables] = await Promise.all([netfilter.iptablesRules(), netfilter.tables()]);
  return { iptablesRules: rules.length, nftTables: tables };
}
