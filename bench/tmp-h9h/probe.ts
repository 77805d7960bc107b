import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { batchShape } from '../../agent/linux/bpf/map-spec.js';
import { NativeMap } from '../../agent/linux/bpf/native-map.js';
import { selectEntries } from '../../agent/linux/bpf/map-transfer.js';
import { STEER_MAPS } from '../../agent/linux/steer-map-codec.js';
import { EbpfSteering } from '../../agent/linux/steering-ebpf.js';
import { writeSteeringFile, readSteeringFile, encodeHandoffParts } from '../../agent/handoff-file.js';
import { execCommand } from '../../lib/exec.js';
import { REPO_ROOT } from '../../lib/rpc.js';
const mk = (t: string) => `/sys/fs/bpf/godwit-bench-probe-${t}-${randomBytes(3).toString('hex')}`;
const dirs = [mk('a'), mk('b')];
const [a, b] = dirs.map((pinDir, i) => new EbpfSteering({ exec: execCommand, iface: 'lo', pinDir, objectPath: join(REPO_ROOT, 'build', 'bpf', 'steer.o'), hostAddress: `198.18.206.${i + 9}`, attach: false, log: pino({ enabled: false }) }));
const img = mkdtempSync(process.argv[2] ?? '/tmp/h9h/img-');
try {
  await a.install(); await b.install();
  const N = 100000;
  const keys = Buffer.alloc(N * 16), values = Buffer.alloc(N * 12);
  for (let i = 0; i < N; i++) { keys.writeUInt32BE(0x0a000000 + i, i * 16); keys[i * 16 + 12] = 6; values.writeUInt32LE(7, i * 12); }
  const flows = new NativeMap(join(dirs[0], 'maps', 'steer_flows'), batchShape(STEER_MAPS.flows));
  const flowsB = new NativeMap(join(dirs[1], 'maps', 'steer_flows'), batchShape(STEER_MAPS.flows));
  await flows.update(keys, values);
  for (let r = 0; r < 5; r++) {
    const t0 = performance.now();
    const d = await flows.dump();
    const t1 = performance.now();
    const sel = selectEntries({ ...d, keySize: 16, valueSize: 12 }, (e) => e.values.readUInt32LE(e.valueOffset) === 7, true);
    const t2 = performance.now();
    const h = await a.exportWorkload({ addresses: ['198.18.1.1'], backendIds: [7] });
    const t3 = performance.now();
    const parts = encodeHandoffParts(h);
    const t4 = performance.now();
    await writeSteeringFile(img, h);
    const t5 = performance.now();
    const back = await readSteeringFile(img);
    const t6 = performance.now();
    await flowsB.update(back!.flows.keys, back!.flows.values);
    const t7 = performance.now();
    await b.importWorkload(back!);
    const t8 = performance.now();
    console.log(`dump ${(t1-t0).toFixed(1)} select ${(t2-t1).toFixed(1)} exportWorkload ${(t3-t2).toFixed(1)} encode ${(t4-t3).toFixed(1)} write ${(t5-t4).toFixed(1)} read ${(t6-t5).toFixed(1)} rawUpdate(existing) ${(t7-t6).toFixed(1)} importWorkload ${(t8-t7).toFixed(1)} n=${sel.count} ${parts.length}`);
  }
} finally { await a.uninstall(); await b.uninstall(); for (const d of dirs) await execCommand('rm', ['-rf', d]); }
