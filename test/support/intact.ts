/**
 * The checks every crash and fleet test makes of what users care about, in one place: every
 * connection alive with no byte lost, duplicated or corrupted, the workload exactly once, nothing
 * left behind, the events in order.
 */
import { expect } from 'vitest';
import type { Verdict } from '../../bench/fault-case.js';
import type { ConnectionCheck } from '../../lab/fleet-workloads.js';

/** Each workload's bystander connections: all alive, every byte there. */
export function expectConnectionsIntact(checks: readonly ConnectionCheck[], connections: number): void {
  for (const c of checks) {
    expect(c.alive, c.name).toBe(connections);
    expect(c.bytesLost, c.name).toBe(0);
    expect(c.corrupted, c.name).toBe(0);
  }
}

/** A fault case's verdict (bench/fault-case.ts): safe by every check, each one named when it is not. */
export function expectSafe(v: Verdict, connections: number): void {
  const summary = JSON.stringify(v);
  expect(['DONE', 'FAILED', 'NEEDS_ATTENTION'], summary).toContain(v.outcome);
  expect(v.exactlyOnce, summary).toBe(true);
  expect(v.alive, summary).toBe(connections);
  expect(v.bytesLost, summary).toBe(0);
  expect(v.bytesDuplicated, summary).toBe(0);
  expect(v.leftovers, summary).toEqual([]);
  expect(v.eventsInOrder, summary).toBe(true);
  expect(v.safe, summary).toBe(true);
}
