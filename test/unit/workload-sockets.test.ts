import { status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { parseHexAddressPort, parseProcNetTable } from '../../agent/linux/process-sockets.js';
import type { Endpoint } from '../../lib/endpoint.js';
import { HostBoundSocketsError } from '../../lib/errors.js';
import { formatSocket, hostBoundSockets, tcpConnectionCount, type WorkloadSocket } from '../../lib/workload-sockets.js';

const endpoints: Endpoint[] = [{ proto: 'tcp', address: '198.18.1.201', port: 6379 }];

const sock = (s: Partial<WorkloadSocket>): WorkloadSocket => ({
  proto: 'tcp',
  localAddress: '198.18.1.201',
  localPort: 6379,
  remoteAddress: '',
  remotePort: 0,
  state: 'LISTEN',
  ...s,
});

describe('which sockets are bound to the host (hostBoundSockets)', () => {
  const outboundFromHost = sock({ localAddress: '198.18.1.2', localPort: 41234, remoteAddress: '198.18.1.100', remotePort: 6379, state: 'ESTABLISHED' });
  const outboundFromEndpoint = sock({ localAddress: '198.18.1.201', localPort: 50000, remoteAddress: '198.18.1.100', remotePort: 6379, state: 'ESTABLISHED' });
  const listenerOnHost = sock({ localAddress: '198.18.1.2', localPort: 8080 });
  const cases: [string, WorkloadSocket, boolean][] = [
    ['an outgoing connection from the host address', outboundFromHost, true],
    ['an outgoing connection from an endpoint address (any port)', outboundFromEndpoint, false],
    ['a connection accepted on the endpoint', sock({ localPort: 6379, remoteAddress: '198.18.1.100', remotePort: 40000, state: 'ESTABLISHED' }), false],
    ['the endpoint listener', sock({}), false],
    ['a listener on the wildcard', sock({ localAddress: '0.0.0.0' }), false],
    ['a listener on loopback', sock({ localAddress: '127.0.0.1' }), false],
    ['a connection on 127/8', sock({ localAddress: '127.0.0.53', remoteAddress: '127.0.0.1', remotePort: 9, state: 'ESTABLISHED' }), false],
    ['a listener on the host address', listenerOnHost, true],
    ['a connecting socket from the host address', sock({ localAddress: '198.18.1.2', remoteAddress: '198.18.1.100', remotePort: 6379, state: 'SYN_SENT' }), true],
    ['a UDP socket bound to the host address', sock({ proto: 'udp', localAddress: '198.18.1.2', localPort: 53, state: 'UNCONNECTED' }), true],
    ['a UDP socket on the wildcard', sock({ proto: 'udp', localAddress: '0.0.0.0', localPort: 53, state: 'UNCONNECTED' }), false],
    ['a UDP socket connected from the host address', sock({ proto: 'udp', localAddress: '198.18.1.2', localPort: 5000, remoteAddress: '198.18.1.100', remotePort: 53, state: 'CONNECTED' }), true],
    ['an IPv6 listener on the wildcard', sock({ localAddress: '::' }), false],
    ['an IPv6 listener on loopback', sock({ localAddress: '::1' }), false],
    ['an IPv6 link-local address', sock({ localAddress: 'fe80::1' }), true],
  ];
  for (const [what, s, bound] of cases)
    it(`${what}: ${bound ? 'bound to the host' : 'moves'}`, () => {
      expect(hostBoundSockets([s], endpoints)).toEqual(bound ? [s] : []);
    });

  it('counts TCP connections the way CRIU locks them (a peer, not a listener, not UDP)', () => {
    expect(tcpConnectionCount([outboundFromHost, outboundFromEndpoint, listenerOnHost, sock({ proto: 'udp', remotePort: 53, remoteAddress: '1.1.1.1' })])).toBe(2);
  });

  it('formats connections and listeners', () => {
    expect(formatSocket(outboundFromHost)).toBe('tcp 198.18.1.2:41234 -> 198.18.1.100:6379');
    expect(formatSocket(listenerOnHost)).toBe('tcp 198.18.1.2:8080 (LISTEN)');
    expect(formatSocket(sock({ localAddress: 'fe80::1', localPort: 22 }))).toBe('tcp [fe80::1]:22 (LISTEN)');
  });
});

describe('the refusal (HostBoundSocketsError)', () => {
  const conn = (port: number) =>
    sock({ localAddress: '198.18.1.2', localPort: port, remoteAddress: '198.18.1.100', remotePort: 6379, state: 'ESTABLISHED' });

  it('is FAILED_PRECONDITION and names the connection, the address and the fix', () => {
    const e = new HostBoundSocketsError('a', 4321, [conn(41234)], 1, ['198.18.1.201']);
    expect(e.code).toBe(status.FAILED_PRECONDITION);
    expect(e).toMatchObject({ host: 'a', pid: 4321, total: 1 });
    expect(e.message).toBe(
      'workload 4321 on host "a" holds 1 socket whose local address does not move with it: tcp 198.18.1.2:41234 -> 198.18.1.100:6379; ' +
        "its local address 198.18.1.2 is host a's own and does not move with the workload; " +
        "bind the workload's outgoing connections to one of its endpoint addresses (for redis: bind-source-addr 198.18.1.201; generally: bind() before connect()), " +
        'or add that address as an endpoint',
    );
  });

  it('names the first three and counts the rest', () => {
    const listed = [41001, 41002, 41003, 41004].map(conn);
    const e = new HostBoundSocketsError('a', 1, listed, 40, ['198.18.1.201']);
    expect(e.message).toContain('holds 40 sockets');
    expect(e.message).toContain('tcp 198.18.1.2:41001 -> 198.18.1.100:6379, tcp 198.18.1.2:41002 -> 198.18.1.100:6379, tcp 198.18.1.2:41003 -> 198.18.1.100:6379 (and 37 more)');
    expect(e.message).not.toContain('41004');
  });

  it('a listener on the host address gets the listener fix; several addresses are all named', () => {
    const e = new HostBoundSocketsError('b', 1, [sock({ localAddress: '198.18.1.10', localPort: 8080 }), conn(41000)], 2, ['198.18.1.201']);
    expect(e.message).toContain("their local addresses 198.18.1.10, 198.18.1.2 are host b's own and do not move with the workload");
    expect(e.message).toContain('bind its listening sockets to one of its endpoint addresses (198.18.1.201) or to 0.0.0.0');
    expect(e.message).toMatch(/or add those addresses as endpoints$/);
  });
});

describe('reading the kernel tables (parseProcNetTable)', () => {
  // As /proc/net/tcp prints them on a little-endian machine.
  const tcp = [
    '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
    '   0: C90112C6:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0',
    '   1: 020112C6:A052 640112C6:18EB 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0 20 4 30 10 -1',
    '   2: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 9999 1 0 100 0 0 10 0',
  ].join('\n');

  it('keeps the given inodes, decodes addresses, ports and states', () => {
    expect(parseProcNetTable(tcp, 'tcp', new Set(['1001', '1002']), 'LE')).toEqual([
      { proto: 'tcp', localAddress: '198.18.1.201', localPort: 6379, remoteAddress: '', remotePort: 0, state: 'LISTEN' },
      { proto: 'tcp', localAddress: '198.18.1.2', localPort: 41042, remoteAddress: '198.18.1.100', remotePort: 6379, state: 'ESTABLISHED' },
    ]);
  });

  it('names UDP sockets connected or not', () => {
    const udp = [
      '   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops',
      '  1: 020112C6:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2001 2 0 0',
      '  2: 020112C6:1388 640112C6:0035 01 00000000:00000000 00:00000000 00000000     0        0 2002 2 0 0',
    ].join('\n');
    expect(parseProcNetTable(udp, 'udp', new Set(['2001', '2002']), 'LE').map((s) => s.state)).toEqual(['UNCONNECTED', 'CONNECTED']);
  });

  it('decodes IPv6 words, IPv4-mapped addresses as IPv4', () => {
    expect(parseHexAddressPort('00000000000000000000000000000000:0016', 'LE')).toEqual({ address: '::', port: 22 });
    expect(parseHexAddressPort('00000000000000000000000001000000:0016', 'LE')).toEqual({ address: '::1', port: 22 });
    expect(parseHexAddressPort('0000000000000000FFFF0000020112C6:A052', 'LE')).toEqual({ address: '198.18.1.2', port: 41042 });
    expect(parseHexAddressPort('000080FE00000000FF000000FE000000:0016', 'LE').address).toBe('fe80::ff:0:fe');
    expect(parseHexAddressPort('C6120102:0016', 'BE').address).toBe('198.18.1.2');
  });
});
