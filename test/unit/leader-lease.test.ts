/**
 * The leader lease (controller/leader.ts) against a real nats-server's KV, with each contender's
 * monotonic clock in the test's hands, and the agent's fencing gate (agent/fencing.ts).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { InvalidArgumentError } from '../../lib/errors.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FencingGate, StaleFencingTokenError } from '../../agent/fencing.js';
import { LeaderLease, NotLeaderError, type LeaderRecord } from '../../controller/leader.js';
import { Bus, type JsonKv } from '../../lib/bus.js';
import { createLogger } from '../../lib/log.js';
import { INSECURE, useSecurity } from '../../lib/tls.js';
import { startNatsServer, type NatsServer } from '../support/nats-server.js';

// A nats-server of the test's own on loopback, without TLS.
useSecurity(INSECURE);

const LEASE_MS = 1_000;
const log = createLogger('leader-test');

describe('leader lease', () => {
  let nats: NatsServer;
  let bus: Bus;
  let bucket = 0;

  beforeAll(async () => {
    nats = await startNatsServer();
    bus = await Bus.connect({ servers: nats.url, name: 'leader-test' });
  });
  afterAll(async () => {
    await bus?.close();
    await nats?.stop();
  });

  /** A fresh bucket per test, and contenders whose clocks the test moves. */
  async function contenders(...ids: string[]) {
    const kv: JsonKv<LeaderRecord> = await bus.kv<LeaderRecord>(`leader_test_${++bucket}`);
    return ids.map((id) => {
      const clock = { t: 0 };
      const events: string[] = [];
      const lease = new LeaderLease({
        kv, id, address: `${id}:50050`, leaseMs: LEASE_MS, log, now: () => clock.t,
        onAcquired: (token) => void events.push(`acquired ${token}`),
        onLost: () => void events.push('lost'),
      });
      return { lease, clock, events };
    });
  }

  it('one contender leads; the other stands by and refuses writes with UNAVAILABLE naming the leader', async () => {
    const [a, b] = await contenders('ctl-a', 'ctl-b');
    await a.lease.tick();
    await b.lease.tick();
    expect(a.lease.isLeader()).toBe(true);
    expect(b.lease.isLeader()).toBe(false);
    expect(() => a.lease.requireLeader()).not.toThrow();
    let err: unknown;
    try {
      b.lease.requireLeader();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NotLeaderError);
    expect((err as NotLeaderError).code).toBe(status.UNAVAILABLE);
    expect((err as Error).message).toMatch(/leader is controller "ctl-a" at ctl-a:50050/);
    expect(Number(a.lease.token())).toBeGreaterThan(0);
    expect(b.lease.token()).toBe('0');
  });

  it('a renewing leader keeps the lease however long it runs', async () => {
    const [a, b] = await contenders('ctl-a', 'ctl-b');
    await a.lease.tick();
    for (let i = 0; i < 5; i++) {
      a.clock.t += LEASE_MS / 2;
      b.clock.t += LEASE_MS / 2;
      await a.lease.tick();
      await b.lease.tick();
    }
    expect(a.lease.isLeader()).toBe(true);
    expect(b.lease.isLeader()).toBe(false);
  });

  it('a leader that stops renewing is replaced after one lease time, with a larger fencing token; woken up, it finds it lost', async () => {
    const [a, b] = await contenders('ctl-a', 'ctl-b');
    await a.lease.tick();
    const oldToken = BigInt(a.lease.token());
    await b.lease.tick(); // b sees a's revision
    b.clock.t += LEASE_MS - 1;
    await b.lease.tick();
    expect(b.lease.isLeader(), 'not before a whole lease time').toBe(false);
    b.clock.t += 2;
    await b.lease.tick();
    expect(b.lease.isLeader()).toBe(true);
    expect(BigInt(b.lease.token())).toBeGreaterThan(oldToken);
    // a was paused for as long: by its own clock it stopped leading before b took over.
    a.clock.t += LEASE_MS + 1;
    expect(a.lease.isLeader()).toBe(false);
    await a.lease.tick();
    expect(a.lease.isLeader()).toBe(false);
    expect(a.events).toEqual([`acquired ${oldToken}`, 'lost']);
    expect(b.events).toEqual([`acquired ${b.lease.token()}`]);
  });

  it('a lease released on a clean stop is taken at once', async () => {
    const [a, b] = await contenders('ctl-a', 'ctl-b');
    await a.lease.tick();
    await b.lease.tick();
    await a.lease.stop();
    expect(a.lease.isLeader()).toBe(false);
    await b.lease.tick();
    expect(b.lease.isLeader()).toBe(true);
  });

  it('two standbys racing for an expired lease: exactly one wins', async () => {
    const [a, b, c] = await contenders('ctl-a', 'ctl-b', 'ctl-c');
    await a.lease.tick();
    await Promise.all([b.lease.tick(), c.lease.tick()]);
    b.clock.t += LEASE_MS;
    c.clock.t += LEASE_MS;
    await Promise.all([b.lease.tick(), c.lease.tick()]);
    expect([b.lease.isLeader(), c.lease.isLeader()].filter(Boolean)).toHaveLength(1);
  });
});

describe('fencing gate (agent)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'godwit-crash-fence-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('admits the newest token, refuses an older one with FAILED_PRECONDITION, and remembers across a restart', async () => {
    const gate = new FencingGate(dir, 'a');
    const ok = async () => 'ran';
    await gate.admit('0', ok); // outside the protocol: admitted, remembers nothing
    await gate.admit('17', ok);
    await gate.admit('17', ok);
    await gate.admit('40', ok);
    const err = await gate.admit('17', ok).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StaleFencingTokenError);
    expect((err as StaleFencingTokenError).code).toBe(status.FAILED_PRECONDITION);
    expect((err as Error).message).toMatch(/token 17.*newer leader \(token 40\)/);
    const restarted = new FencingGate(dir, 'a');
    expect(restarted.current()).toBe(40n);
    await expect(restarted.admit('39', ok)).rejects.toThrow(StaleFencingTokenError);
    await expect(restarted.admit(undefined, ok)).resolves.toBe('ran');
  });

  it('does not remember the token of a request refused as bad, nor take one no lease can have', async () => {
    const gate = new FencingGate(dir, 'a');
    const bad = async () => {
      throw new InvalidArgumentError('endpoints', 'endpoints is empty');
    };
    await expect(gate.admit('50', bad)).rejects.toThrow(InvalidArgumentError);
    expect(gate.current()).toBe(40n);
    await expect(gate.admit('18446744073709551615', async () => 'ran')).rejects.toThrow(InvalidArgumentError);
    expect(gate.current()).toBe(40n);
    await gate.admit('50', async () => {
      throw new Error('criu dump failed');
    }).catch(() => undefined);
    expect(gate.current()).toBe(50n); // a command that ran and failed on the host was accepted
  });
});
