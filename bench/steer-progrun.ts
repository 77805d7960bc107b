/**
 * The steering program's own per-packet cost, from BPF_PROG_TEST_RUN (for `npm run bench --
 * steer-dataplane`, which calls steerProgRun() and prints its rows beside the real-traffic ones).
 *
 * Method. bpf/steer.c is loaded and pinned (not attached) with a table of TCP and UDP services
 * whose backends DNAT to the VIP's own address and port, and the flow table is pre-filled with
 * 100,000 flows. The kernel does not restore the packet between the runs of one
 * BPF_PROG_TEST_RUN, so a backend at the VIP's own endpoint makes every run do the full work
 * (lookups, counters, reverse NAT, checksum arithmetic and stores) and leave the packet as the
 * next run needs it. Rows:
 *  - hit, `repeat` runs of one packet whose flow is in the table; the kernel's mean per run.
 *  - miss, `repeat` runs: the packet's flow names a backend whose record (patched in the bench's
 *    own maps, never by the agent) belongs to another service, so every run finds its flow stale
 *    and does what a new flow costs: the Maglev choice, a flow and a reverse-NAT entry written
 *    (each write takes a fresh element from the LRU's free list), counters.
 *  - miss, one BPF_PROG_TEST_RUN per packet (`repeat` 1) of `misses` distinct new flows: real
 *    inserts that grow the table, but each run starts with caches cooled by the system call
 *    around it (an empty program measured the same way: `emptyProgramNs`), so this row is an
 *    upper bound.
 * `emptyProgramNs` is bpf/xdp_pass.c under the same method: the floor of each measurement.
 * The driver, the skb and the stack are not in it: pair it with the real-traffic benchmark.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { batchShape } from '../agent/linux/bpf/map-spec.js';
import { mapPinnedArray, NativeMap, progTestRun, progTestRunEach } from '../agent/linux/bpf/native-map.js';
import { STEER_XDP_PROG } from '../agent/linux/steer-object.js';
import { BACKEND_LAYOUT, META, STEER_MAPS, STEER_MAX_ID } from '../agent/linux/steer-map-codec.js';
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
  /** Runs per BPF_PROG_TEST_RUN call: `repeat` (warm), or 1 per packet (cold). */
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
/** The services whose one flow is stale on every run (the forced-miss rows). */
const STALE_PORT = { tcp: 81, udp: 54 } as const;

/** An Ethernet + IPv4 + TCP/UDP frame (checksums need not be right: the program never checks them). */
function frame(proto: 'tcp' | 'udp', client: number, sport: number, dport: number = PORT[proto]): Buffer {
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
  b.writeUInt16BE(dport, 36);
  if (proto === 'tcp') b[46] = 5 << 4;
  else b.writeUInt16BE(8 + payload, 38);
  return b;
}

/** steer_flows entries for `n` clients 10.(i/65536).x.y:40000 -> the service, alternating backends. */
async function prefillFlows(pin: string, n: number): Promise<void> {
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
  await new NativeMap(pin, batchShape(m)).update(keys, values);
}

export async function steerProgRun(opts: ProgRunOptions = {}): Promise<ProgRunRow[]> {
  const repeat = opts.repeat ?? 1_000_000;
  const misses = opts.misses ?? 20_000;
  const prefill = opts.prefill ?? 100_000;
  const pinRoot = `/sys/fs/bpf/godwit-progrun-${randomBytes(3).toString('hex')}`;
  const objectPath = `${REPO}build/bpf/steer.o`;
  const steering = new EbpfSteering({ exec: execCommand, iface: 'lo', pinDir: `${pinRoot}/steer`, objectPath, hostAddress: HOST, attach: false });
  const pins = steering.programs.folder;
  const passPin = `${pinRoot}/xdp_pass`;
  // Backends at the VIP's own endpoint: the DNAT rewrites the same bytes (see the method above).
  const self = (id: number, port: number) => ({ id, address: VIP, port, weight: 1, host: 'bench', hostAddress: HOST, draining: false });
  const table: SteeringTable = {
    generation: 1,
    services: [
      { id: 1, proto: 'tcp', vip: VIP, vipPort: PORT.tcp, backends: [self(1, PORT.tcp), self(2, PORT.tcp)] },
      { id: 2, proto: 'udp', vip: VIP, vipPort: PORT.udp, backends: [self(3, PORT.udp), self(4, PORT.udp)] },
      { id: 3, proto: 'tcp', vip: VIP, vipPort: STALE_PORT.tcp, backends: [self(5, STALE_PORT.tcp)] },
      { id: 4, proto: 'udp', vip: VIP, vipPort: STALE_PORT.udp, backends: [self(6, STALE_PORT.udp)] },
    ],
  };
  const staleBackend = { tcp: 5, udp: 6 } as const;
  try {
    await execCommand(`${REPO}scripts/build-bpf.sh`, [], { timeoutMs: 60_000 });
    await execCommand('mkdir', ['-p', pinRoot]);
    await steering.install();
    await steering.apply(table);
    await execCommand('bpftool', ['prog', 'load', `${REPO}build/bpf/xdp_pass.o`, passPin, 'type', 'xdp']);
    await prefillFlows(pins.mapPin(STEER_MAPS.flows.name), prefill);
    // Backends 5 and 6 said to belong to service 9999 in the active slot: their flows are stale.
    const meta = Buffer.from(mapPinnedArray(pins.mapPin(STEER_MAPS.meta.name), { name: 'steer_meta', valueSize: STEER_MAPS.meta.valueSize, maxEntries: 1 }).memory);
    const backends = Buffer.from(mapPinnedArray(pins.mapPin(STEER_MAPS.backends.name), { name: 'steer_backends', valueSize: BACKEND_LAYOUT.size, maxEntries: STEER_MAPS.backends.maxEntries }).memory);
    const active = meta.readUInt32LE(META.active);
    for (const id of Object.values(staleBackend)) backends.writeUInt32LE(9999, (active * STEER_MAX_ID + id) * BACKEND_LAYOUT.size + 12);
    const prog = steering.programs.progPin(STEER_XDP_PROG);
    const rows: ProgRunRow[] = [];
    let staleFlows = 0;
    let client = 0xc6130000; // 198.19.0.0/16: miss-path clients, never in the prefilled range
    for (const proto of ['tcp', 'udp'] as const) {
      const hit = frame(proto, 0x0b000001, 50000);
      progTestRun(prog, hit); // the flow's first packet: it is in the table from now on
      const steer = progTestRun(prog, hit, repeat);
      const empty = progTestRun(passPin, hit, repeat);
      rows.push({ mode: 'prog-test-run', path: 'hit', proto, nsPerPacket: steer.durationNs, repeat, packets: 1, emptyProgramNs: empty.durationNs, prefilledFlows: prefill });

      const stale = frame(proto, 0x0b000002, 50001, STALE_PORT[proto]);
      const forced = progTestRun(prog, stale, repeat);
      staleFlows += repeat;
      rows.push({ mode: 'prog-test-run', path: 'miss', proto, nsPerPacket: forced.durationNs, repeat, packets: 1, emptyProgramNs: empty.durationNs, prefilledFlows: prefill });

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
    const flowsOf = (ids: number[]) => ids.reduce((n, id) => n + (c.services.get(id)?.flows ?? 0n), 0n);
    // Every miss run must have chosen a backend, or the miss rows measured something else.
    if (flowsOf([1, 2]) !== BigInt(2 * misses + 2)) throw new Error(`expected ${2 * misses + 2} new flows on the miss path, the program recorded ${flowsOf([1, 2])}`);
    if (flowsOf([3, 4]) !== BigInt(staleFlows)) throw new Error(`expected ${staleFlows} forced misses, the program recorded ${flowsOf([3, 4])}`);
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
    process.stdout.write('path  proto  ns/packet  empty-program ns  method\n');
    for (const r of rows)
      process.stdout.write(
        `${r.path.padEnd(5)} ${r.proto.padEnd(6)} ${String(r.nsPerPacket).padStart(9)}  ${String(r.emptyProgramNs).padStart(16)}  ${r.repeat === 1 ? `one run each, ${r.packets} new flows` : `${r.repeat} runs of one packet`}\n`,
      );
  }
  return 0;
}
