/**
 * What a benchmark measurement leaves in the lab, found and removed: its traffic client, its
 * workload wherever it runs now, the workload address, images, and anything left of a lock.
 */
import { readdirSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CriuNetfilter } from '../agent/linux/criu-netfilter.js';
import { EbpfNetLock } from '../agent/linux/netlock-ebpf.js';
import { nsExecutor } from '../agent/linux/netns-exec.js';
import { execCommand } from '../lib/exec.js';
import { REPO_ROOT } from '../lib/rpc.js';
import { agentPinDir, type Lab } from '../lab/lab.js';
import type { TrafficHandle } from '../lab/traffic.js';
import { processAlive, stopWorkload } from '../lab/workload.js';

/** PIDs of the echo-servers running in the lab's hosts (zombies excluded). */
export async function echoServers(lab: Lab): Promise<number[]> {
  const out: number[] = [];
  for (const h of lab.topology.hosts) {
    const r = await execCommand('ip', ['netns', 'pids', h.netns], { allowFailure: true });
    for (const p of r.stdout.split(/\s+/).filter(Boolean).map(Number)) {
      const comm = await readFile(`/proc/${p}/comm`, 'utf8').catch(() => '');
      if (comm.trim() === 'echo-server' && processAlive(p)) out.push(p);
    }
  }
  return out;
}

/**
 * What one measurement leaves to remove: its client, its workload wherever it runs, the address,
 * the images, and anything left of a lock on either host (counted: a migration must leave none).
 */
export class Cleanup {
  traffic?: TrafficHandle;
  pids: number[] = [];

  constructor(private readonly lab: Lab) {}

  /** Removes it all; returns how many lock rules, tables or entries were still on the hosts. */
  async run(): Promise<number> {
    const lab = this.lab;
    await this.traffic?.stop().catch(() => undefined);
    this.traffic = undefined;
    // The workload: every echo-server in the lab's hosts is this measurement's (the lab is ours).
    const pids = new Set([...this.pids, ...(await echoServers(lab))]);
    for (const p of pids) if (processAlive(p)) await stopWorkload(p).catch(() => undefined);
    this.pids = [];
    const vip = lab.topology.workloadAddress(0);
    let leftovers = 0;
    for (const h of lab.topology.hosts) {
      await execCommand('ip', ['-n', h.netns, 'addr', 'del', `${vip}/32`, 'dev', h.iface], { allowFailure: true });
      const nf = new CriuNetfilter(nsExecutor(h.netns, execCommand));
      const rules = await nf.iptablesRules();
      if (rules.length > 0) {
        leftovers += rules.length;
        const locals = new Set(rules.map((r) => (r.chain === 'INPUT' ? `${r.destination}:${r.dport}` : `${r.source}:${r.sport}`)));
        await nf.removeStray('IPTABLES', locals, []);
      }
      const tables = await nf.tables();
      if (tables.length > 0) {
        leftovers += tables.length;
        await nf.removeStray('NFTABLES', new Set(), []);
      }
      const xdp = new EbpfNetLock({ exec: execCommand, iface: h.iface, pinDir: agentPinDir(lab.topology.index, h.name), objectPath: join(REPO_ROOT, 'build', 'bpf', 'lock.o') });
      const entries = await xdp.list().catch(() => []);
      if (entries.length > 0) {
        leftovers += entries.length;
        for (const e of entries) await xdp.unlock([e.endpoint], e.version).catch(() => undefined);
      }
      // Images the agents keep (the target keeps the one it restored): the lab's tmpfs is finite.
      const images = join(lab.dir, 'hosts', h.name, 'images');
      try {
        for (const d of readdirSync(images)) rmSync(join(images, d), { recursive: true, force: true });
      } catch {
        // no images
      }
    }
    return leftovers;
  }
}
