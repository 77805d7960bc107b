import { describe, expect, it } from 'vitest';
import {
  FILES_MAGIC,
  IMG_COMMON_MAGIC,
  INVENTORY_MAGIC,
  addressFromWords,
  connectionsIn,
  decodeFields,
  inventoryLock,
} from '../../agent/linux/criu-image.js';
import { CriuNetfilter, iptablesRule, iptablesScript, nftLockScript, nftTableName, parseCriuIptablesRules, parseCriuTables } from '../../agent/linux/criu-netfilter.js';
import type { ExecOptions, ExecResult } from '../../lib/exec.js';

// ---- a tiny protobuf writer, enough to build the image entries CRIU writes ----
function varint(n: number | bigint): number[] {
  let v = BigInt(n);
  const out: number[] = [];
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    out.push(b);
  } while (v > 0n);
  return out;
}
const u = (no: number, v: number) => [...varint((no << 3) | 0), ...varint(v)];
const msg = (no: number, body: number[]) => [...varint((no << 3) | 2), ...varint(body.length), ...body];
const str = (no: number, s: string) => msg(no, [...Buffer.from(s)]);
/** An address's bytes copied into 32-bit words, read little-endian (what CRIU's image holds). */
const words = (ip: string) => {
  const b = ip.split('.').map(Number);
  return b[0] + (b[1] << 8) + (b[2] << 16) + b[3] * 2 ** 24;
};
function image(magics: number[], entries: number[][]): Buffer {
  const parts: Buffer[] = magics.map((m) => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(m);
    return b;
  });
  for (const e of entries) {
    const len = Buffer.alloc(4);
    len.writeUInt32LE(e.length);
    parts.push(len, Buffer.from(e));
  }
  return Buffer.concat(parts);
}
function inetSk(o: { family?: number; proto?: number; state?: number; src: string; sport: number; dst: string; dport: number }) {
  return [
    ...u(1, 7), ...u(2, 1234), ...u(3, o.family ?? 2), ...u(4, 1), ...u(5, o.proto ?? 6), ...u(6, o.state ?? 1),
    ...u(7, o.sport), ...u(8, o.dport), ...u(9, 2), ...u(10, 0),
    ...u(11, words(o.src)), ...u(12, words(o.dst)),
    ...msg(13, u(1, 0)), ...msg(14, u(1, 0)),
  ];
}
const fileEntry = (type: number, isk?: number[]) => [...u(1, type), ...u(2, 9), ...(isk ? msg(4, isk) : [])];

describe('CRIU image reading', () => {
  it('decodes varints and nested messages', () => {
    const f = decodeFields(Buffer.from([...u(1, 300), ...str(2, 'x'), ...u(3, 2 ** 32 + 5)]));
    expect(f.map((x) => x.no)).toEqual([1, 2, 3]);
    expect(f[0].v.value).toBe(300n);
    expect(f[2].v.value).toBe(2n ** 32n + 5n);
  });

  it('finds the TCP connections CRIU locks: TCP with a peer port, IPv4 and IPv4-mapped', () => {
    const files = image(
      [IMG_COMMON_MAGIC, FILES_MAGIC],
      [
        fileEntry(1), // a regular file
        fileEntry(2, inetSk({ src: '198.18.1.200', sport: 7000, dst: '198.18.1.100', dport: 40000 })),
        fileEntry(2, inetSk({ src: '198.18.1.200', sport: 7000, dst: '0.0.0.0', dport: 0, state: 10 })), // listener
        fileEntry(2, inetSk({ src: '198.18.1.200', sport: 5353, dst: '198.18.1.9', dport: 53, proto: 17 })), // UDP
      ],
    );
    expect(connectionsIn(files)).toEqual([{ local: '198.18.1.200', localPort: 7000, peer: '198.18.1.100', peerPort: 40000 }]);
    expect(addressFromWords([0, 0, 0xffff0000, words('10.1.2.3')], 10)).toBe('10.1.2.3');
    expect(addressFromWords([1, 0, 0, 0], 10)).toBeUndefined();
  });

  it('refuses IPv6 connections and foreign files', () => {
    const v6 = [...u(3, 10), ...u(5, 6), ...u(7, 7000), ...u(8, 4000), ...u(11, 1), ...u(11, 0), ...u(11, 0), ...u(11, 0), ...u(12, 2), ...u(12, 0), ...u(12, 0), ...u(12, 0)];
    expect(() => connectionsIn(image([IMG_COMMON_MAGIC, FILES_MAGIC], [fileEntry(2, v6)]))).toThrow(/IPv6/);
    expect(() => connectionsIn(image([IMG_COMMON_MAGIC, INVENTORY_MAGIC], []))).toThrow(/magic/);
  });

  it('reads the lock method and run id from inventory.img (no common magic there)', () => {
    const inv = (extra: number[]) => image([INVENTORY_MAGIC], [[...u(1, 2), ...extra]]);
    expect(inventoryLock(inv([...u(11, 0), ...str(13, 'eeace7d2-215f-4d37-b794-e8b4481b126f')]))).toEqual({
      method: 'iptables',
      runId: 'eeace7d2-215f-4d37-b794-e8b4481b126f',
    });
    expect(inventoryLock(inv(u(11, 1))).method).toBe('nftables');
    expect(inventoryLock(inv(u(11, 2))).method).toBe('skip');
    expect(inventoryLock(inv([])).method).toBe('iptables'); // CRIU's fallback for old images
  });
});

const conn = { local: '198.18.1.200', localPort: 7000, peer: '198.18.1.100', peerPort: 53696 };

describe("CRIU's lock as rules", () => {
  it('writes the rules exactly as CRIU runs them', () => {
    expect(iptablesRule('INPUT', conn)).toBe(
      'INPUT --protocol tcp -m mark ! --mark 0xC114 --source 198.18.1.100 --sport 53696 --destination 198.18.1.200 --dport 7000 -j DROP',
    );
    expect(iptablesRule('OUTPUT', conn)).toBe(
      'OUTPUT --protocol tcp -m mark ! --mark 0xC114 --source 198.18.1.200 --sport 7000 --destination 198.18.1.100 --dport 53696 -j DROP',
    );
    expect(iptablesScript([conn], '-I').split('\n')).toEqual(['*filter', `-I ${iptablesRule('INPUT', conn)}`, `-I ${iptablesRule('OUTPUT', conn)}`, 'COMMIT', '']);
  });

  it('names the nftables table as CRIU does: cut to 31 characters with "inet "', () => {
    expect(nftTableName('22781e67-56d8-4051-b855-7838a416437a')).toBe('CRIU-22781e67-56d8-4051-b8');
  });

  it('makes the nftables table with both directions of each connection', () => {
    const script = nftLockScript('CRIU-x', [conn]);
    expect(script).toContain('add chain inet CRIU-x input { type filter hook input priority 0; }');
    expect(script).toContain('add rule inet CRIU-x input meta mark 0xC114 accept');
    expect(script).toContain('add rule inet CRIU-x input ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop');
    expect(script).toContain('add element inet CRIU-x conns4 { 198.18.1.100 . 53696 . 198.18.1.200 . 7000, 198.18.1.200 . 7000 . 198.18.1.100 . 53696 }');
  });

  it("reads CRIU's rules back from iptables -S and its tables from nft -j", () => {
    const listing = [
      '-P INPUT ACCEPT',
      '-A INPUT -s 198.18.1.100/32 -d 198.18.1.200/32 -p tcp -m mark ! --mark 0xc114 -m tcp --sport 53696 --dport 7000 -j DROP',
      '-A INPUT -s 10.0.0.1/32 -p tcp -m tcp --dport 22 -j ACCEPT',
      '-A OUTPUT -s 198.18.1.200/32 -d 198.18.1.100/32 -p tcp -m mark ! --mark 0xc114 -m tcp --sport 7000 --dport 53696 -j DROP',
    ].join('\n');
    expect(parseCriuIptablesRules(listing)).toEqual([
      { chain: 'INPUT', source: '198.18.1.100', sport: 53696, destination: '198.18.1.200', dport: 7000 },
      { chain: 'OUTPUT', source: '198.18.1.200', sport: 7000, destination: '198.18.1.100', dport: 53696 },
    ]);
    const json = JSON.stringify({ nftables: [{ metainfo: {} }, { table: { family: 'inet', name: 'CRIU-abc' } }, { table: { family: 'ip', name: 'filter' } }] });
    expect(parseCriuTables(json)).toEqual(['CRIU-abc']);
  });

  it('installs in one iptables-restore and removes only the rules still present', async () => {
    const calls: { file: string; args: readonly string[]; input?: string }[] = [];
    const present = '-A INPUT -s 198.18.1.100/32 -d 198.18.1.200/32 -p tcp -m mark ! --mark 0xc114 -m tcp --sport 53696 --dport 7000 -j DROP';
    const exec = async (file: string, args: readonly string[], opts?: ExecOptions): Promise<ExecResult> => {
      calls.push({ file, args, input: opts?.input });
      const stdout = file === 'iptables' && args.includes('INPUT') ? `-P INPUT ACCEPT\n${present}\n` : '';
      return { stdout, stderr: '', exitCode: 0 };
    };
    const nf = new CriuNetfilter(exec);
    expect(await nf.install({ mode: 'IPTABLES', connections: [conn] })).toBe(2);
    expect(calls[0]).toMatchObject({ file: 'iptables-restore', args: ['-w', '--noflush'] });
    calls.length = 0;
    expect(await nf.remove({ mode: 'IPTABLES', connections: [conn, { ...conn, peerPort: 1 }] })).toBe(1);
    const restore = calls.find((c) => c.file === 'iptables-restore');
    expect(restore?.input?.split('\n').filter((l) => l.startsWith('-D'))).toEqual([`-D ${iptablesRule('INPUT', conn)}`]);
  });
});
