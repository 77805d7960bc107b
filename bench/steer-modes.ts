/**
 * The four ways the steer-dataplane benchmark gets a packet for VIP:port to a backend on the
 * steering host: godwit's XDP steering, iptables DNAT, nftables DNAT (both with conntrack), and
 * no rule at all (the generator sends to the backend's address). Each setup runs inside the
 * host's network namespace and returns where the generator must send and how to undo it.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { execCommand, type Executor } from '../lib/exec.js';
import { REPO_ROOT } from '../lib/rpc.js';
import { EbpfNetLock } from '../agent/linux/netlock-ebpf.js';
import { nsExecutor } from '../agent/linux/netns-exec.js';
import type { SteeringDataplane, SteeringTable } from '../agent/steering.js';
import { attachXdpPass, type LabHost } from '../lab/topology.js';
import type { SteerMode, SteerProto } from './steer-report.js';

export interface SteerTarget {
  address: string;
  port: number;
}

export interface ModeHandle {
  /** Where the generator sends: the VIP, or the backend itself for the baseline. */
  target: SteerTarget;
  teardown(): Promise<void>;
}

/** A mode that cannot run in this tree (its code has not landed yet), as opposed to one that failed. */
export class ModeUnavailableError extends Error {
  constructor(
    readonly mode: SteerMode,
    readonly reason: string,
  ) {
    super(`mode ${mode} is unavailable: ${reason}`);
    this.name = 'ModeUnavailableError';
  }
}

export interface ModeContext {
  host: LabHost;
  proto: SteerProto;
  vip: SteerTarget;
  backend: SteerTarget;
  /** A bpffs folder this measurement may use for pins (removed on teardown). */
  pinDir: string;
}

/**
 * iptables is the legacy x_tables back end on purpose: Debian's plain `iptables` is iptables-nft,
 * whose rules compile into the same nf_tables expressions the nftables mode loads, so it would
 * measure nftables twice.
 */
export const IPTABLES = 'iptables-legacy';

async function setupIptables(c: ModeContext): Promise<ModeHandle> {
  const exec = nsExecutor(c.host.netns, execCommand);
  // Legacy tables stay registered in the namespace once used (until it is deleted): the
  // benchmark gives every measurement a fresh lab, so no other mode ever runs behind them.
  await exec(IPTABLES, ['-w', '-t', 'nat', '-A', 'PREROUTING', '-d', c.vip.address, '-p', c.proto, '--dport', String(c.vip.port), '-j', 'DNAT', '--to-destination', `${c.backend.address}:${c.backend.port}`]);
  return {
    target: c.vip,
    teardown: async () => {
      await exec(IPTABLES, ['-w', '-t', 'nat', '-F', 'PREROUTING'], { allowFailure: true });
    },
  };
}

const NFT_TABLE = 'godwit_bench';

async function setupNftables(c: ModeContext): Promise<ModeHandle> {
  const exec = nsExecutor(c.host.netns, execCommand);
  const ruleset = [
    `table ip ${NFT_TABLE} {`,
    '  chain prerouting {',
    '    type nat hook prerouting priority dstnat; policy accept;',
    `    ip daddr ${c.vip.address} ${c.proto} dport ${c.vip.port} dnat to ${c.backend.address}:${c.backend.port}`,
    '  }',
    '}',
  ].join('\n');
  await exec('nft', ['-f', '-'], { input: ruleset + '\n' });
  return {
    target: c.vip,
    teardown: async () => {
      await exec('nft', ['delete', 'table', 'ip', NFT_TABLE], { allowFailure: true });
    },
  };
}

async function setupBaseline(c: ModeContext): Promise<ModeHandle> {
  return { target: c.backend, teardown: async () => undefined };
}

/** The baseline with a pass-through XDP program on the host's interface (see STEER_MODES). */
async function setupBaselineXdp(c: ModeContext): Promise<ModeHandle> {
  await attachXdpPass(c.host.netnsPath, c.host.iface);
  return {
    target: c.backend,
    teardown: async () => {
      await execCommand('ip', ['-n', c.host.netns, 'link', 'set', 'dev', c.host.iface, 'xdpdrv', 'off'], { allowFailure: true });
    },
  };
}

/** Where the steering driver lives once h2-steer's work is merged (agent/linux/steering-ebpf.ts). */
const STEERING_MODULE = '../agent/linux/steering-ebpf.js';

/** The part of agent/linux/steering-ebpf.ts this benchmark uses (its EbpfSteeringOptions). */
interface SteeringModule {
  EbpfSteering: new (opts: { exec: Executor; iface: string; pinDir: string; objectPath: string; hostAddress: string }) => SteeringDataplane;
}

const STEER_OBJECT = join(REPO_ROOT, 'build', 'bpf', 'steer.o');
const LOCK_OBJECT = join(REPO_ROOT, 'build', 'bpf', 'lock.o');

/**
 * godwit's steering on `host` as an agent runs it: the lock installed first (its chain slot after
 * steering's, empty: nothing migrates, but every packet passes through it, as on a real host),
 * then the steering data plane (slot 0) with one service VIP:port -> backend on this same host, as the agent would
 * program it from the controller's table. The only place the benchmark touches godwit's steering.
 */
export async function setupGodwit(host: LabHost, vip: SteerTarget & { proto: SteerProto }, backend: SteerTarget, pinDir: string): Promise<ModeHandle> {
  let mod: Partial<SteeringModule> | undefined;
  try {
    // A computed specifier: this file compiles whether or not the driver is in the tree yet.
    mod = (await import(STEERING_MODULE as string)) as Partial<SteeringModule>;
  } catch (err) {
    if ((err as { code?: string }).code !== 'ERR_MODULE_NOT_FOUND') throw err;
    mod = undefined;
  }
  if (!mod?.EbpfSteering) throw new ModeUnavailableError('godwit', 'agent/linux/steering-ebpf.ts (EbpfSteering) is not in this tree yet');
  const exec = nsExecutor(host.netns, execCommand);
  const lock = new EbpfNetLock({ exec, iface: host.iface, pinDir, objectPath: LOCK_OBJECT });
  const steering = new mod.EbpfSteering({ exec, iface: host.iface, pinDir, objectPath: STEER_OBJECT, hostAddress: host.address });
  const table: SteeringTable = {
    generation: 1,
    services: [
      {
        id: 1,
        proto: vip.proto,
        vip: vip.address,
        vipPort: vip.port,
        backends: [{ id: 1, address: backend.address, port: backend.port, weight: 1, host: host.name, hostAddress: host.address, draining: false }],
      },
    ],
  };
  const teardown = async () => {
    await steering.uninstall().catch(() => undefined);
    await lock.uninstall().catch(() => undefined);
    rmSync(pinDir, { recursive: true, force: true });
  };
  try {
    await lock.install();
    // Generic XDP would run the chain on an skb, after the allocation native XDP saves: not the
    // path this benchmark means to measure, so it fails instead of measuring it.
    if (lock.attachMode !== 'native') throw new Error(`godwit's XDP root attached as ${lock.attachMode ?? 'nothing'} on ${host.iface}, not native`);
    await steering.install();
    await steering.apply(table);
  } catch (err) {
    await teardown();
    throw err;
  }
  return { target: vip, teardown };
}

export async function setupMode(mode: SteerMode, c: ModeContext): Promise<ModeHandle> {
  switch (mode) {
    case 'godwit':
      return setupGodwit(c.host, { ...c.vip, proto: c.proto }, c.backend, c.pinDir);
    case 'iptables':
      return setupIptables(c);
    case 'nftables':
      return setupNftables(c);
    case 'baseline':
      return setupBaseline(c);
    case 'baseline-xdp':
      return setupBaselineXdp(c);
  }
}
