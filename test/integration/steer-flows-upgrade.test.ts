import { describe, it, expect, afterAll } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { execCommand } from '../../lib/exec.js';
import type { MapSpec } from '../../agent/linux/bpf/map-spec.js';
import { NativeMap } from '../../agent/linux/bpf/native-map.js';
import { loadObject } from '../../agent/linux/bpf/object-loader.js';
import { ensureBpffs, pinFolder } from '../../agent/linux/bpf/pin-folder.js';
import { LayoutRecord } from '../../agent/linux/bpf/layout-record.js';
import { FLOW_KEY_LAYOUT, FLOW_VALUE_LAYOUT, FLOW_VALUE_V1_SIZE, STEER_MAPS } from '../../agent/linux/steer-map-codec.js';
import { EbpfSteering } from '../../agent/linux/steering-ebpf.js';
import { buildTestBpf } from '../support/test-bpf.js';

/*
 * steer_flows layout 1 -> 2 (godwit_flow_value gained flags): a host's pinned flows of the older
 * layout are carried into the new map when the new steering program is installed, so an agent
 * upgrade keeps every established flow on its backend. The maps the older install did not have
 * (here all but steer_flows, among them steer_addrs and steer_fwd of issue 9) are created next
 * to the pinned ones.
 */
const REPO = fileURLToPath(new URL('../../', import.meta.url));
const log = pino({ enabled: false });
const pinDir = `/sys/fs/bpf/gwt-flowup-${randomBytes(3).toString('hex')}`;
let objDir = '';

afterAll(async () => {
  await execCommand('rm', ['-rf', pinDir]);
  if (objDir) await rm(objDir, { recursive: true, force: true });
});

describe('steer_flows upgrade from layout 1', () => {
  it('copies every flow of a layout-1 pin into layout 2, flags 0', async () => {
    objDir = await mkdtemp(`${tmpdir()}/gwt-flowup-`);
    await ensureBpffs(execCommand, log);
    const folder = pinFolder(pinDir);
    const v1Value = { name: 'godwit_flow_value', size: FLOW_VALUE_V1_SIZE, members: FLOW_VALUE_LAYOUT.members.slice(0, 2) };
    const v1: MapSpec = { ...STEER_MAPS.flows, valueSize: FLOW_VALUE_V1_SIZE, structs: [FLOW_KEY_LAYOUT, v1Value], version: 1 };
    const o1 = await buildTestBpf('steer_flows_v1', objDir);
    const old = await loadObject({ exec: execCommand, folder, log }, { name: 'steer', objectPath: o1, programs: ['gwt_flows_v1'], maps: [v1] });
    await old.commit();

    const n = 3;
    const keys = Buffer.alloc(n * FLOW_KEY_LAYOUT.size);
    const values = Buffer.alloc(n * FLOW_VALUE_V1_SIZE);
    for (let i = 0; i < n; i++) {
      keys.writeUInt32BE(0xc6120001 + i, i * 16);
      keys.writeUInt32BE(0xc6130063, i * 16 + 4);
      keys.writeUInt16BE(40000 + i, i * 16 + 8);
      keys.writeUInt16BE(80, i * 16 + 10);
      keys[i * 16 + 12] = 6;
      values.writeUInt32LE(10 + i, i * 8);
      values.writeUInt32LE(7, i * 8 + 4);
    }
    const pin = folder.mapPin(STEER_MAPS.flows.name);
    await new NativeMap(pin, { name: 'steer_flows', type: 'lru_hash', keySize: 16, valueSize: FLOW_VALUE_V1_SIZE, maxEntries: STEER_MAPS.flows.maxEntries }).update(keys, values);

    const steering = new EbpfSteering({ exec: execCommand, iface: 'lo', pinDir, objectPath: `${REPO}build/bpf/steer.o`, hostAddress: '198.18.250.1', attach: false, log });
    try {
      await steering.install();
      const layouts = await new LayoutRecord(execCommand, folder.layouts).read();
      expect(layouts.get(STEER_MAPS.flows.name)).toBe(2);
      for (const m of [STEER_MAPS.addrs, STEER_MAPS.fwd]) expect(layouts.get(m.name), m.name).toBe(1);
      // The new maps work: a table with addresses applies, the forwarding counters read zero.
      await steering.apply({ generation: 1, services: [], addresses: [{ address: '198.18.250.9', host: 'x', hostAddress: '198.18.250.2' }] });
      expect((await new NativeMap(folder.mapPin(STEER_MAPS.addrs.name), { name: 'steer_addrs', type: 'hash', keySize: 8, valueSize: 8, maxEntries: STEER_MAPS.addrs.maxEntries }).dump()).count).toBe(1);
      expect(await steering.forwarding()).toEqual({ forwarded: 0n, staleDropped: 0n });
      const now = await new NativeMap(pin, { name: 'steer_flows', type: 'lru_hash', keySize: 16, valueSize: FLOW_VALUE_LAYOUT.size, maxEntries: STEER_MAPS.flows.maxEntries }).dump();
      const rows = Array.from({ length: now.count }, (_, i) => ({
        sport: now.keys.readUInt16BE(i * 16 + 8),
        backend: now.values.readUInt32LE(i * 12),
        service: now.values.readUInt32LE(i * 12 + 4),
        flags: now.values.readUInt32LE(i * 12 + 8),
      })).sort((a, b) => a.sport - b.sport);
      expect(rows).toEqual([0, 1, 2].map((i) => ({ sport: 40000 + i, backend: 10 + i, service: 7, flags: 0 })));
      expect(await steering.liveFlows([10, 12])).toBe(2);
    } finally {
      await steering.uninstall();
    }
  });
});
