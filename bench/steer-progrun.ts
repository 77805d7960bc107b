/**
 * The steering program's own per-packet cost, from BPF_PROG_TEST_RUN (for `npm run bench --
 * steer-dataplane`, which calls steerProgRun() and prints its rows beside the real-traffic ones).
 *
 * Method. bpf/steer.c is loaded and pinned (not attached) with a table of one TCP and one UDP
 * service, two backends each, and the flow table is pre-filled with 100,000 flows. Then:
 *  - hit path: one packet of a flow already in the table, run `repeat` times in one
 *    BPF_PROG_TEST_RUN; the kernel reports the mean time per run. The kernel does not restore
 *    the packet between runs, so the backends here DNAT to the VIP's own address and port: every
 *    run does the full work (VIP lookup, flow lookup, backend, counters, reverse-NAT check,
 *    checksum arithmetic and stores) and leaves the packet as the next run needs it.
 *  - miss path: `misses` packets of distinct new flows, one BPF_PROG_TEST_RUN each (a repeated
 *    packet would hit from its second run on), so each run does the Maglev choice and inserts a
 *    flow and a reverse-NAT entry; the mean of the kernel's per-run times. With one run per call
 *    the kernel's timing (two clock reads, bottom halves off and on) weighs more, so both paths
 *    also report `emptyProgramNs`: bpf/xdp_pass.c measured the same way, the floor of the method.
 * It leaves out the driver, the skb and the stack: pair it with the real-traffic benchmark.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { progTestRun, progTestRunEach, updatePinnedMap } from '../agent/linux/bpf-map-native.js';
import { DirectSteerAttach, STEER_XDP_PROG } from '../agent/linux/steer-attach.js';
import { BPF_MAP_TYPE, STEER_MAPS } from '../agent/linux/steer-map-codec.js';
import { EbpfSteering } from '../agent/linux/steering-ebpf.js';
import type { SteeringTable } from '../agent/steering.js';
import { execCommand } from '../lib/exec.js';
import { REPO_ROOT } from '../lib/rpc.js';

const REPO = join(REPO_ROOT, '/');

export interface ProgRunRow {
  mode: 'prog-test-run';
  path: 'hit' | 'miss';
  proto: 'tcp' | 'udp';
  /** Mean kernel-measured time per run of the steering program. */
  nsPerPacket: number;
  /** Runs per BPF_PROG_TEST_RUN call. */
  repeat: number;
  /** Packets measured (hit: the one packet, `repeat` times; miss: one run each). */
  packets: number;
  /** bpf/xdp_pass.c under the same method: what the measurement costs with no work at all. */
  emptyProgramNs: number;
  /** Flows in the table before the measurement. */
  prefilledFlows: number;
}

export interface ProgRunOptions {
  /** Runs of the hit packet (default 1,000,000). */
  repeat?: number;
  /** New flows measured on the miss path (default 20,000). */
  misses?: number;
  /** Flows put in the table first (default 100,000). */
  prefill?: number;
}

const HOST = '198.18.0.1';
const VIP = '198.18.200.1';
const PORT = { tcp: 80, udp: 53 } as const;

/** An Ethernet + IPv4 + TCP/UDP frame (checksums need not be right: the program never checks them). */
function frame(proto: 'tcp' | 'udp', client: number, sport: number): Buffer {
  const l4 = proto === 'tcp' ? 20 : 8;
  const payload = 64;
  const b = Buffer.alloc(14 + 20 + l4 + payload);
  b.writeUInt16BE(0x0800, 12);
  b[14] = 0x45;
  b.writeUInt16BE(20 + l4 + payload, 16);
  b[22] = 64;
  b[23] = proto === 'tcp' ? 6 : 17;
  b.writeUInt32BE(client, 26);
  Buffer.from(VIP.split('.').map(Number)).copy(b, 30);
  b.writeUInt16BE(sport, 34);
  b.writeUInt16BE(PORT[proto], 36);
  if (proto === 'tcp') b[46] = 5 << 4;
  else b.writeUInt16BE(8 + payload, 38);
  return b;
}

/** steer_flows entries for `n` clients 10.(i/65536).x.y:40000 -> the service, alternating backends. */
function prefillFlows(pin: string, n: number): void {
  const m = STEER_MAPS.flows;
  const keys = Buffer.alloc(n * m.keySize);
  const values = Buffer.alloc(n * m.valueSize);
  for (let i = 0; i < n; i++) {
    const k = i * m.keySize;
    keys.writeUInt32BE(0x0a000000 + i, k);
    Buffer.from(VIP.split('.').map(Number)).copy(keys, k + 4);
    keys.writeUInt16BE(40000, k + 8);
    keys.writeUInt16BE(PORT.tcp, k + 10);
    keys[k + 12] = 6;
    values.writeUInt32LE(1 + (i % 2), i * m.valueSize);
    values.writeUInt32LE(1, i * m.valueSize + 4);
  }
  updatePinnedMap(pin, { name: m.name, type: BPF_MAP_TYPE[m.type], keySize: m.keySize, valueSize: m.valueSize }, keys, values);
}

export async function steerProgRun(opts: ProgRunOptions = {}): Promise<ProgRunRow[]> {
  const repeat = opts.repeat ?? 1_000_000;
  const misses = opts.misses ?? 20_000;
  const prefill = opts.prefill ?? 100_000;
  const pinRoot = `/sys/fs/bpf/godwit-progrun-${randomBytes(3).toString('hex')}`;
  const objectPath = `${REPO}build/bpf/steer.o`;
  const loader = new DirectSteerAttach({ exec: execCommand, iface: 'lo', pinDir: `${pinRoot}/steer`, objectPath, attach: false });
  const steering = new EbpfSteering({ exec: execCommand, iface: 'lo', pinDir: `${pinRoot}/steer`, objectPath, hostAddress: HOST, loader });
  const passPin = `${pinRoot}/xdp_pass`;
  // Backends at the VIP's own endpoint: the DNAT rewrites the same bytes (see the method above).
  const self = (id: number, proto: 'tcp' | 'udp') => ({ id, address: VIP, port: PORT[proto], weight: 1, host: 'bench', hostAddress: HOST, draining: false });
  const table: SteeringTable = {
    generation: 1,
    services: [
      { id: 1, proto: 'tcp', vip: VIP, vipPort: PORT.tcp, backends: [self(1, 'tcp'), self(2, 'tcp')] },
      { id: 2, proto: 'udp', vip: VIP, vipPort: PORT.udp, backends: [self(3, 'udp'), self(4, 'udp')] },
    ],
  };
  try {
    await execCommand(`${REPO}scripts/build-bpf.sh`, [], { timeoutMs: 60_000 });
    await execCommand('mkdir', ['-p', pinRoot]);
    await steering.install();
    await steering.apply(table);
    await execCommand('bpftool', ['prog', 'load', `${REPO}build/bpf/xdp_pass.o`, passPin, 'type', 'xdp']);
    prefillFlows(loader.pins.map(STEER_MAPS.flows.name), prefill);
    const prog = `${loader.pins.progsDir}/${STEER_XDP_PROG}`;
    const rows: ProgRunRow[] = [];
    let client = 0xc6130000; // 198.19.0.0/16: miss-path clients, never in the prefilled range
    for (const proto of ['tcp', 'udp'] as const) {
      const hit = frame(proto, 0x0b000001, 50000);
      progTestRun(prog, hit); // the flow's first packet: it is in the table from now on
      const steer = progTestRun(prog, hit, repeat);
      const empty = progTestRun(passPin, hit, repeat);
      rows.push({ mode: 'prog-test-run', path: 'hit', proto, nsPerPacket: steer.durationNs, repeat, packets: 1, emptyProgramNs: empty.durationNs, prefilledFlows: prefill });

      const size = hit.length;
      const packets = Buffer.alloc(size * misses);
      for (let i = 0; i < misses; i++) frame(proto, client++, 1024 + (i % 60000)).copy(packets, i * size);
      const miss = progTestRunEach(prog, packets, size);
      const floor = progTestRunEach(passPin, packets, size);
      rows.push({
        mode: 'prog-test-run',
        path: 'miss',
        proto,
        nsPerPacket: Math.round(miss.durationNs / miss.runs),
        repeat: 1,
        packets: miss.runs,
        emptyProgramNs: Math.round(floor.durationNs / floor.runs),
        prefilledFlows: prefill,
      });
    }
    const c = await steering.counters();
    const newFlows = [...c.services.values()].reduce((n, s) => n + s.flows, 0n);
    // Every miss packet must have been a new flow, or the miss rows measured something else.
    if (newFlows !== BigInt(2 * misses + 2)) throw new Error(`expected ${2 * misses + 2} new flows on the miss path, the program recorded ${newFlows}`);
    return rows;
  } finally {
    await steering.uninstall().catch(() => undefined);
    await execCommand('rm', ['-rf', pinRoot]);
  }
}

/** `node dist/bench/steer-progrun.js [--json]`: the rows alone, for a quick look. */
export async function run(argv: string[]): Promise<number> {
  const rows = await steerProgRun();
  if (argv.includes('--json')) for (const r of rows) process.stdout.write(`${JSON.stringify(r)}\n`);
  else {
    process.stdout.write('path  proto  ns/packet  empty-program ns  runs\n');
    for (const r of rows) process.stdout.write(`${r.path.padEnd(5)} ${r.proto.padEnd(6)} ${String(r.nsPerPacket).padStart(9)}  ${String(r.emptyProgramNs).padStart(16)}  ${r.repeat === 1 ? r.packets : r.repeat}\n`);
  }
  return 0;
}
