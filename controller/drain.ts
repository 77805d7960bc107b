/**
 * Drain(host): cordon the host, then move every workload registered on it elsewhere, each
 * target chosen by the placement rule (controller/placement.ts) when its turn comes, so that
 * earlier moves count in the load. Limits: at most `maxPerHost` migrations at once into any one
 * host and `maxInFlight` across the fleet (both count every drain's migrations). Each migration
 * goes through the same Migrate path as a user's (validation, overlap claims, preflight).
 * A workload that cannot move is recorded FAILED with the reason and the rest go on; the drain
 * ends DONE when all moved, PARTIAL otherwise. The host stays cordoned after it.
 */
import { randomBytes } from 'node:crypto';
import type { DrainRequest__Output } from '../proto/gen/godwit/v1/DrainRequest.js';
import type { MigrateRequest__Output } from '../proto/gen/godwit/v1/MigrateRequest.js';
import { InvalidArgumentError, PreconditionError } from '../lib/errors.js';
import type { Logger } from '../lib/log.js';
import { HOST_NAME } from '../lib/subjects.js';
import type { CordonStore } from './cordon.js';
import type { DrainState, DrainStore, DrainWorkloadState } from './drain-store.js';
import { freezeMs, type MigrationState } from './migration-machine.js';
import type { MigrationStore } from './migration-store.js';
import type { Orchestrator } from './orchestrator.js';
import { detail } from './phases.js';
import { chooseTarget, type Labels, type PlacementHost } from './placement.js';
import type { HostRegistry } from './registry.js';
import type { WorkloadRegistry } from './workload-registry.js';

/** Two at once into one host: its agent restores while it receives the next image. */
export const DEFAULT_MAX_PER_HOST = 2;
/** Four at once in all: on a small machine more CRIU dumps at once mostly compete for CPU. */
export const DEFAULT_MAX_IN_FLIGHT = 4;
const MAX_LIMIT = 256;
/** After a move, how long the registry may take to show the workload on its target (its write is asynchronous). */
const REGISTRY_CATCH_UP_MS = 5_000;

export class DrainRunningError extends PreconditionError {
  constructor(readonly host: string, readonly drainId: string) {
    super(`host "${host}" is being drained already (drain ${drainId}); follow it with godwit drains ${drainId}`);
    this.name = 'DrainRunningError';
  }
}

export interface DrainRunnerOptions {
  drains: DrainStore;
  cordons: CordonStore;
  workloads: WorkloadRegistry;
  hosts: HostRegistry;
  migrations: MigrationStore;
  orchestrator: Orchestrator;
  /** The controller's Migrate (the one validation path), tagged with the drain. */
  migrate: (req: MigrateRequest__Output, drainId: string) => Promise<MigrationState>;
  log: Logger;
}

interface Moving {
  target: string;
  labels: Labels;
}

export class DrainRunner {
  /** Every drain's migrations running now, by workload name (fleet-wide and per-host counts). */
  private readonly moving = new Map<string, Moving>();
  private wakers: (() => void)[] = [];
  private readonly running = new Map<string, Promise<void>>();

  constructor(private readonly opts: DrainRunnerOptions) {}

  /** Validates, cordons the host, records the drain and runs it in the background. */
  async start(req: DrainRequest__Output): Promise<DrainState> {
    const { drains, cordons, workloads, hosts } = this.opts;
    const host = req.host;
    if (!host) throw new InvalidArgumentError('host', 'host is required: the host to empty');
    if (!HOST_NAME.test(host)) throw new InvalidArgumentError('host', `host "${host}" is not a valid host name (${HOST_NAME})`);
    const maxPerHost = limit('max_per_host', req.maxPerHost, DEFAULT_MAX_PER_HOST);
    const maxInFlight = limit('max_in_flight', req.maxInFlight, DEFAULT_MAX_IN_FLIGHT);
    for (const t of req.targets) {
      if (!HOST_NAME.test(t)) throw new InvalidArgumentError('targets', `target "${t}" is not a valid host name (${HOST_NAME})`);
      if (t === host) throw new InvalidArgumentError('targets', `targets names the drained host "${host}"`);
    }
    hosts.ready(host);
    const busy = drains.list().find((d) => d.host === host && d.state === 'RUNNING' && this.running.has(d.id));
    if (busy) throw new DrainRunningError(host, busy.id);
    const id = `d-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
    await cordons.set(host, true, `drained by ${id}`);
    const now = Date.now();
    const d: DrainState = {
      id,
      host,
      state: 'RUNNING',
      workloads: workloads
        .list()
        .filter((w) => w.host === host)
        .map((w) => ({ name: w.name, targetHost: '', state: 'WAITING', migrationId: '', error: '', freezeMs: 0 })),
      maxPerHost,
      maxInFlight,
      targets: [...req.targets],
      createdAtMs: now,
      updatedAtMs: now,
      moved: 0,
      failed: 0,
    };
    await drains.create(d);
    const log = this.opts.log.child({ drainId: id, host });
    log.info({ workloads: d.workloads.length, maxPerHost, maxInFlight }, 'drain started');
    this.launch(d, log, []);
    return d;
  }

  private launch(d: DrainState, log: Logger, inFlight: { name: string; migrationId: string; target: string }[]): void {
    const run = this.run(d, log, inFlight)
      .catch((err: unknown) => log.error({ err: detail(err) }, 'drain stopped'))
      .finally(() => this.running.delete(d.id));
    this.running.set(d.id, run);
  }

  /**
   * Drains an earlier leader left running, driven on by this one (at start, or on taking the
   * lead, after the unfinished migrations were resumed). A workload whose migration had begun is
   * followed to that migration's end (found by the drain's id when its number was not recorded
   * yet); one still waiting is placed and moved as in any drain; the drain ends as usual.
   */
  async recover(): Promise<void> {
    await this.opts.drains.load();
    for (const d of this.opts.drains.list()) {
      if (d.state !== 'RUNNING' || this.running.has(d.id)) continue;
      const started = this.opts.migrations.list().filter((m) => m.drainId === d.id);
      const inFlight: { name: string; migrationId: string; target: string }[] = [];
      const workloads = d.workloads.map((w): DrainWorkloadState => {
        if (w.state !== 'MOVING') return w;
        const m = w.migrationId ? this.opts.migrations.get(w.migrationId) : started.find((x) => x.request.workloadName === w.name);
        // Asked for, but no migration was recorded: it never began, so it waits its turn again.
        if (!m) return { ...w, state: 'WAITING', targetHost: '', migrationId: '' };
        inFlight.push({ name: w.name, migrationId: m.id, target: m.request.targetHost });
        return { ...w, migrationId: m.id, targetHost: m.request.targetHost };
      });
      const log = this.opts.log.child({ drainId: d.id, host: d.host });
      log.warn({ following: inFlight.map((x) => x.migrationId), waiting: workloads.filter((w) => w.state === 'WAITING').length }, 'driving on a drain an earlier controller left running');
      this.launch({ ...d, workloads, updatedAtMs: Date.now() }, log, inFlight);
    }
  }

  /** Resolves when the drain has ended (tests, shutdown). */
  async settled(id: string): Promise<void> {
    await this.running.get(id);
  }

  /** `inFlight`: migrations an earlier leader began for this drain, followed to their end here. */
  private async run(first: DrainState, log: Logger, inFlight: { name: string; migrationId: string; target: string }[]): Promise<void> {
    let d = first;
    const change = (name: string, patch: Partial<DrainWorkloadState>) => {
      const workloads = d.workloads.map((w) => (w.name === name ? { ...w, ...patch } : w));
      d = { ...d, workloads, moved: workloads.filter((w) => w.state === 'MOVED').length, failed: workloads.filter((w) => w.state === 'FAILED').length, updatedAtMs: Date.now() };
      void this.opts.drains.save(d);
    };
    const active = new Set<string>();
    const track = (name: string, target: string, move: Promise<void>) => {
      this.moving.set(name, { target, labels: this.opts.workloads.get(name)?.labels ?? {} });
      active.add(name);
      void move.finally(() => {
        this.moving.delete(name);
        active.delete(name);
        this.wake();
      });
    };
    for (const f of inFlight) track(f.name, f.target, this.finishMove(f.migrationId, f.name, f.target, change, d.host));
    for (;;) {
      // Synchronous from here to the wait: a slot freed meanwhile wakes the wait below.
      for (const w of d.workloads) {
        if (w.state !== 'WAITING') continue;
        if (this.moving.size >= d.maxInFlight) break;
        const choice = this.place(d, w.name);
        if (choice.kind === 'wait') continue;
        if (choice.kind === 'refused') {
          log.warn({ workload: w.name, reason: choice.reason }, 'workload cannot move');
          change(w.name, { state: 'FAILED', error: choice.reason });
          continue;
        }
        change(w.name, { state: 'MOVING', targetHost: choice.host });
        track(w.name, choice.host, this.moveOne(d.id, w.name, choice.host, change, log));
      }
      if (active.size === 0 && !d.workloads.some((w) => w.state === 'WAITING')) break;
      await new Promise<void>((resolve) => this.wakers.push(resolve));
    }
    d = { ...d, state: d.failed === 0 ? 'DONE' : 'PARTIAL', updatedAtMs: Date.now() };
    await this.opts.drains.save(d);
    log.info({ moved: d.moved, failed: d.failed, ms: d.updatedAtMs - d.createdAtMs }, 'drain ended');
  }

  private async moveOne(drainId: string, name: string, target: string, change: (name: string, patch: Partial<DrainWorkloadState>) => void, log: Logger): Promise<void> {
    let m: MigrationState;
    try {
      m = await this.opts.migrate(
        { workloadName: name, sourceHost: '', targetHost: target, workload: null, lockMode: 'LOCK_MODE_UNSPECIFIED', lockLeaseMs: 0, allowUnsafeLock: false, postCopy: false },
        drainId,
      );
    } catch (err) {
      log.warn({ workload: name, target, err: detail(err) }, 'migration refused');
      change(name, { state: 'FAILED', error: `migration to "${target}" refused: ${detail(err)}` });
      return;
    }
    change(name, { migrationId: m.id });
    await this.finishMove(m.id, name, target, change);
  }

  /**
   * Waits for the workload's migration to end (run here), then records where the workload is.
   * `drainedHost`: a migration an earlier leader began (recover): undone because that leader
   * stopped before the pivot, it is no failure of the workload's, which waits its turn again.
   */
  private async finishMove(migrationId: string, name: string, target: string, change: (name: string, patch: Partial<DrainWorkloadState>) => void, drainedHost?: string): Promise<void> {
    await this.opts.orchestrator.settled(migrationId);
    const end = this.opts.migrations.get(migrationId);
    if (drainedHost && end?.phase === 'FAILED' && (end.controllers?.length ?? 0) > 1 && this.opts.workloads.get(name)?.host === drainedHost) {
      change(name, { state: 'WAITING', targetHost: '', migrationId: '' });
      return;
    }
    if (end?.phase !== 'DONE') {
      change(name, { state: 'FAILED', error: end?.error || `migration ${migrationId} ended ${end?.phase ?? 'unrecorded'}` });
      return;
    }
    // The registry follows the move asynchronously; the next placement should see it there.
    const deadline = Date.now() + REGISTRY_CATCH_UP_MS;
    while (this.opts.workloads.get(name)?.host !== target && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    change(name, { state: 'MOVED', freezeMs: freezeMs(end) ?? 0 });
  }

  /** Where the workload goes now; 'wait' while every host that could take it is at its limit. */
  private place(d: DrainState, name: string): { kind: 'go'; host: string } | { kind: 'wait' } | { kind: 'refused'; reason: string } {
    const w = this.opts.workloads.get(name);
    if (!w) return { kind: 'refused', reason: 'it is no longer registered' };
    if (w.host !== d.host) return { kind: 'refused', reason: `it runs on "${w.host}" now, not on the drained host` };
    const hosts = this.placementHosts();
    const subject = { name, host: w.host, labels: w.labels ?? {} };
    const any = chooseTarget(subject, hosts, { allowed: d.targets });
    if ('reasons' in any) return { kind: 'refused', reason: `no host can take it: ${any.reasons.join('; ')}` };
    const open = chooseTarget(subject, hosts.filter((h) => this.incoming(h.name) < d.maxPerHost), { allowed: d.targets });
    return open.host ? { kind: 'go', host: open.host } : { kind: 'wait' };
  }

  /** The fleet as placement sees it: registered workloads where they run, plus those on their way. */
  private placementHosts(): PlacementHost[] {
    const regs = this.opts.workloads.list();
    return this.opts.hosts.list().map((h) => {
      const name = h.heartbeat.host;
      const here = regs.filter((w) => w.host === name).map((w) => w.labels ?? {});
      const coming = [...this.moving.values()].filter((m) => m.target === name).map((m) => m.labels);
      return {
        name,
        ready: h.ready,
        cordoned: this.opts.cordons.isCordoned(name),
        workloads: here.length + coming.length,
        freeMemoryBytes: h.heartbeat.freeMemoryBytes,
        workloadLabels: [...here, ...coming],
      };
    });
  }

  private incoming(host: string): number {
    let n = 0;
    for (const m of this.moving.values()) if (m.target === host) n++;
    return n;
  }

  private wake(): void {
    const w = this.wakers;
    this.wakers = [];
    for (const fn of w) fn();
  }
}

function limit(field: string, value: number, fallback: number): number {
  if (!value) return fallback;
  if (value > MAX_LIMIT) throw new InvalidArgumentError(field, `${field} must be at most ${MAX_LIMIT}, got ${value}`);
  return value;
}

