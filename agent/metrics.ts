/**
 * An agent's Prometheus metrics, read from what it already keeps: the steps its calls time
 * (agent/step-timer.ts), the lock's entry count, the packets the lock held, and the steering
 * generation its data plane holds.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Bus } from '../lib/bus.js';
import { countNatsReconnects } from '../lib/metrics-http.js';
import type { HeldTraffic, HostPlatform } from './platform.js';
import { stepObservers } from './step-timer.js';

const STEP_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120];

export interface AgentMetricsOptions {
  host: string;
  platform: HostPlatform;
  bus: Bus;
  /** The steering generation this host's data plane holds (undefined: no steering here). */
  steeringGeneration: () => number | undefined;
}

export function agentMetrics(opts: AgentMetricsOptions): { registry: Registry; stop: () => void } {
  const registry = new Registry();
  registry.setDefaultLabels({ host: opts.host });
  collectDefaultMetrics({ register: registry, prefix: 'godwit_agent_' });
  const steps = new Histogram({ name: 'godwit_agent_step_seconds', help: 'Time of each timed step of this agent\'s calls (criu dump, send image, lock entries...)', labelNames: ['step'], buckets: STEP_BUCKETS, registers: [registry] });
  const observe = (step: string, ms: number) => steps.observe({ step }, ms / 1000);
  stepObservers.add(observe);
  new Gauge({
    name: 'godwit_lock_entries',
    help: 'Network lock entries (endpoints and connections) this host holds, as the agent last wrote or read them',
    registers: [registry],
    collect() {
      const n = opts.platform.netlock.entryCount();
      if (n !== undefined) this.set(n);
    },
  });
  new Gauge({
    name: 'godwit_steering_generation',
    help: 'The steering rule generation this host\'s data plane holds',
    registers: [registry],
    collect() {
      const g = opts.steeringGeneration();
      if (g !== undefined) this.set(g);
    },
  });
  countHeldPackets(registry, opts.platform.held);
  countNatsReconnects(registry, opts.bus);
  return { registry, stop: () => stepObservers.delete(observe) };
}

/**
 * `godwit_held_packets_taken_total` and `godwit_held_packets_delivered_total`: counted where
 * every caller goes through, the host's HeldTraffic (its take and deliver are wrapped in place).
 */
function countHeldPackets(registry: Registry, held: HeldTraffic): void {
  const taken = new Counter({ name: 'godwit_held_packets_taken_total', help: 'Packets the network lock held that this host took (to deliver, to carry in an image, or to discard)', registers: [registry] });
  const delivered = new Counter({ name: 'godwit_held_packets_delivered_total', help: 'Held packets this host delivered after a freeze', registers: [registry] });
  const take = held.take.bind(held);
  const deliver = held.deliver.bind(held);
  held.take = (endpoints) => {
    const h = take(endpoints);
    taken.inc(h.count);
    return h;
  };
  held.deliver = (h) => {
    const n = deliver(h);
    delivered.inc(n);
    return n;
  };
}
