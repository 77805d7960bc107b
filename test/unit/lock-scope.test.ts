import { describe, expect, it } from 'vitest';
import { lockScope } from '../../agent/lock-scope.js';
import { ANY_PORT, endpointProblem, isAddressWide, lockEndpointProblem, parseEndpoint } from '../../lib/endpoint.js';

describe('lockScope', () => {
  it('adds one address-wide entry per address and protocol, after the endpoints', () => {
    const scope = lockScope([
      { proto: 'tcp', address: '198.18.1.200', port: 7000 },
      { proto: 'udp', address: '198.18.1.200', port: 5353 },
      { proto: 'tcp', address: '198.18.1.201', port: 80 },
    ]);
    expect(scope).toEqual([
      { proto: 'tcp', address: '198.18.1.200', port: 7000 },
      { proto: 'udp', address: '198.18.1.200', port: 5353 },
      { proto: 'tcp', address: '198.18.1.201', port: 80 },
      { proto: 'tcp', address: '198.18.1.200', port: ANY_PORT },
      { proto: 'udp', address: '198.18.1.200', port: ANY_PORT },
      { proto: 'tcp', address: '198.18.1.201', port: ANY_PORT },
      { proto: 'udp', address: '198.18.1.201', port: ANY_PORT },
    ]);
  });

  it('drops repeats and is idempotent, so a recorded scope can go through it again', () => {
    const endpoints = [
      { proto: 'tcp' as const, address: '198.18.1.200', port: 7000 },
      { proto: 'tcp' as const, address: '198.18.1.200', port: 7000 },
    ];
    const once = lockScope(endpoints);
    expect(once).toHaveLength(3);
    expect(lockScope(once)).toEqual(once);
  });

  it('is empty for no endpoints', () => {
    expect(lockScope([])).toEqual([]);
  });

  it('gives entries the lock accepts but user input never does', () => {
    for (const e of lockScope([{ proto: 'udp', address: '198.18.1.200', port: 53 }])) expect(lockEndpointProblem(e)).toBeUndefined();
    const wide = lockScope([{ proto: 'udp', address: '198.18.1.200', port: 53 }]).filter(isAddressWide);
    expect(wide).toHaveLength(2);
    for (const e of wide) expect(endpointProblem(e)).toMatch(/port 0 must be 1-65535/);
    expect(() => parseEndpoint('tcp://198.18.1.200:0')).toThrow(/1-65535/);
    expect(lockEndpointProblem({ proto: 'tcp', address: '127.0.0.1', port: ANY_PORT })).toMatch(/cannot move/);
  });
});
