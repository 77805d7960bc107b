/**
 * The host's own addresses: listing them, bringing a workload's address up or down, and
 * announcing a moved address the way real networks learn of it (gratuitous ARP), so that
 * clients need nothing done to them.
 */
import { networkInterfaces } from 'node:os';
import type { Executor } from '../../lib/exec.js';

/** arping fails argument and interface checks within a few ms; after this it has sent. */
const ARPING_SENT_MS = 50;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface HostNetworkOptions {
  exec: Executor;
  iface: string;
}

export class HostNetwork {
  constructor(private readonly opts: HostNetworkOptions) {}

  /** IPv4 addresses on every interface of this host's network namespace. */
  async addresses(): Promise<string[]> {
    // The agent runs in the host's network namespace, so the kernel's answer to this process is
    // the host's. One syscall in-process: an `ip` process costs 5-30 ms, and Checkpoint and
    // Restore ask inside the freeze.
    return Object.values(networkInterfaces())
      .flatMap((addrs) => addrs ?? [])
      .filter((a) => a.family === 'IPv4')
      .map((a) => a.address);
  }

  async hasAddress(address: string): Promise<boolean> {
    return (await this.addresses()).includes(address);
  }

  /**
   * Adds the address as a /32 on the interface (the subnet route already exists through the
   * host's own address). Returns false if it was already there (idempotent).
   */
  async addAddress(address: string): Promise<boolean> {
    if (await this.hasAddress(address)) return false;
    await this.opts.exec('ip', ['addr', 'add', `${address}/32`, 'dev', this.opts.iface]);
    return true;
  }

  async removeAddress(address: string): Promise<boolean> {
    if (!(await this.hasAddress(address))) return false;
    await this.opts.exec('ip', ['addr', 'del', `${address}/32`, 'dev', this.opts.iface], { allowFailure: true });
    return true;
  }

  /**
   * Gratuitous ARP for the address from this host's interface, as both an unsolicited request
   * and an unsolicited reply: Linux neighbours treat either as an override and replace the old
   * MAC at once (arp_is_garp in net/ipv4/arp.c); some other stacks only heed one of the two.
   *
   * arping sends at once, then waits about a second for replies that an unsolicited ARP never
   * gets; so a process still running after ARPING_SENT_MS has sent, and only an early non-zero
   * exit (bad interface or address) is a failure. The lingering processes end by themselves.
   */
  async announce(address: string): Promise<void> {
    await Promise.all(
      ['-U', '-A'].map(async (mode) => {
        const run = this.opts.exec('arping', ['-q', mode, '-c', '1', '-I', this.opts.iface, address], { timeoutMs: 5_000 });
        run.catch(() => undefined); // a late failure is not ours to report: the packet went out
        const early = await Promise.race([run.then(() => 'ok' as const, (e: Error) => e), sleep(ARPING_SENT_MS).then(() => 'sent' as const)]);
        if (early instanceof Error) throw new Error(`announcing ${address} on ${this.opts.iface}: ${early.message}`);
      }),
    );
  }
}
