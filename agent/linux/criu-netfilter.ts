/**
 * CRIU's own network lock, as rules on a host: what `criu dump --network-lock iptables|nftables`
 * makes for a process in the host's network namespace, written here so that the target can make
 * the same lock before `criu restore` (which removes it to unlock), and the source can remove what
 * the dump left behind. The formats follow CRIU 4.2's criu/netfilter.c and criu/net.c:
 *
 * iptables: per connection, at dump, two `sh -c "iptables -w -t filter -I CHAIN ..."` (INPUT for
 *   peer -> local, OUTPUT for local -> peer), each
 *     --protocol tcp -m mark ! --mark 0xC114 --source S --sport SP --destination D --dport DP -j DROP
 *   (0xC114 is SOCCR_MARK: CRIU's own repair packets pass). Restore runs `iptables -w -t filter -D`
 *   with the same text for each connection in the image, right before the tasks resume, and does
 *   not check the result. The rules stay on the source after a successful dump.
 *
 * nftables: at dump, one table `inet CRIU-<run id>` (the name is cut to fit 31 characters with its
 *   family: "inet CRIU-" and the first 21 characters of the UUID), chains `input` and `output`
 *   (filter hooks, priority 0) that accept SOCCR_MARK and drop what matches set `conns4` (or
 *   `conns6`) of `saddr . sport . daddr . dport`; per connection two elements (both directions).
 *   Restore only deletes the table named after the image's dump_criu_run_id. The table stays on
 *   the source after a successful dump.
 *
 * iptables here means whichever `iptables` the host's PATH gives, as for CRIU (Debian 12: the
 * nf_tables backend).
 */
import type { Executor } from '../../lib/exec.js';
import type { ConnectionTuple } from './criu-image.js';

export const SOCCR_MARK = '0xC114';
/** CRIU formats "inet CRIU-%s" into a 32-byte buffer: at most 31 characters with the family. */
const NFT_TABLE_MAX = 31 - 'inet '.length;

export type CriuLockMode = 'IPTABLES' | 'NFTABLES';

/** CRIU's lock for one migration's connections on one host. */
export interface CriuLockSet {
  mode: CriuLockMode;
  /** nftables: the table CRIU names after its dump's run id. */
  table?: string;
  connections: ConnectionTuple[];
}

/** The name CRIU gives its nftables table for a dump with this run id. */
export function nftTableName(runId: string): string {
  return `CRIU-${runId}`.slice(0, NFT_TABLE_MAX);
}

type Chain = 'INPUT' | 'OUTPUT';

/** The rule text CRIU runs after `iptables -w -t filter -I|-D` for one direction of a connection. */
export function iptablesRule(chain: Chain, c: ConnectionTuple): string {
  const [src, sport, dst, dport] = chain === 'INPUT' ? [c.peer, c.peerPort, c.local, c.localPort] : [c.local, c.localPort, c.peer, c.peerPort];
  return `${chain} --protocol tcp -m mark ! --mark ${SOCCR_MARK} --source ${src} --sport ${sport} --destination ${dst} --dport ${dport} -j DROP`;
}

/** An iptables-restore --noflush script that inserts (-I) or deletes (-D) both rules of each connection. */
export function iptablesScript(connections: readonly ConnectionTuple[], op: '-I' | '-D'): string {
  const lines = ['*filter'];
  for (const c of connections) lines.push(`${op} ${iptablesRule('INPUT', c)}`, `${op} ${iptablesRule('OUTPUT', c)}`);
  lines.push('COMMIT', '');
  return lines.join('\n');
}

/** One of CRIU's per-connection rules as `iptables -S` prints it. */
export interface ListedCriuRule {
  chain: Chain;
  source: string;
  sport: number;
  destination: string;
  dport: number;
}

/**
 * CRIU's per-connection rules among `iptables -S` lines, e.g.
 *   -A INPUT -s 198.18.1.100/32 -d 198.18.1.200/32 -p tcp -m mark ! --mark 0xc114 -m tcp --sport 53864 --dport 7000 -j DROP
 */
export function parseCriuIptablesRules(listing: string): ListedCriuRule[] {
  const out: ListedCriuRule[] = [];
  for (const line of listing.split('\n')) {
    const m = /^-A (INPUT|OUTPUT) (.*)$/.exec(line.trim());
    if (!m) continue;
    const rest = m[2];
    if (!/-m mark ! --mark 0xc114\b/i.test(rest) || !/-j DROP$/.test(rest) || !/-p tcp\b/.test(rest)) continue;
    const opt = (re: RegExp) => re.exec(rest)?.[1];
    const source = opt(/-s (\d+\.\d+\.\d+\.\d+)\/32\b/);
    const destination = opt(/-d (\d+\.\d+\.\d+\.\d+)\/32\b/);
    const sport = opt(/--sport (\d+)\b/);
    const dport = opt(/--dport (\d+)\b/);
    if (!source || !destination || !sport || !dport) continue;
    out.push({ chain: m[1] as Chain, source, sport: Number(sport), destination, dport: Number(dport) });
  }
  return out;
}

function ruleKey(chain: Chain, src: string, sport: number, dst: string, dport: number): string {
  return `${chain} ${src}:${sport} ${dst}:${dport}`;
}

function connectionRuleKeys(c: ConnectionTuple): [string, string] {
  return [ruleKey('INPUT', c.peer, c.peerPort, c.local, c.localPort), ruleKey('OUTPUT', c.local, c.localPort, c.peer, c.peerPort)];
}

/** An `nft -f` script that makes CRIU's table for these connections, as CRIU's dump makes it. */
export function nftLockScript(table: string, connections: readonly ConnectionTuple[]): string {
  const t = `inet ${table}`;
  const lines = [
    `add table ${t}`,
    `add chain ${t} output { type filter hook output priority 0; }`,
    `add rule ${t} output meta mark ${SOCCR_MARK} accept`,
    `add chain ${t} input { type filter hook input priority 0; }`,
    `add rule ${t} input meta mark ${SOCCR_MARK} accept`,
    `add set ${t} conns4 { type ipv4_addr . inet_service . ipv4_addr . inet_service; }`,
    `add rule ${t} output ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop`,
    `add rule ${t} input ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop`,
    `add set ${t} conns6 { type ipv6_addr . inet_service . ipv6_addr . inet_service; }`,
    `add rule ${t} output ip6 saddr . tcp sport . ip6 daddr . tcp dport @conns6 drop`,
    `add rule ${t} input ip6 saddr . tcp sport . ip6 daddr . tcp dport @conns6 drop`,
  ];
  // Elements in batches: one line per element would make the script long for nothing.
  for (let i = 0; i < connections.length; i += 500) {
    const elems = connections
      .slice(i, i + 500)
      .flatMap((c) => [`${c.peer} . ${c.peerPort} . ${c.local} . ${c.localPort}`, `${c.local} . ${c.localPort} . ${c.peer} . ${c.peerPort}`]);
    lines.push(`add element ${t} conns4 { ${elems.join(', ')} }`);
  }
  return lines.join('\n') + '\n';
}

/** Names of CRIU's nftables tables (family inet, named CRIU-*) in `nft -j list tables` output. */
export function parseCriuTables(json: string): string[] {
  const doc = JSON.parse(json || '{}') as { nftables?: { table?: { family?: string; name?: string } }[] };
  return (doc.nftables ?? [])
    .map((x) => x.table)
    .filter((t): t is { family: string; name: string } => !!t && t.family === 'inet' && typeof t.name === 'string' && t.name.startsWith('CRIU-'))
    .map((t) => t.name);
}

/** The host side: installs, counts and removes CRIU's lock. Every command goes through `exec`. */
export class CriuNetfilter {
  constructor(private readonly exec: Executor) {}

  /** The host can run the tool CRIU will use for this mode (fails with what is missing). */
  async check(mode: CriuLockMode): Promise<void> {
    if (mode === 'IPTABLES') await this.exec('iptables', ['-w', '-t', 'filter', '-S', 'INPUT']);
    else await this.exec('nft', ['list', 'tables']);
  }

  /** Makes `lock` on this host in one step (one iptables-restore, or one nft transaction). */
  async install(lock: CriuLockSet): Promise<number> {
    if (lock.mode === 'IPTABLES') {
      if (lock.connections.length === 0) return 0;
      await this.exec('iptables-restore', ['-w', '--noflush'], { input: iptablesScript(lock.connections, '-I') });
      return 2 * lock.connections.length;
    }
    if (!lock.table) throw new Error('an nftables lock needs its table name');
    await this.exec('nft', ['-f', '-'], { input: nftLockScript(lock.table, lock.connections) });
    return 2 * lock.connections.length;
  }

  /** CRIU's iptables rules on this host now. */
  async iptablesRules(): Promise<ListedCriuRule[]> {
    const [input, output] = await Promise.all(
      (['INPUT', 'OUTPUT'] as const).map((chain) => this.exec('iptables', ['-w', '-t', 'filter', '-S', chain])),
    );
    return parseCriuIptablesRules(input.stdout + '\n' + output.stdout);
  }

  async tables(): Promise<string[]> {
    const r = await this.exec('nft', ['-j', 'list', 'tables']);
    return parseCriuTables(r.stdout);
  }

  /** How many of lock's rules (iptables) or set elements (nftables: the table counts whole) are on this host. */
  async count(lock: CriuLockSet): Promise<number> {
    if (lock.mode === 'IPTABLES') return (await this.presentConnections(lock.connections)).rules;
    if (!lock.table) return 0;
    return (await this.tables()).includes(lock.table) ? Math.max(1, 2 * lock.connections.length) : 0;
  }

  /** Removes whatever of `lock` is still on this host; returns how many rules or elements that was. */
  async remove(lock: CriuLockSet): Promise<number> {
    if (lock.mode === 'IPTABLES') {
      const present = await this.presentConnections(lock.connections);
      if (present.rules === 0) return 0;
      await this.deleteRules(present.listed);
      return present.rules;
    }
    if (!lock.table || !(await this.tables()).includes(lock.table)) return 0;
    await this.exec('nft', ['delete', 'table', 'inet', lock.table]);
    return Math.max(1, 2 * lock.connections.length);
  }

  /**
   * After a dump that failed without cleaning up (CRIU killed or aborted): removes CRIU's rules for
   * connections whose local end is one of `locals` ("address:port"), and CRIU tables that were not
   * there before the dump. Returns what it removed, for the record.
   */
  async removeStray(mode: CriuLockMode, locals: Set<string>, tablesBefore: string[]): Promise<string[]> {
    const removed: string[] = [];
    if (mode === 'IPTABLES') {
      const mine = (await this.iptablesRules()).filter((r) =>
        r.chain === 'INPUT' ? locals.has(`${r.destination}:${r.dport}`) : locals.has(`${r.source}:${r.sport}`),
      );
      if (mine.length > 0) {
        await this.deleteRules(mine);
        removed.push(`${mine.length} iptables rule(s) left by CRIU`);
      }
    } else {
      for (const t of await this.tables()) {
        if (tablesBefore.includes(t)) continue;
        await this.exec('nft', ['delete', 'table', 'inet', t], { allowFailure: true });
        removed.push(`nftables table inet ${t} left by CRIU`);
      }
    }
    return removed;
  }

  private async presentConnections(connections: readonly ConnectionTuple[]): Promise<{ rules: number; listed: ListedCriuRule[] }> {
    if (connections.length === 0) return { rules: 0, listed: [] };
    const wanted = new Set(connections.flatMap(connectionRuleKeys));
    const listed = (await this.iptablesRules()).filter((r) => wanted.has(ruleKey(r.chain, r.source, r.sport, r.destination, r.dport)));
    return { rules: listed.length, listed };
  }

  /** Deletes the listed rules in one iptables-restore (a rule that is there twice is listed twice). */
  private async deleteRules(rules: ListedCriuRule[]): Promise<void> {
    const lines = ['*filter'];
    for (const r of rules)
      lines.push(
        `-D ${r.chain} --protocol tcp -m mark ! --mark ${SOCCR_MARK} --source ${r.source} --sport ${r.sport} --destination ${r.destination} --dport ${r.dport} -j DROP`,
      );
    lines.push('COMMIT', '');
    await this.exec('iptables-restore', ['-w', '--noflush'], { input: lines.join('\n') });
  }
}
