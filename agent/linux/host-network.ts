/**
 * The host's own addresses: listing them, bringing a workload's address up or down, and
 * announcing a moved address the way real networks learn of it (gratuitous ARP), so that
 * clients need nothing done to them.
 */
import type { Executor } from '../../lib/exec.js';

export interface HostNetworkOptions {
  exec: Executor;
  iface: string;
}

export class HostNetwork {
  constructor(private readonly opts: HostNetworkOptions) {}

  /** IPv4 addresses on every interface of this host's network namespace. */
  async addresses(): Promise<string[]> {
    const r = await this.opts.exec('ip', ['-j', '-4', 'addr', 'show']);
    const links = JSON.parse(r.stdout || '[]') as { addr_info?: { local?: string }[] }[];
    return links.flatMap((l) => (l.addr_info ?? []).map((a) => a.local ?? '')).filter(Boolean);
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
   * Unsolicited ARP for the address from this host's interface: neighbours that have the address
   * cached replace the old MAC at once (Linux treats a gratuitous ARP as an override).
   * Two announcements 100 ms apart, in case the first is lost.
   */
  async announce(address: string): Promise<void> {
    await this.opts.exec('arping', ['-U', '-c', '2', '-i', '0.1', '-w', '1', '-I', this.opts.iface, address], {
      allowFailure: true,
      timeoutMs: 3_000,
    });
  }
}
