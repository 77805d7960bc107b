import { describe, expect, it } from 'vitest';
import type { Service__Output } from '../../proto/gen/godwit/v1/Service.js';
import { formatChange, formatServices, parseBackendKey, parseServiceKey } from '../../controller/steering-format.js';

const c = (packets: string, bytes: string, flows: string) => ({ packets, bytes, flows });
const web: Service__Output = {
  id: 1,
  protocol: 'TCP',
  vip: '198.18.1.240',
  port: 80,
  counters: c('340', '41230', '12'),
  backends: [
    { id: 1, address: '198.18.1.201', port: 8080, weight: 10, host: 'a', hostAddress: '198.18.1.1', state: 'ACTIVE', counters: c('201', '24100', '7') },
    { id: 2, address: '198.18.1.202', port: 8080, weight: 5, host: 'b', hostAddress: '198.18.1.2', state: 'DRAINING', counters: c('139', '17130', '5') },
  ],
};

describe('steering CLI output', () => {
  it('lists services like ipvsadm -Ln --stats: a Prot LocalAddress:Port line, then -> RemoteAddress:Port lines', () => {
    expect(formatServices([web], '5')).toBe(
      [
        'godwit steering, rule generation 5',
        'Prot LocalAddress:Port       Host         Weight State         Flows         Pkts          Bytes',
        '  -> RemoteAddress:Port',
        'TCP  198.18.1.240:80                                              12          340          41230',
        '  -> 198.18.1.201:8080       a            10     Active            7          201          24100',
        '  -> 198.18.1.202:8080       b            5      Draining          5          139          17130',
      ].join('\n'),
    );
  });

  it('says which generation a change made, and how the fleet converged when it waited', () => {
    const base = { generation: '7', service: web, acceptedAtMs: 0, waited: false, converged: false, convergeMs: 0, laggingHosts: [] };
    expect(formatChange('created TCP 198.18.1.240:80', base)).toBe('created TCP 198.18.1.240:80: rule generation 7');
    expect(formatChange('x', { ...base, waited: true, converged: true, convergeMs: 12.34 })).toContain('every ready host holds generation 7 (12.3 ms after it was accepted)');
    expect(formatChange('x', { ...base, waited: true, convergeMs: 10000, laggingHosts: ['b', 'c'] })).toContain('NOT every host holds generation 7 after 10000 ms; lagging: b, c');
  });

  it('parses service and backend endpoints the way ipvsadm users write them, leaving validation to the controller', () => {
    expect(parseServiceKey('tcp://198.18.1.240:80')).toEqual({ protocol: 'TCP', vip: '198.18.1.240', port: 80 });
    expect(parseServiceKey('udp://198.18.1.240:53')).toEqual({ protocol: 'UDP', vip: '198.18.1.240', port: 53 });
    expect(parseServiceKey('198.18.1.240:80')).toEqual({ protocol: 'TCP', vip: '198.18.1.240', port: 80 });
    expect(parseServiceKey('198.18.1.240:0').port).toBe(0); // the controller answers INVALID_ARGUMENT
    expect(() => parseServiceKey('198.18.1.240')).toThrow(/must be \[tcp:\/\/\|udp:\/\/\]VIP:PORT/);
    expect(parseBackendKey('198.18.1.201:8080')).toEqual({ address: '198.18.1.201', port: 8080 });
    expect(() => parseBackendKey('198.18.1.201')).toThrow(/must be ADDRESS:PORT/);
  });
});
