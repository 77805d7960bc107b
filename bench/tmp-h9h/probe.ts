import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { pino } from 'pino';
import { batchShape } from '../../agent/linux/bpf/map-spec.js';
import { NativeMap } from '../../agent/linux/bpf/native-map.js';
import { STEER_MAPS } from '../../agent/linux/steer-map-codec.js';
import { EbpfSteering } from '../../agent/linux/steering-ebpf.js';
import { execCommand } from '../../lib/exec.js';
import { REPO_ROOT } from '../../lib/rpc.js';
const pinDir = `/sys/fs/bpf/godwit-bench-probe-${randomBytes(3).toString('hex')}`;
const s = new EbpfSteering({ exec: execCommand, iface: 'lo', pinDir, objectPath: join(REPO_ROOT, 'build', 'bpf', 'steer.o'), hostAddress: '198.18.206.9', attach: false, log: pino({ enabled: false }) });
try {
  await s.install();
  for (const m of [STEER_MAPS.flows, STEER_MAPS.rnat, STEER_MAPS.backendStats]) {
    const nm = new NativeMap(join(pinDir, 'maps', m.name), batchShape(m));
    for (let r = 0; r < 4; r++) { const t = performance.now(); const d = await nm.dump(); console.log(m.name, d.count, (performance.now() - t).toFixed(2)); }
  }
} finally { await s.uninstall(); await execCommand('rm', ['-rf', pinDir]); }
