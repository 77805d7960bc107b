import { status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { validateMigrate } from '../../controller/service.js';
import { GodwitError } from '../../lib/errors.js';
import type { MigrateRequest__Output } from '../../proto/gen/godwit/v1/MigrateRequest.js';

const good = (): MigrateRequest__Output => ({
  sourceHost: 'a',
  targetHost: 'b',
  workload: { pid: 1234, endpoints: [{ protocol: 'TCP', address: '198.18.1.200', port: 7000 }] },
  lockMode: 'LOCK_MODE_UNSPECIFIED',
  lockLeaseMs: 0,
  allowUnsafeLock: false,
  postCopy: false,
  workloadName: '',
});

function codeOf(req: MigrateRequest__Output): { code: status; message: string } {
  try {
    validateMigrate(req);
  } catch (e) {
    if (e instanceof GodwitError) return { code: e.code, message: e.message };
    throw e;
  }
  throw new Error('expected a validation error');
}

describe('Migrate request validation', () => {
  it('accepts a good request, defaulting the lock mode and lease', () => {
    const spec = validateMigrate(good());
    expect(spec.lockMode).toBe('EBPF');
    expect(spec.lockLeaseMs).toBe(120_000);
    expect(spec.allowUnsafeLock).toBe(false);
    expect(spec.workload.endpoints).toEqual([{ proto: 'tcp', address: '198.18.1.200', port: 7000 }]);
  });

  for (const mode of ['EBPF', 'IPTABLES', 'NFTABLES'] as const) {
    it(`accepts lock mode ${mode}`, () => {
      const r = good();
      r.lockMode = mode;
      expect(validateMigrate(r).lockMode).toBe(mode);
    });
  }

  it('carries allow_unsafe_lock into the migration', () => {
    const r = good();
    r.lockMode = 'NFTABLES';
    r.allowUnsafeLock = true;
    expect(validateMigrate(r).allowUnsafeLock).toBe(true);
  });

  it('carries post_copy into the migration', () => {
    const r = good();
    r.postCopy = true;
    expect(validateMigrate(r).postCopy).toBe(true);
    expect(validateMigrate(good()).postCopy).toBe(false);
  });

  const cases: [string, (r: MigrateRequest__Output) => void, status, RegExp][] = [
    ['post-copy under a CRIU lock mode', (r) => ((r.postCopy = true), (r.lockMode = 'IPTABLES')), status.INVALID_ARGUMENT, /post_copy needs lock_mode EBPF/],
    ['no source', (r) => (r.sourceHost = ''), status.INVALID_ARGUMENT, /source_host is required/],
    ['a bad host name', (r) => (r.targetHost = 'B/../x'), status.INVALID_ARGUMENT, /target_host .* not a valid host name/],
    ['target equal to source', (r) => (r.targetHost = 'a'), status.INVALID_ARGUMENT, /must differ from source_host/],
    ['no workload', (r) => (r.workload = null), status.INVALID_ARGUMENT, /workload is required/],
    ['pid 0', (r) => (r.workload!.pid = 0), status.INVALID_ARGUMENT, /workload.pid/],
    ['no endpoints', (r) => (r.workload!.endpoints = []), status.INVALID_ARGUMENT, /at least one endpoint/],
    ['a wildcard address', (r) => (r.workload!.endpoints[0].address = '0.0.0.0'), status.INVALID_ARGUMENT, /cannot move/],
    ['a non-IPv4 address', (r) => (r.workload!.endpoints[0].address = 'example'), status.INVALID_ARGUMENT, /IPv4/],
    ['port 0', (r) => (r.workload!.endpoints[0].port = 0), status.INVALID_ARGUMENT, /port/],
    ['no protocol', (r) => (r.workload!.endpoints[0].protocol = 'PROTOCOL_UNSPECIFIED'), status.INVALID_ARGUMENT, /protocol must be TCP or UDP/],
    ['a duplicate endpoint', (r) => r.workload!.endpoints.push({ ...r.workload!.endpoints[0] }), status.INVALID_ARGUMENT, /twice/],
    ['a lease too short', (r) => (r.lockLeaseMs = 10), status.INVALID_ARGUMENT, /lock_lease_ms/],
    ['an unknown lock mode', (r) => (r.lockMode = 'BOGUS' as MigrateRequest__Output['lockMode']), status.INVALID_ARGUMENT, /lock_mode BOGUS is not one of EBPF, IPTABLES, NFTABLES/],
  ];
  for (const [name, mutate, code, message] of cases) {
    it(`rejects ${name}`, () => {
      const r = good();
      mutate(r);
      const e = codeOf(r);
      expect(status[e.code]).toBe(status[code]);
      expect(e.message).toMatch(message);
    });
  }
});
