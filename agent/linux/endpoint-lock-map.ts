import type { Logger } from 'pino';
import type { MapAccess, MapDump, MapShape } from './bpf/map-access.js';
import { BpfMapReplacedError } from './bpf/native-map.js';
import { expiredKeys, planLock, planUnlock, type KeptNewer } from './lock-map-codec.js';
import { LockMirror } from './lock-mirror.js';

/*
 * godwit_lock_ep, the endpoint lock map, written in version-guarded batches: every lock or
 * unlock is planned against a mirror of the map kept in this process, then written in one batch
 * (lock-mirror.ts says why that is safe: the agent is the map's only writer, and its caller runs
 * one operation at a time). The mirror is loaded from one dump on first use and checked against
 * the map by the dump that sweeps make anyway. A lock writes each value whole, so rewriting an
 * entry starts its drops over.
 */
export class EndpointLockMap {
  /** What the map holds, as this class last wrote or read it; undefined until loaded, or while in doubt. */
  private mirror: LockMirror | undefined;

  constructor(
    readonly shape: MapShape,
    readonly access: MapAccess,
    private readonly log: Logger,
  ) {}

  /** Entries as last written or read; undefined until the mirror is loaded. */
  get mirroredSize(): number | undefined {
    return this.mirror?.size;
  }

  /** Forgets the mirror (the map was removed; a later install creates a new one). */
  forget(): void {
    this.mirror = undefined;
  }

  dump(): Promise<MapDump> {
    return this.access.dump();
  }

  /** How many held entries have a key `test` accepts (keyWords form), from the mirror, loaded on first use. */
  async countHeld(test: (words: Uint32Array, at: number) => boolean): Promise<number> {
    const mirror = this.mirror ?? this.resync('first use', await this.access.dump());
    return mirror.countKeys(test);
  }

  /** The version guard against the mirror, then one batch update. */
  async lock(keys: Buffer, version: bigint, deadlineNs: bigint): Promise<{ locked: number; keptNewer: KeptNewer[] }> {
    const plan = await this.writePlanned(
      (held) => planLock(this.shape.keySize, keys, held, version, deadlineNs),
      // Also when it writes nothing: the access then still checks that the pin names the mirrored map.
      (p, mapId) => this.access.update(p.writes.keys, p.writes.values, mapId),
      (mirror, p) => mirror.record(p.writes.keys, version, deadlineNs),
    );
    return { locked: plan.writes.count, keptNewer: plan.keptNewer };
  }

  /** The version guard against the mirror, then one batch delete. */
  async unlock(keys: Buffer, version: bigint): Promise<{ unlocked: number; keptNewer: KeptNewer[] }> {
    let unlocked = 0;
    const plan = await this.writePlanned(
      (held) => planUnlock(this.shape.keySize, keys, held, version),
      async (p, mapId) => {
        unlocked = await this.access.delete(p.deletes, mapId);
      },
      // The plan's keys are distinct entries of this mirror: as many as it holds means all of them.
      (mirror, p) => (p.count === mirror.size ? mirror.clear() : mirror.forget(p.deletes)),
    );
    if (unlocked !== plan.count) {
      // Something else deleted entries (the mirror has forgotten those now): look for more now, not at the next sweep.
      this.log.warn({ map: this.shape.name, planned: plan.count, deleted: unlocked }, 'unlock found entries already gone from the map');
      await this.reload(`unlock deleted ${unlocked} of ${plan.count} entries`);
    }
    return { unlocked, keptNewer: plan.keptNewer };
  }

  /** Deletes the entries whose lease ran out by nowNs; returns their keys (packed). */
  async sweepExpired(nowNs: bigint): Promise<{ keys: Buffer; count: number }> {
    // The dump that finds ended leases also checks the mirror against the map.
    const held = await this.access.dump();
    const mirror = this.resync('sweep', held);
    const expired = expiredKeys(this.shape.keySize, held, nowNs);
    if (expired.count === 0) return expired;
    try {
      await this.access.delete(expired.keys, held.mapId);
    } catch (err) {
      await this.reload(`sweep delete failed: ${err instanceof Error ? err.message : String(err)}`);
      throw err;
    }
    mirror.forget(expired.keys);
    return expired;
  }

  /**
   * One version-guarded write: plan against the mirror (loaded from a dump on first use), write,
   * and record in the mirror what the kernel took. A failed write may have gone in part way, so
   * the mirror is reloaded from the map before the error goes on; a write refused because the pin
   * names another map than the mirror's (the lock was reinstalled meanwhile) is planned again
   * against the new map and tried once more.
   */
  private async writePlanned<P>(
    plan: (held: LockMirror) => P,
    write: (p: P, mapId: number | undefined) => Promise<void>,
    record: (mirror: LockMirror, p: P) => void,
  ): Promise<P> {
    for (let attempt = 1; ; attempt++) {
      const mirror = this.mirror ?? this.resync('first use', await this.access.dump());
      const p = plan(mirror);
      try {
        await write(p, mirror.mapId);
      } catch (err) {
        await this.reload(`write failed: ${err instanceof Error ? err.message : String(err)}`);
        if (err instanceof BpfMapReplacedError && attempt === 1) continue;
        throw err;
      }
      record(mirror, p);
      return p;
    }
  }

  /** Makes the mirror what the dump `held` says, logging any difference from what it held. */
  private resync(why: string, held: MapDump): LockMirror {
    const mirror = this.mirror;
    if (!mirror) {
      this.mirror = new LockMirror(this.shape.keySize, held, held.mapId);
      this.log.debug({ map: this.shape.name, entries: held.count, mapId: held.mapId, why }, 'lock map mirror loaded');
      return this.mirror;
    }
    const diff = mirror.differences(held);
    if (diff.unknown === 0 && diff.missing === 0 && diff.changed === 0 && mirror.mapId === held.mapId) return mirror;
    this.log.warn({ map: this.shape.name, why, ...diff, mapId: held.mapId, mirroredMapId: mirror.mapId }, 'lock map differed from what this agent wrote; mirror reloaded');
    mirror.reset(held, held.mapId);
    return mirror;
  }

  /** Reloads the mirror from a fresh dump, or drops it (the next operation loads it) when the map cannot be read. Never throws. */
  private async reload(why: string): Promise<void> {
    try {
      this.resync(why, await this.access.dump());
    } catch (err) {
      this.mirror = undefined;
      this.log.warn({ map: this.shape.name, err, why }, 'lock map unreadable; mirror dropped until the next operation');
    }
  }
}
