/**
 * `npm run bench -- lock-progrun`: the lock program's own per-packet cost, from
 * BPF_PROG_TEST_RUN, on the paths a packet can take through bpf/lock.c:
 *   miss          a packet no entry matches (every packet of a host while nothing migrates): the
 *                 connection-table probe, the endpoint lookup, and the address-wide lookup
 *   endpoint      a packet an exact endpoint entry stops (counted, copied into the held ring)
 *   address-wide  a packet to another port of a locked address, stopped by its address-wide entry
 * The endpoint map holds `--entries` endpoint entries of other addresses and, for each, its two
 * address-wide entries, as a host with that many workloads migrating at once would.
 *
 * Then the address-wide entries are unlocked (the gate godwit_lock_any falls to 0, as on a host
 * where no migration runs) and the miss path is measured again: `miss, gate closed`.
 *
 * `--baseline OBJ` measures another build of bpf/lock.c (e.g. one from before address-wide
 * entries), loaded with bpftool and its endpoint map filled alike, in alternating rounds so that
 * both see the same machine; the table shows the median of `--rounds` rounds of `--repeat` runs. The
 * stopping paths fill the held ring within the first rounds and then take its ring-full branch.
 * The driver, the skb and the stack are not in these numbers.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { ANY_PORT, type Endpoint } from '../lib/endpoint.js';
import { NativeMap, progTestRun } from '../agent/linux/bpf/native-map.js';
import { encodeEndpointKeys, encodeLockValue } from '../agent/linux/lock-map-codec.js';
import { ENDPOINT_MAP_SHAPE, lockPins } from '../agent/linux/lock-maps.js';
import { EbpfNetLock } from '../agent/linux/netlock-ebpf.js';
import { nsExecutor } from '../agent/linux/netns-exec.js';
import { execCommand } from '../lib/exec.js';
import { REPO_ROOT } from '../lib/rpc.js';

const REPO = join(REPO_ROOT, '/');
const LOCKED = '198.18.0.1';
const LOCKED_PORT = 7000;

export interface LockProgRunRow {
  object: string;
  path: 'miss' | 'endpoint' | 'address-wide' | 'miss, gate closed';
  /** Median over the rounds of the kernel's mean time per run. */
  nsPerPacket: number;
  repeat: number;
  rounds: number;
  endpointEntries: number;
}

/** Ethernet + IPv4 + UDP to `dst`:`dport` from 198.19.0.9:40000 (checksums unused by the program). */
function frame(dst: string, dport: number): Buffer {
  const b = Buffer.alloc(14 + 20 + 8 + 64);
  b.writeUInt16BE(0x0800, 12);
  b[14] = 0x45;
  b.writeUInt16BE(20 + 8 + 64, 16);
  b[22] = 64;
  b[23] = 17;
  b.writeUInt32BE(0xc6130009, 26);
  Buffer.from(dst.split('.').map(Number)).copy(b, 30);
  b.writeUInt16BE(40000, 34);
  b.writeUInt16BE(dport, 36);
  b.writeUInt16BE(8 + 64, 38);
  return b;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

export async function lockProgRun(opts: { baseline?: string; repeat?: number; rounds?: number; entries?: number } = {}): Promise<LockProgRunRow[]> {
  const repeat = opts.repeat ?? 1_000_000;
  const rounds = opts.rounds ?? 7;
  const entries = opts.entries ?? 1000;
  const tag = randomBytes(3).toString('hex');
  const namespaces: string[] = [];
  const pinRoot = `/sys/fs/bpf/godwit-lock-progrun-${tag}`;
  const objects: Record<string, string> = { 'this build': `${REPO}build/bpf/lock.o`, ...(opts.baseline ? { baseline: opts.baseline } : {}) };
  const locks: { name: string; lock?: EbpfNetLock; prog: string }[] = [];
  try {
    await execCommand(`${REPO}scripts/build-bpf.sh`, [], { timeoutMs: 60_000 });
    // Other workloads' endpoints, each with its address-wide entries: the map a busy host holds.
    const others: Endpoint[] = [];
    for (let i = 0; i < entries; i++) {
      const address = `198.18.${10 + Math.floor(i / 250)}.${1 + (i % 250)}`;
      others.push({ proto: 'udp', address, port: 9000 }, { proto: 'tcp', address, port: ANY_PORT }, { proto: 'udp', address, port: ANY_PORT });
    }
    const wide = [...others.filter((e) => e.port === ANY_PORT), { proto: 'udp' as const, address: LOCKED, port: ANY_PORT }];
    if (opts.baseline) {
      // The older object as it is, its endpoint map filled with the same entries.
      const dir = `${pinRoot}/baseline`;
      await execCommand('mkdir', ['-p', `${dir}/maps`]);
      await execCommand('bpftool', ['prog', 'load', opts.baseline, `${dir}/prog`, 'type', 'xdp', 'pinmaps', `${dir}/maps`]);
      const all = [...others, { proto: 'udp' as const, address: LOCKED, port: LOCKED_PORT }, { proto: 'udp' as const, address: LOCKED, port: ANY_PORT }];
      const value = encodeLockValue({ version: 1n, deadlineNs: process.hrtime.bigint() + 3_600_000_000_000n, drops: 0n, lastDropNs: 0n });
      await new NativeMap(`${dir}/maps/${ENDPOINT_MAP_SHAPE.name}`, ENDPOINT_MAP_SHAPE).update(encodeEndpointKeys(all), Buffer.concat(all.map(() => value)));
      locks.push({ name: 'baseline', prog: `${dir}/prog` });
    }
    for (const [name, objectPath] of Object.entries(objects).filter(([n]) => n !== 'baseline')) {
      // One lock per object, each in a namespace and on pins of its own; only the test runs use them.
      const netns = `godwit-lpr-${tag}-${locks.length}`;
      await execCommand('ip', ['netns', 'add', netns]);
      namespaces.push(netns);
      const exec = nsExecutor(netns, execCommand);
      await exec('ip', ['link', 'set', 'dev', 'lo', 'up']);
      const pinDir = `${pinRoot}/${locks.length}`;
      const lock = new EbpfNetLock({ exec, iface: 'lo', pinDir, objectPath, rootObjectPath: `${REPO}build/bpf/root.o`, mapMethod: 'native' });
      await lock.install();
      await lock.lock(others, 1n, 3_600_000);
      await lock.lock([{ proto: 'udp', address: LOCKED, port: LOCKED_PORT }], 1n, 3_600_000);
      await lock.lock([{ proto: 'udp', address: LOCKED, port: ANY_PORT }], 1n, 3_600_000);
      locks.push({ name, lock, prog: lockPins(pinDir).prog });
    }
    const paths = { miss: frame('198.18.0.2', LOCKED_PORT), endpoint: frame(LOCKED, LOCKED_PORT), 'address-wide': frame(LOCKED, 45000) } as const;
    const samples = new Map<string, number[]>();
    const measure = (path: string, pkt: Buffer, which: typeof locks) => {
      for (let r = 0; r < rounds; r++)
        for (const l of which) {
          const key = `${l.name}\0${path}`;
          samples.set(key, [...(samples.get(key) ?? []), progTestRun(l.prog, pkt, repeat).durationNs]);
        }
    };
    for (const [path, pkt] of Object.entries(paths)) measure(path, pkt, locks);
    const ours = locks.filter((l) => l.lock);
    for (const l of ours) await l.lock!.unlock(wide, 1n);
    // The baseline again beside it (it has no gate): the same minutes of the same machine.
    measure('miss, gate closed', paths.miss, locks);
    const rows: LockProgRunRow[] = [];
    for (const key of samples.keys()) {
      const [object, path] = key.split('\0') as [string, LockProgRunRow['path']];
      rows.push({ object, path, nsPerPacket: median(samples.get(key)!), repeat, rounds, endpointEntries: others.length + 2 });
    }
    return rows;
  } finally {
    for (const l of locks.reverse()) await l.lock?.uninstall().catch(() => undefined);
    for (const netns of namespaces) await execCommand('ip', ['netns', 'del', netns], { allowFailure: true });
    await execCommand('rm', ['-rf', pinRoot]);
  }
}

function option(argv: string[], name: string): string | undefined {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
}

export async function run(argv: string[]): Promise<number> {
  const num = (name: string) => (option(argv, name) === undefined ? undefined : Number(option(argv, name)));
  const rows = await lockProgRun({ baseline: option(argv, '--baseline'), repeat: num('--repeat'), rounds: num('--rounds'), entries: num('--entries') });
  if (argv.includes('--json')) for (const r of rows) process.stdout.write(`${JSON.stringify({ kind: 'lock-progrun', ...r })}\n`);
  else {
    process.stdout.write(`object       path               ns/packet   (median of ${rows[0].rounds} rounds of ${rows[0].repeat} runs; ${rows[0].endpointEntries} endpoint entries)\n`);
    for (const r of rows) process.stdout.write(`${r.object.padEnd(12)} ${r.path.padEnd(18)} ${String(r.nsPerPacket).padStart(9)}\n`);
  }
  return 0;
}
