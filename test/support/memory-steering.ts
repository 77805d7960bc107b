/**
 * A steering data plane that keeps the table in memory, for unit tests of the control plane
 * (agent/steering-sync.ts, the controller's propagation) only. The product's data plane is the
 * kernel one (agent/linux/steering-ebpf.ts); nothing outside test/ may use this.
 */
import type { SteeringCounters, SteeringDataplane, SteeringForwarding, SteeringHandoff, SteeringTable } from '../../agent/steering.js';

export class MemorySteering implements SteeringDataplane {
  table: SteeringTable = { generation: 0, services: [] };
  applied: number[] = [];
  installed = false;
  /** Live flows per backend id, as a test sets them. */
  flows = new Map<number, number>();
  /** When set, apply() fails with it (a kernel refusing a map write). */
  failWith?: Error;

  async install(): Promise<void> {
    this.installed = true;
  }

  async apply(table: SteeringTable): Promise<{ generation: number; applied: boolean }> {
    if (this.failWith) throw this.failWith;
    if (table.generation <= this.table.generation) return { generation: this.table.generation, applied: false };
    this.table = structuredClone(table);
    this.applied.push(table.generation);
    return { generation: table.generation, applied: true };
  }

  async appliedGeneration(): Promise<number> {
    return this.table.generation;
  }

  async counters(): Promise<SteeringCounters> {
    return { services: new Map(), backends: new Map() };
  }

  async liveFlows(backendIds: readonly number[]): Promise<number> {
    return backendIds.reduce((n, id) => n + (this.flows.get(id) ?? 0), 0);
  }

  async forwarding(): Promise<SteeringForwarding> {
    return { forwarded: 0n, staleDropped: 0n };
  }

  async exportWorkload(): Promise<SteeringHandoff> {
    const none = { keySize: 0, valueSize: 0, count: 0, keys: Buffer.alloc(0), values: Buffer.alloc(0) };
    return { flows: none, rnat: none, backendCounters: new Map() };
  }

  async importWorkload(): Promise<number> {
    return 0;
  }

  async forgetWorkload(): Promise<number> {
    return 0;
  }

  async uninstall(): Promise<void> {
    this.installed = false;
  }
}
