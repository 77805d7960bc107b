/**
 * The fleet tests' lab: a lab, the fleet API on its controller, and registered workloads on one
 * host each with a bystander client checking every echoed byte; and its removal, which also keeps
 * the lab's logs where FLEET_KEEP_LOGS says (the lab's folder goes with it).
 */
import { cpSync } from 'node:fs';
import { FleetApi } from '../../controller/fleet-client.js';
import { startFleetWorkloads, stopFleetTraffic, type FleetWorkload, type FleetWorkloadOptions } from '../../lab/fleet-workloads.js';
import { labUp, type Lab, type LabOptions } from '../../lab/lab.js';

export interface FleetLab {
  lab: Lab;
  fleet: FleetApi;
  ws: FleetWorkload[];
}

/** Workloads on host a. On failure, removes what it made. */
export async function startFleetLab(labOpts: LabOptions, workloads: FleetWorkloadOptions): Promise<FleetLab> {
  const lab = await labUp(labOpts);
  const fleet = new FleetApi(lab.controllerAddress);
  try {
    return { lab, fleet, ws: await startFleetWorkloads(lab, fleet, 'a', workloads) };
  } catch (err) {
    await stopFleetLab({ lab, fleet, ws: [] });
    throw err;
  }
}

export async function stopFleetLab(f: FleetLab | undefined): Promise<void> {
  if (!f) return;
  await stopFleetTraffic(f.ws);
  f.fleet.close();
  if (process.env.FLEET_KEEP_LOGS) cpSync(`${f.lab.dir}/logs`, process.env.FLEET_KEEP_LOGS, { recursive: true });
  await f.lab.down();
}
