/**
 * The controller's Prometheus metrics, derived from what it already produces: the migration
 * events the orchestrator publishes (lib/subjects.ts migrationEvent), the migration records and
 * the host registry. Nothing in the migration flow calls into here.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Bus } from '../lib/bus.js';
import { countNatsReconnects } from '../lib/metrics-http.js';
import { SUBJECTS } from '../lib/subjects.js';
import { freezeMs, isTerminal, type MigrationState } from './migration-machine.js';
import type { MigrationStore } from './migration-store.js';
import type { PhaseEvent } from './orchestrator.js';
import type { HostRegistry } from './registry.js';

/** Seconds: a phase or freeze takes from about a millisecond (LOCK) to minutes (a large TRANSFER). */
const SECONDS_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
/** Phases that mark a migration's start and end, not work with a duration. */
const MARKER_PHASES = new Set(['PENDING', 'DONE', 'FAILED']);

export interface ControllerMetricsOptions {
  bus: Bus;
  store: MigrationStore;
  registry: HostRegistry;
}

export function controllerMetrics(opts: ControllerMetricsOptions): { registry: Registry; stop: () => void } {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'godwit_controller_' });
  const migrations = new Counter({ name: 'godwit_migrations_total', help: 'Migrations that ended, by result (DONE, FAILED)', labelNames: ['result'], registers: [registry] });
  const phases = new Histogram({
    name: 'godwit_migration_phase_seconds',
    help: 'Time each migration phase took, by phase and result (ok, failed)',
    labelNames: ['phase', 'result'],
    buckets: SECONDS_BUCKETS,
    registers: [registry],
  });
  const freeze = new Histogram({ name: 'godwit_migration_freeze_seconds', help: 'How long a migrated workload was frozen (LOCK start to UNLOCK end), per DONE migration', buckets: SECONDS_BUCKETS, registers: [registry] });
  const delivered = new Counter({ name: 'godwit_held_packets_delivered_total', help: 'Packets the network lock held during freezes and the target delivered after them', registers: [registry] });
  const imageBytes = new Counter({ name: 'godwit_migration_image_bytes_total', help: 'Bytes of checkpoint images moved by DONE migrations', registers: [registry] });
  new Gauge({
    name: 'godwit_migrations_active',
    help: 'Migrations not yet DONE or FAILED, by phase',
    labelNames: ['phase'],
    registers: [registry],
    collect() {
      this.reset();
      for (const m of opts.store.list()) if (!isTerminal(m.phase)) this.inc({ phase: m.phase });
    },
  });
  new Gauge({
    name: 'godwit_host_ready',
    help: 'Whether the controller hears the host\'s heartbeats (1) or not (0)',
    labelNames: ['host'],
    registers: [registry],
    collect() {
      this.reset();
      for (const h of opts.registry.list()) this.set({ host: h.heartbeat.host }, h.ready ? 1 : 0);
    },
  });
  new Gauge({
    name: 'godwit_steering_generation',
    help: 'The steering rule generation each host\'s data plane holds, as it last reported',
    labelNames: ['host'],
    registers: [registry],
    collect() {
      this.reset();
      for (const h of opts.registry.list()) if (h.steeringGeneration !== undefined) this.set({ host: h.heartbeat.host }, h.steeringGeneration);
    },
  });
  countNatsReconnects(registry, opts.bus);

  // A migration's end is counted once even if its final event comes twice (both record it).
  const ended = new Set<string>();
  const stop = opts.bus.subscribe<PhaseEvent>(SUBJECTS.allEvents, (e) => {
    if (e.kind === 'SNAPSHOT' || e.kind === 'STARTED' || !e.migration) return;
    if (!MARKER_PHASES.has(e.phase)) phases.observe({ phase: e.phase, result: e.kind === 'SUCCEEDED' ? 'ok' : 'failed' }, e.durationMs / 1000);
    const m: MigrationState = e.migration;
    if (e.phase === m.phase && isTerminal(m.phase) && !ended.has(m.id)) {
      ended.add(m.id);
      migrations.inc({ result: m.phase });
      if (m.phase === 'DONE') {
        const f = freezeMs(m);
        if (f !== undefined) freeze.observe(f / 1000);
        delivered.inc(m.deliveredPackets ?? 0);
        imageBytes.inc(m.imageBytes ?? 0);
      }
    }
  });
  return { registry, stop };
}
