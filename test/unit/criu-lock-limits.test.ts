import { status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { CRIU_LOCK_LIMITS, unsafeLockRefusal } from '../../controller/criu-lock-limits.js';
import { PreconditionError, UnsafeLockModeError } from '../../lib/errors.js';

describe('CRIU lock modes at connection counts where they are known to fail', () => {
  it('refuses NFTABLES from 512 TCP connections and IPTABLES from 2000', () => {
    expect(CRIU_LOCK_LIMITS.NFTABLES?.refuseAt).toBe(512);
    expect(CRIU_LOCK_LIMITS.IPTABLES?.refuseAt).toBe(2000);
    expect(unsafeLockRefusal('NFTABLES', 511)).toBeUndefined();
    expect(unsafeLockRefusal('NFTABLES', 512)).toBeInstanceOf(UnsafeLockModeError);
    expect(unsafeLockRefusal('IPTABLES', 1999)).toBeUndefined();
    expect(unsafeLockRefusal('IPTABLES', 2000)).toBeInstanceOf(UnsafeLockModeError);
    // What NFTABLES is refused at, IPTABLES still runs: each mode has its own limit.
    expect(unsafeLockRefusal('IPTABLES', 1000)).toBeUndefined();
  });

  it('never refuses EBPF', () => {
    for (const n of [0, 512, 2000, 100_000]) expect(unsafeLockRefusal('EBPF', n)).toBeUndefined();
  });

  it('lets the request accept the risk', () => {
    expect(unsafeLockRefusal('NFTABLES', 5000, true)).toBeUndefined();
    expect(unsafeLockRefusal('IPTABLES', 5000, true)).toBeUndefined();
    expect(unsafeLockRefusal('NFTABLES', 5000, false)).toBeInstanceOf(UnsafeLockModeError);
  });

  it('is a FAILED_PRECONDITION that names the count, the limit and the fix', () => {
    const e = unsafeLockRefusal('NFTABLES', 700)!;
    expect(e).toBeInstanceOf(PreconditionError);
    expect(e.code).toBe(status.FAILED_PRECONDITION);
    expect(e).toMatchObject({ lockMode: 'NFTABLES', tcpConnections: 700, refuseAt: 512 });
    expect(e.message).toMatch(/lock_mode NFTABLES .* 700 TCP connections \(refused from 512\)/);
    expect(e.message).toMatch(/FD_SETSIZE/);
    expect(e.message).toMatch(/; use lock_mode EBPF, or set allow_unsafe_lock to accept the risk$/);
  });
});
