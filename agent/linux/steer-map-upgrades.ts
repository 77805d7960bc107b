import type { MapSpec, MapUpgrade, UpgradeContext } from './bpf/map-spec.js';
import { mapAccess } from './bpf/map-transfer.js';
import { FLOW_KEY_LAYOUT, FLOW_VALUE_LAYOUT, FLOW_VALUE_V1_SIZE, STEER_FLOWS, STEER_MAPS } from './steer-map-codec.js';

/*
 * The upgrades of steering's maps from older layouts (bpf/steer_maps.h's version notes): each
 * copies what a pinned map of the older layout holds into the new one before the new program
 * runs, so established flows keep their backend through an agent upgrade.
 */

/**
 * Widens pure value bytes of layout-1 flows (backend_id, service_id) into layout 2's, flags 0:
 * the program then makes sure of each flow's reverse-NAT entry once, on its next packet.
 */
export function widenFlowValuesV1(values: Buffer, count: number): Buffer {
  const out = Buffer.alloc(count * FLOW_VALUE_LAYOUT.size);
  for (let i = 0; i < count; i++) values.copy(out, i * FLOW_VALUE_LAYOUT.size, i * FLOW_VALUE_V1_SIZE, (i + 1) * FLOW_VALUE_V1_SIZE);
  return out;
}

async function copyFlowsV1(ctx: UpgradeContext): Promise<void> {
  const name = STEER_MAPS.flows.name;
  const from = mapAccess(ctx.exec, ctx.from[name], { name, type: 'lru_hash', keySize: FLOW_KEY_LAYOUT.size, valueSize: FLOW_VALUE_V1_SIZE, maxEntries: STEER_FLOWS });
  const to = mapAccess(ctx.exec, ctx.to, { name, type: 'lru_hash', keySize: FLOW_KEY_LAYOUT.size, valueSize: FLOW_VALUE_LAYOUT.size, maxEntries: STEER_FLOWS });
  const old = await from.dump();
  if (old.count > 0) await to.update(old.keys, widenFlowValuesV1(old.values, old.count));
  ctx.log.info({ from: ctx.from[name], flows: old.count }, 'flows of steer_flows layout 1 copied into layout 2');
}

/** steer_flows 1 -> 2: godwit_flow_value gained flags. */
export const FLOWS_UPGRADE_V1: MapUpgrade = { fromVersion: 1, reads: [STEER_MAPS.flows.name], copy: copyFlowsV1 };

/** Every steering map spec with its upgrades, as the lifecycle loads them. */
export function steerMapSpecs(): MapSpec[] {
  return (Object.values(STEER_MAPS) as MapSpec[]).map((m) => (m.name === STEER_MAPS.flows.name ? { ...m, upgrades: [FLOWS_UPGRADE_V1] } : m));
}
