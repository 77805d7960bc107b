import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { execCommand } from '../../lib/exec.js';
import type { Endpoint } from '../../lib/endpoint.js';
import { LayoutRecord } from '../../agent/linux/bpf/layout-record.js';
import { MapLayoutError } from '../../agent/linux/bpf/map-layout.js';
import type { MapShape } from '../../agent/linux/bpf/map-access.js';
import type { MapSpec } from '../../agent/linux/bpf/map-spec.js';
import { exportEntries, importEntries, mapAccess } from '../../agent/linux/bpf/map-transfer.js';
import { NativeMap } from '../../agent/linux/bpf/native-map.js';
import { loadObject, removeObject, type ObjectSpec, type PinHost } from '../../agent/linux/bpf/object-loader.js';
import { pinFolder } from '../../agent/linux/bpf/pin-folder.js';
import { attachTcEgress, detachTcEgress, tcEgressProgId } from '../../agent/linux/bpf/tc-egress.js';
import { ChainSlot, rootObjectBeside, XdpChain, XdpSlotTakenError } from '../../agent/linux/bpf/xdp-chain.js';
import { encodeEndpointKeys, encodeLockValue } from '../../agent/linux/lock-map-codec.js';
import { ENDPOINT_MAP_SHAPE, lockPins } from '../../agent/linux/lock-maps.js';
import { EbpfNetLock } from '../../agent/linux/netlock-ebpf.js';
import { netnsPath } from '../../agent/linux/netns-exec.js';
import { LockNetns } from '../support/lock-netns.js';
import { buildTestBpf } from '../support/test-bpf.js';

/*
 * The BPF lifecycle (agent/linux/bpf/) on real kernels maps and a veth pair: the XDP chain with
 * the lock in its slot and a counting probe (test/support/bpf/chain_probe.c) in the slot after
 * it, a program name in one slot only (how a host pinned in an older order moves on), a TC
 * egress program, per-map layout versions with an upgrade, export and import of entries, and
 * the upgrade of a host whose lock an older version attached directly.
 */
const net = new LockNetns({ tag: 'ch', subnet: 246, buildNative: true });
const PROBE_PORT = 7100; // PROBE_PORT in chain_probe.c
const PROBE_SLOT = ChainSlot.lock + 1; // PROBE_SLOT in chain_probe.c
const log = pino({ enabled: false });
let objDir = '';
let probeObject = '';

/** Sends `count` UDP datagrams from one host to the other's address, from srcPort when given. */
const UDP_BURST = `
const s = require('node:dgram').createSocket('udp4');
const [host, port, count, src] = process.argv.slice(1);
s.bind(Number(src) || 0, () => {
  let left = Number(count);
  const next = () => (left-- > 0 ? s.send('x', Number(port), host, next) : s.close());
  next();
});
`;

async function udpBurst(from: 'a' | 'b', count: number, srcPort = 0): Promise<void> {
  const [src, dst] = from === 'a' ? [net.a, net.b] : [net.b, net.a];
  await execCommand('nsenter', [`--net=${netnsPath(src.netns)}`, process.execPath, '-e', UDP_BURST, dst.address, String(PROBE_PORT), String(count), String(srcPort)]);
  await sleep(100);
}

function hostOf(pinDir: string): PinHost {
  return { exec: net.a.exec, folder: pinFolder(pinDir), log };
}

/** The probe object: its counter map is its own, the chain map the root's. */
function probeSpec(objectPath: string): ObjectSpec {
  return {
    name: 'probe',
    objectPath,
    programs: ['gwt_probe_xdp', 'gwt_probe_tc'],
    maps: [{ name: 'gwt_probe_seen', type: 'array', keySize: 4, valueSize: 8, maxEntries: 2, structs: [], version: 1 }],
    sharedMaps: [{ name: 'godwit_xdp_chain', type: 'prog_array', keySize: 4, valueSize: 4, maxEntries: 8, structs: [], version: 1 }],
  };
}

async function probeCounts(pinDir: string): Promise<{ xdp: bigint; tc: bigint }> {
  const d = await new NativeMap(`${pinDir}/maps/gwt_probe_seen`, { name: 'gwt_probe_seen', type: 'array', keySize: 4, valueSize: 8, maxEntries: 2 }).dump();
  return { xdp: d.values.readBigUInt64LE(0), tc: d.values.readBigUInt64LE(8) };
}

async function attachedOn(iface: string): Promise<{ id: number; name: string } | undefined> {
  const [link] = JSON.parse((await net.a.exec('ip', ['-j', 'link', 'show', 'dev', iface])).stdout) as { xdp?: { prog?: { id: number; name: string } } }[];
  return link?.xdp?.prog;
}

beforeAll(async () => {
  await net.setUp();
  objDir = await mkdtemp(`${tmpdir()}/godwit-ch-`);
  probeObject = await buildTestBpf('chain_probe', objDir);
});

afterAll(async () => {
  await net.tearDown();
  if (objDir) await rm(objDir, { recursive: true, force: true });
});

describe('XdpChain: one root per interface, programs by slot', () => {
  const pinDir = () => net.lockOpts.pinDir;
  const chain = () => new XdpChain({ ...hostOf(pinDir()), iface: 'eth0', rootObjectPath: rootObjectBeside(net.lockOpts.objectPath) });
  const udpEp = (): Endpoint => ({ proto: 'udp', address: net.a.address, port: PROBE_PORT });

  it('attaches the root once, with the lock in its slot', async () => {
    const root = await attachedOn('eth0');
    expect(root?.name).toBe('godwit_xdp_root');
    const slots = await chain().slots();
    expect([...slots.keys()]).toEqual([ChainSlot.lock]);
    const lockProg = JSON.parse((await execCommand('bpftool', ['-j', 'prog', 'show', 'pinned', lockPins(pinDir()).prog])).stdout) as { id: number };
    expect(slots.get(ChainSlot.lock)).toBe(lockProg.id);
  });

  it('runs the slot after the lock: it sees what the lock passes, not what it drops', async () => {
    const staged = await loadObject(hostOf(pinDir()), probeSpec(probeObject));
    const c = chain();
    await c.setSlot(PROBE_SLOT, staged.stagedPin('gwt_probe_xdp'));
    await staged.commit();
    const root = await attachedOn('eth0');

    await udpBurst('b', 5);
    expect((await probeCounts(pinDir())).xdp).toBe(5n);

    await net.lock.lock([udpEp()], 1n, 30_000);
    await udpBurst('b', 3);
    expect((await probeCounts(pinDir())).xdp).toBe(5n); // dropped by the lock
    expect((await net.lock.list())[0].drops).toBe(3n);
    await net.lock.unlock([udpEp()], 1n);

    await udpBurst('b', 2);
    expect((await probeCounts(pinDir())).xdp).toBe(7n);
    expect(await attachedOn('eth0')).toEqual(root);
  });

  it('replaces a slot in place; the root stays attached and the lock keeps working', async () => {
    const root = await attachedOn('eth0');
    const before = (await chain().slots()).get(PROBE_SLOT);
    const staged = await loadObject(hostOf(pinDir()), probeSpec(probeObject));
    expect(staged.plan.reused).toContain('gwt_probe_seen'); // its counter survives the reload
    await chain().setSlot(PROBE_SLOT, staged.stagedPin('gwt_probe_xdp'));
    await staged.commit();
    const after = (await chain().slots()).get(PROBE_SLOT);
    expect(after).toBeDefined();
    expect(after).not.toBe(before);
    expect(await attachedOn('eth0')).toEqual(root);

    await udpBurst('b', 4);
    expect((await probeCounts(pinDir())).xdp).toBe(11n);
    await net.lock.lock([udpEp()], 2n, 30_000);
    await udpBurst('b', 2);
    expect((await probeCounts(pinDir())).xdp).toBe(11n);
    await net.lock.unlock([udpEp()], 2n);
  });

  it('keeps a program name in one slot: setting it elsewhere takes it out of its former slot', async () => {
    const c = chain();
    const probePin = `${pinDir()}/progs/gwt_probe_xdp`;
    const lockId = (await c.slots()).get(ChainSlot.lock);
    await c.setSlot(PROBE_SLOT + 1, probePin);
    expect([...(await c.slots()).keys()].sort()).toEqual([ChainSlot.lock, PROBE_SLOT + 1]);
    await c.setSlot(PROBE_SLOT, probePin);
    const slots = await c.slots();
    expect([...slots.keys()].sort()).toEqual([ChainSlot.lock, PROBE_SLOT]);
    expect(slots.get(ChainSlot.lock)).toBe(lockId); // another program's slot is left alone
    await udpBurst('b', 2);
    expect((await probeCounts(pinDir())).xdp).toBe(13n); // counted once each
  });

  it('moves a lock pinned in another slot (the older chain order) into its own on install, locks kept', async () => {
    // The older order ran the lock in slot 0, where steering runs now: put it back there alone.
    const c = chain();
    const exec = net.a.exec;
    const lockPin = lockPins(pinDir()).prog;
    const oldSlot = ChainSlot.steer;
    await exec('bpftool', ['map', 'update', 'pinned', c.chainPin, 'key', String(oldSlot), '0', '0', '0', 'value', 'pinned', lockPin]);
    await exec('bpftool', ['map', 'delete', 'pinned', c.chainPin, 'key', String(ChainSlot.lock), '0', '0', '0']);
    expect([...(await c.slots()).keys()].sort()).toEqual([oldSlot, PROBE_SLOT]);
    await net.lock.lock([udpEp()], 3n, 30_000);

    await new EbpfNetLock(net.lockOpts).install(); // what an upgraded agent does
    expect([...(await c.slots()).keys()].sort()).toEqual([ChainSlot.lock, PROBE_SLOT]);
    const before = (await probeCounts(pinDir())).xdp;
    await udpBurst('b', 2);
    expect((await probeCounts(pinDir())).xdp).toBe(before); // still locked: dropped by the lock in its new slot
    await net.lock.unlock([udpEp()], 3n);
    await udpBurst('b', 2);
    expect((await probeCounts(pinDir())).xdp).toBe(before + 2n);
  });

  it('attaches a TC egress program from the same object, and detaches it', async () => {
    const exec = net.a.exec;
    const filter = { iface: 'eth0', pref: 7 };
    const progPin = `${pinDir()}/progs/gwt_probe_tc`;
    await attachTcEgress(exec, filter, progPin);
    await attachTcEgress(exec, filter, progPin); // replaces itself
    const id = (JSON.parse((await execCommand('bpftool', ['-j', 'prog', 'show', 'pinned', progPin])).stdout) as { id: number }).id;
    expect(await tcEgressProgId(exec, filter)).toBe(id);
    const before = (await probeCounts(pinDir())).tc;
    await udpBurst('a', 3, PROBE_PORT);
    expect((await probeCounts(pinDir())).tc).toBe(before + 3n);
    await detachTcEgress(exec, filter);
    expect(await tcEgressProgId(exec, filter)).toBeUndefined();
  });

  it('keeps the root while another slot remains, detaches it with the last', async () => {
    const c = chain();
    await c.clearSlot(PROBE_SLOT);
    await removeObject(hostOf(pinDir()), probeSpec(probeObject));
    expect([...(await c.slots()).keys()]).toEqual([ChainSlot.lock]);
    expect((await attachedOn('eth0'))?.name).toBe('godwit_xdp_root');
  });

  it('refuses an interface that runs a foreign XDP program', async () => {
    const exec = net.a.exec;
    await exec('ip', ['link', 'add', 'gwtfx0', 'type', 'veth', 'peer', 'name', 'gwtfx1']); // goes with the namespace
    await exec('ip', ['link', 'set', 'dev', 'gwtfx0', 'up']);
    const foreign = `${net.pinRoot}/foreign`;
    await execCommand('bpftool', ['prog', 'loadall', probeObject, foreign]);
    await exec('ip', ['link', 'set', 'dev', 'gwtfx0', 'xdpdrv', 'pinned', `${foreign}/gwt_probe_xdp`]);
    const other = new XdpChain({ ...hostOf(`${net.pinRoot}/fx`), iface: 'gwtfx0', rootObjectPath: rootObjectBeside(net.lockOpts.objectPath) });
    await expect(other.prepare()).rejects.toBeInstanceOf(XdpSlotTakenError);
    expect((await attachedOn('gwtfx0'))?.name).toBe('gwt_probe_xdp');
    await exec('ip', ['link', 'del', 'gwtfx0']);
    await execCommand('rm', ['-rf', foreign, `${net.pinRoot}/fx`]);
  });
});

describe('upgrade from a host whose lock is attached directly (before the chain)', () => {
  it('swaps in the root and keeps held locks held throughout', async () => {
    await net.lock.uninstall();
    const { pinDir, objectPath } = net.lockOpts;
    const pins = lockPins(pinDir);
    const exec = net.a.exec;
    // The older install: godwit_lock pinned at DIR/prog with its maps, attached to eth0 itself.
    // (This lock.o with an empty chain passes what the older one passed; its chain map stays unpinned, as the older one had none.)
    await execCommand('mkdir', ['-p', pins.mapsDir]);
    await execCommand('bpftool', ['prog', 'load', objectPath, pins.formerProg, 'type', 'xdp', 'pinmaps', pins.mapsDir]);
    await execCommand('rm', ['-f', `${pins.mapsDir}/godwit_xdp_chain`]);
    await exec('ip', ['link', 'set', 'dev', 'eth0', 'xdpdrv', 'pinned', pins.formerProg]);
    expect((await attachedOn('eth0'))?.name).toBe('godwit_lock');
    const ep: Endpoint = { proto: 'udp', address: net.a.address, port: PROBE_PORT };
    const far = process.hrtime.bigint() + 30_000_000_000n;
    await new NativeMap(pins.lockMap, ENDPOINT_MAP_SHAPE).update(encodeEndpointKeys([ep]), encodeLockValue({ version: 9n, deadlineNs: far, drops: 0n, lastDropNs: 0n }));
    await udpBurst('b', 2);

    const upgraded = new EbpfNetLock(net.lockOpts);
    await upgraded.install();
    expect((await attachedOn('eth0'))?.name).toBe('godwit_xdp_root');
    expect((await execCommand('test', ['-e', pins.formerProg], { allowFailure: true })).exitCode).not.toBe(0);
    await udpBurst('b', 3);
    const [entry] = await upgraded.list();
    expect(entry).toMatchObject({ endpoint: ep, version: 9n, drops: 5n }); // 2 before the swap, 3 after: the map was kept
    await upgraded.unlock([ep], 9n);
    await upgraded.uninstall();
    expect(await attachedOn('eth0')).toBeUndefined();
    expect((await execCommand('test', ['-e', pinDir], { allowFailure: true })).exitCode).not.toBe(0);
  });
});

describe('map layouts: a version per map, an upgrade that copies state, export and import', () => {
  const V1_SHAPE: MapShape = { name: 'gwt_layout_counts', keySize: 4, valueSize: 4, maxEntries: 64 };
  const V2_SHAPE: MapShape = { name: 'gwt_layout_counts', keySize: 4, valueSize: 16, maxEntries: 64 };
  const v1Map: MapSpec = { ...V1_SHAPE, type: 'hash', structs: [], version: 1 };
  /** Version 2 widens each count into { count, since_ns }, since_ns left 0 by the upgrade. */
  const v2Map: MapSpec = {
    ...V2_SHAPE,
    type: 'hash',
    structs: [{ name: 'gwt_count_v2', size: 16, members: [{ name: 'count', offset: 0, size: 8 }, { name: 'since_ns', offset: 8, size: 8 }] }],
    version: 2,
    upgrades: [
      {
        fromVersion: 1,
        reads: ['gwt_layout_counts'],
        async copy({ exec, from, to }) {
          const old = await exportEntries(mapAccess(exec, from.gwt_layout_counts, V1_SHAPE), V1_SHAPE);
          const values = Buffer.alloc(old.count * 16);
          for (let i = 0; i < old.count; i++) values.writeBigUInt64LE(BigInt(old.values.readUInt32LE(i * 4)), i * 16);
          await importEntries(mapAccess(exec, to, V2_SHAPE), V2_SHAPE, { ...old, values, valueSize: 16 });
        },
      },
    ],
  };
  const dir = () => `${net.pinRoot}/layouts`;
  const spec = (objectPath: string, map: MapSpec): ObjectSpec => ({ name: 'layout', objectPath, programs: ['gwt_layout_prog'], maps: [map] });
  const keysOf = (...ks: number[]) => Buffer.from(new Uint32Array(ks).buffer);

  afterAll(() => execCommand('rm', ['-rf', dir()]));

  it('records each map\'s version, and upgrades a map of an older layout with its entries', async () => {
    const host = { exec: execCommand, folder: pinFolder(dir()), log };
    const [o1, o2] = [await buildTestBpf('layout_v1', objDir), await buildTestBpf('layout_v2', objDir)];
    const first = await loadObject(host, spec(o1, v1Map));
    await first.commit();
    expect(first.plan).toEqual({ reused: [], created: ['gwt_layout_counts'], upgraded: [] });
    expect(await new LayoutRecord(execCommand, host.folder.layouts).read()).toEqual(new Map([['gwt_layout_counts', 1]]));
    const pin = host.folder.mapPin('gwt_layout_counts');
    await new NativeMap(pin, V1_SHAPE).update(keysOf(1, 2, 3), keysOf(10, 20, 30));

    // The same version again reuses the map; version 2 without an upgrade would be refused.
    const again = await loadObject(host, spec(o1, v1Map));
    expect(again.plan.reused).toEqual(['gwt_layout_counts']);
    await again.commit();
    await expect(loadObject(host, spec(o2, { ...v2Map, upgrades: [] }))).rejects.toBeInstanceOf(MapLayoutError);
    expect((await new NativeMap(pin, V1_SHAPE).dump()).count).toBe(3); // set back where it was

    const up = await loadObject(host, spec(o2, v2Map));
    expect(up.plan.upgraded).toEqual([{ map: 'gwt_layout_counts', fromVersion: 1 }]);
    await up.commit();
    expect(await new LayoutRecord(execCommand, host.folder.layouts).read()).toEqual(new Map([['gwt_layout_counts', 2]]));
    const now = await new NativeMap(pin, V2_SHAPE).dump();
    const counts = new Map(Array.from({ length: now.count }, (_, i) => [now.keys.readUInt32LE(i * 4), now.values.readBigUInt64LE(i * 16)]));
    expect(counts).toEqual(new Map([[1, 10n], [2, 20n], [3, 30n]]));
    expect((await execCommand('test', ['-e', `${dir()}/old_gwt_layout_counts`], { allowFailure: true })).exitCode).not.toBe(0);

    // An agent that knows only version 1 refuses the newer map rather than misread it.
    await expect(loadObject(host, spec(o1, v1Map))).rejects.toBeInstanceOf(MapLayoutError);
  });

  it('exports the entries a predicate selects and imports them into another map', async () => {
    const pin = pinFolder(dir()).mapPin('gwt_layout_counts');
    const source = mapAccess(execCommand, pin, V2_SHAPE);
    const odd = await exportEntries(source, V2_SHAPE, (e) => e.keys.readUInt32LE(e.keyOffset) % 2 === 1);
    expect(odd.count).toBe(2);
    const other = `${dir()}/other`;
    await execCommand('bpftool', ['map', 'create', other, 'type', 'hash', 'key', '4', 'value', '16', 'entries', '64', 'name', 'gwt_other']);
    for (const method of ['native', 'bpftool'] as const) {
      const target = mapAccess(execCommand, other, V2_SHAPE, method);
      expect(await importEntries(target, V2_SHAPE, odd)).toBe(2);
      const back = await exportEntries(target, V2_SHAPE);
      const rows = Array.from({ length: back.count }, (_, i) => [back.keys.readUInt32LE(i * 4), back.values.readBigUInt64LE(i * 16)]);
      expect(rows.sort()).toEqual([[1, 10n], [3, 30n]]);
    }
    await expect(importEntries(mapAccess(execCommand, other, V1_SHAPE), V1_SHAPE, odd)).rejects.toThrow(/do not fit/);
  });
});
