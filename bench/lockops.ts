/**
 * `npm run bench -- lockops`: how long locking and unlocking N connections (exact 4-tuples)
 * takes, per method:
 *
 *   ebpf              godwit's lock, EbpfNetLock.lockTuples / unlockTuples: writes each entry
 *                     straight into the mmapped table godwit_lock_conn (native/bpfmap/
 *                     conn_table.c), version-guarded against what the table holds; no system
 *                     call. Its time includes checking and encoding the request's tuples, which
 *                     the two hash methods do untimed, before the clock starts
 *   bpf-hash-batch    the kernel's fastest system call path, on a plain BPF hash map of the shape
 *                     godwit_lock_tuple had (how godwit's lock wrote its entries before
 *                     godwit_lock_conn): BPF_MAP_UPDATE_BATCH to lock, BPF_MAP_DELETE_BATCH to
 *                     unlock, through the native addon from this process, no version guard. From
 *                     4,096 entries the addon splits a write into ranges of 2,048 or more, up to
 *                     one per CPU, each one batch call from its own thread (GODWIT_BPFMAP_THREADS=1:
 *                     a single call)
 *   bpftool-batch     the same hash map written by one `bpftool batch file` per operation, which
 *                     opens the pinned map again and makes one update or delete call per entry
 *   iptables-restore  one `iptables-restore --noflush` adding N DROP rules in a dedicated chain
 *                     hooked into INPUT; unlock flushes and deletes the chain
 *   nftables-set      one `nft -f` creating a table with an N-element set and a drop rule;
 *                     unlock deletes the table
 *
 * Everything runs in a throwaway network namespace (its own veth, its own pins, its own
 * iptables and nftables rules), removed afterwards, also on failure or Ctrl-C. iptables and nft
 * run through nsenter, so their times include starting one process (bpftool's too).
 *
 * Each method first runs once at 10,000 entries, unreported (loading and JIT-compiling its
 * path; for ebpf also anything its first call sets up once, which a running agent did long
 * before). Options:
 *   --entries 1000,10000,100000  --methods ebpf,...  --runs 3  --json
 * Every measurement is also appended to bench/results/lockops.jsonl.
 */
import { randomBytes } from 'node:crypto';
import { appendFile, mkdir } from 'node:fs/promises';
import { release } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { bpfMapMethods, NativeMap } from '../agent/linux/bpf/native-map.js';
import { encodeLockValue, encodeTupleKeys } from '../agent/linux/lock-map-codec.js';
import { BpftoolMap, type MapShape } from '../agent/linux/bpf/map-access.js';
import { LEGACY_TUPLE_MAP_SHAPE } from '../agent/linux/lock-maps.js';
import { EbpfNetLock } from '../agent/linux/netlock-ebpf.js';
import { nsExecutor } from '../agent/linux/netns-exec.js';
import type { FourTuple } from '../agent/netlock.js';
import { execCommand, type Executor } from '../lib/exec.js';
import { REPO_ROOT } from '../lib/rpc.js';

const METHODS = ['ebpf', 'bpf-hash-batch', 'bpftool-batch', 'iptables-restore', 'nftables-set'] as const;
type Method = (typeof METHODS)[number];

/** The workload end of every benchmark connection; peers come from 198.19.0.0/16 (never routed). */
const LOCAL_ADDRESS = '198.18.0.1';
const LOCAL_PORT = 7000;
const CHAIN = 'GODWIT_LOCKOPS';
const NFT_TABLE = 'godwit_lockops';
/** iptables-restore of 100,000 rules through nf_tables takes seconds; give a method room before calling it failed. */
const STEP_TIMEOUT_MS = 600_000;
/** Leases outlast any run: bpftool at 100,000 entries takes seconds. */
const LEASE_MS = 600_000;
/**
 * Entries per method in the unreported warm-up round (at most the largest size asked for):
 * a smaller round leaves V8 to optimise the per-entry loops of godwit's lock during the first
 * measurement (measured with its batch-writing path before godwit_lock_conn: 10,000 entries took
 * about 11 ms there instead of 4.5).
 */
const WARMUP_ENTRIES = 10_000;
const RESULTS = join(REPO_ROOT, 'bench', 'results', 'lockops.jsonl');
/** The largest u64: an unlock at this version wins against every entry. */
const NEWEST_VERSION = 2n ** 64n - 1n;

/**
 * The hash methods' map: the shape of godwit_lock_tuple, the hash map that held connection locks
 * up to layout version 3 (bpf/lock_maps.h). The kernel keeps 15 characters of the name.
 */
const HASH_MAP_SHAPE: MapShape = { ...LEGACY_TUPLE_MAP_SHAPE, name: 'godwit_bench_hash' };

interface Options {
  entries: number[];
  methods: Method[];
  runs: number;
  json: boolean;
}

/** One run of one method at one size: a measurement line. */
interface Measurement {
  method: Method;
  entries: number;
  run: number;
  lockMs: number | null;
  unlockMs: number | null;
  error?: string;
}

class UsageError extends Error {}

function parseOptions(argv: string[]): Options {
  const o: Options = { entries: [1_000, 10_000, 100_000], methods: [...METHODS], runs: 3, json: false };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s, 2);
    const value = () => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new UsageError(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '--entries':
        o.entries = value().split(',').map((x) => Number(x.replace(/_/g, '')));
        if (o.entries.some((n) => !Number.isInteger(n) || n < 1 || n > 131_072)) throw new UsageError('--entries takes integers 1..131072 (godwit_lock_conn and the hash map hold 131072)');
        break;
      case '--methods': {
        const names = value().split(',');
        const unknown = names.filter((m) => !(METHODS as readonly string[]).includes(m));
        if (unknown.length > 0) throw new UsageError(`unknown method(s) ${unknown.join(', ')}; choose from ${METHODS.join(', ')}`);
        o.methods = names as Method[];
        break;
      }
      case '--runs':
        o.runs = Number(value());
        if (!Number.isInteger(o.runs) || o.runs < 1) throw new UsageError('--runs takes a positive integer');
        break;
      case '--json':
        o.json = true;
        break;
      default:
        throw new UsageError(`unknown option ${argv[i]}`);
    }
  }
  return o;
}

/**
 * n distinct TCP connections to LOCAL_ADDRESS:LOCAL_PORT, as decoded from a request: the JSON
 * round trip gives flat strings, where template literals would leave V8 ropes that the first
 * lock flattens (about 6 ms at 10,000 connections, charged to whichever method comes first).
 */
function connections(n: number): FourTuple[] {
  return JSON.parse(JSON.stringify(generate(n))) as FourTuple[];
}

function generate(n: number): FourTuple[] {
  return Array.from({ length: n }, (_, i) => ({
    proto: 'tcp',
    localAddress: LOCAL_ADDRESS,
    localPort: LOCAL_PORT,
    remoteAddress: `198.19.${(i >> 8) & 255}.${i & 255}`,
    remotePort: 1024 + (i >> 16),
  }));
}

/** The throwaway host: a namespace with a veth pair, the lock installed on one end, and the hash methods' map. */
class BenchHost {
  readonly netns = `godwit-lockops-${randomBytes(3).toString('hex')}`;
  readonly pinDir = `/sys/fs/bpf/${this.netns}`;
  readonly hashPin = `${this.pinDir}/hash_conns`;
  readonly exec: Executor = nsExecutor(this.netns, execCommand);
  private created = false;
  native?: EbpfNetLock;
  hashMap?: NativeMap;
  hashMapByBpftool?: BpftoolMap;

  async up(): Promise<void> {
    await execCommand('bash', [join(REPO_ROOT, 'scripts', 'build-bpf.sh')], { timeoutMs: 60_000 });
    await execCommand('ip', ['netns', 'add', this.netns]);
    this.created = true;
    await this.exec('ip', ['link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth1']);
    for (const dev of ['lo', 'eth0', 'eth1']) await this.exec('ip', ['link', 'set', 'dev', dev, 'up']);
    await this.exec('ip', ['addr', 'add', `${LOCAL_ADDRESS}/24`, 'dev', 'eth0']);
    const opts = { iface: 'eth0', pinDir: this.pinDir, objectPath: join(REPO_ROOT, 'build', 'bpf', 'lock.o') };
    this.native = new EbpfNetLock({ ...opts, exec: this.exec, mapMethod: 'native' });
    await this.native.install(); // also mounts bpffs where it is missing
    await this.createHashMap();
  }

  /**
   * A standalone hash map pinned in pinDir (removed with it), no program attached: written by the
   * addon and by bpftool in turns, each leaving it empty. bpftool runs in this namespace's parent:
   * maps are not per namespace, and nsenter would add a process to every call.
   */
  private async createHashMap(): Promise<void> {
    const { name, keySize, valueSize, maxEntries } = HASH_MAP_SHAPE;
    await execCommand('mkdir', ['-p', this.pinDir]);
    await execCommand('bpftool', ['map', 'create', this.hashPin, 'type', 'hash', 'key', String(keySize), 'value', String(valueSize), 'entries', String(maxEntries), 'name', name]);
    this.hashMap = new NativeMap(this.hashPin, HASH_MAP_SHAPE);
    this.hashMapByBpftool = new BpftoolMap(execCommand, this.hashPin, HASH_MAP_SHAPE);
  }

  /** Removes the namespace (and with it the veth, the rules, the XDP attachment) and the pins. */
  async down(): Promise<void> {
    if (!this.created) return;
    this.created = false;
    await execCommand('ip', ['netns', 'del', this.netns], { allowFailure: true });
    await execCommand('rm', ['-rf', this.pinDir], { allowFailure: true });
  }
}

/** One method: lock and unlock N connections; verify() (not timed) proves the lock took. */
interface LockOps {
  prepare(tuples: FourTuple[], version: bigint): Promise<void>;
  lock(): Promise<void>;
  verifyLocked(n: number): Promise<void>;
  unlock(): Promise<void>;
  verifyUnlocked(): Promise<void>;
  /** Leaves nothing behind after a failure. */
  reset(): Promise<void>;
}

function expectCount(what: string, have: number, want: number): void {
  if (have !== want) throw new Error(`${what}: ${have} entries after the step, expected ${want}`);
}

/** godwit's lock: the tuples go to EbpfNetLock as a request brings them; listTuples() reads the table back. */
function ebpfOps(host: BenchHost): LockOps {
  let tuples: FourTuple[] = [];
  let version = 0n;
  const lock = () => host.native!;
  return {
    async prepare(t, v) {
      tuples = t;
      version = v;
    },
    lock: () => lock().lockTuples(tuples, version, LEASE_MS),
    async verifyLocked(n) {
      const listed = await lock().listTuples();
      expectCount('godwit_lock_conn', listed.filter((e) => e.version === version).length, n);
    },
    unlock: () => lock().unlockTuples(tuples, version),
    async verifyUnlocked() {
      expectCount('godwit_lock_conn', (await lock().listTuples()).length, 0);
    },
    async reset() {
      // Whatever a failed step left, of this run or an earlier one.
      const held = await lock().listTuples();
      await lock().unlockTuples(held.map((e) => e.tuple), NEWEST_VERSION);
    },
  };
}

/** What a hash method writes through: NativeMap (bpf(2) batches) or BpftoolMap (one bpftool process). */
type HashMapWriter = Pick<NativeMap, 'update' | 'delete'>;

/**
 * The hash map written in one call per operation, keys and values packed beforehand (untimed:
 * the timed step is the kernel's, or bpftool's, work); read back through the addon's dump,
 * which is faster than bpftool's JSON.
 */
function hashMapOps(writer: () => HashMapWriter, reader: () => NativeMap): LockOps {
  let keys: Buffer = Buffer.alloc(0);
  let values: Buffer = Buffer.alloc(0);
  return {
    async prepare(tuples, version) {
      keys = encodeTupleKeys(tuples);
      const deadlineNs = process.hrtime.bigint() + BigInt(LEASE_MS) * 1_000_000n;
      // Every entry the same lease, as a fresh lock by godwit writes it.
      values = Buffer.alloc(tuples.length * HASH_MAP_SHAPE.valueSize, encodeLockValue({ version, deadlineNs, drops: 0n, lastDropNs: 0n }));
    },
    lock: () => writer().update(keys, values),
    async verifyLocked(n) {
      expectCount(HASH_MAP_SHAPE.name, (await reader().dump()).count, n);
    },
    unlock: async () => {
      await writer().delete(keys);
    },
    async verifyUnlocked() {
      expectCount(HASH_MAP_SHAPE.name, (await reader().dump()).count, 0);
    },
    async reset() {
      const held = await reader().dump();
      await reader().delete(held.keys.subarray(0, held.count * HASH_MAP_SHAPE.keySize));
    },
  };
}

function iptablesOps(host: BenchHost): LockOps {
  let input = '';
  const restore = (text: string) => host.exec('iptables-restore', ['--noflush'], { input: text, timeoutMs: STEP_TIMEOUT_MS });
  const ruleCount = async () => (await host.exec('iptables', ['-S', CHAIN], { allowFailure: true, timeoutMs: STEP_TIMEOUT_MS })).stdout.split('\n').filter((l) => l.startsWith(`-A ${CHAIN} `)).length;
  return {
    async prepare(tuples) {
      const rules = tuples.map((t) => `-A ${CHAIN} -p ${t.proto} -s ${t.remoteAddress}/32 -d ${t.localAddress}/32 -m ${t.proto} --sport ${t.remotePort} --dport ${t.localPort} -j DROP`);
      input = ['*filter', `:${CHAIN} - [0:0]`, ...rules, `-I INPUT 1 -j ${CHAIN}`, 'COMMIT', ''].join('\n');
    },
    lock: async () => {
      await restore(input);
    },
    async verifyLocked(n) {
      expectCount(`chain ${CHAIN}`, await ruleCount(), n);
    },
    unlock: async () => {
      await restore(['*filter', `-D INPUT -j ${CHAIN}`, `-F ${CHAIN}`, `-X ${CHAIN}`, 'COMMIT', ''].join('\n'));
    },
    async verifyUnlocked() {
      const r = await host.exec('iptables', ['-S', CHAIN], { allowFailure: true });
      if (r.exitCode === 0) throw new Error(`chain ${CHAIN} still exists after unlock`);
    },
    async reset() {
      await host.exec('iptables', ['-D', 'INPUT', '-j', CHAIN], { allowFailure: true });
      await host.exec('iptables', ['-F', CHAIN], { allowFailure: true });
      await host.exec('iptables', ['-X', CHAIN], { allowFailure: true });
    },
  };
}

function nftOps(host: BenchHost): LockOps {
  let input = '';
  return {
    async prepare(tuples) {
      // One concatenated key per connection, as the packet arrives: peer . its port . us . our port.
      const elements = tuples.map((t) => `      ${t.remoteAddress} . ${t.remotePort} . ${t.localAddress} . ${t.localPort}`).join(',\n');
      input = [
        `table ip ${NFT_TABLE} {`,
        '  set conns {',
        '    type ipv4_addr . inet_service . ipv4_addr . inet_service',
        `    elements = {\n${elements}\n    }`,
        '  }',
        '  chain input {',
        '    type filter hook input priority -300; policy accept;',
        '    ip saddr . tcp sport . ip daddr . tcp dport @conns drop',
        '  }',
        '}',
        '',
      ].join('\n');
    },
    lock: async () => {
      await host.exec('nft', ['-f', '-'], { input, timeoutMs: STEP_TIMEOUT_MS });
    },
    async verifyLocked(n) {
      const r = await host.exec('nft', ['-j', 'list', 'set', 'ip', NFT_TABLE, 'conns'], { timeoutMs: STEP_TIMEOUT_MS });
      const doc = JSON.parse(r.stdout) as { nftables: { set?: { elem?: unknown[] } }[] };
      expectCount(`set ${NFT_TABLE}.conns`, doc.nftables.find((x) => x.set)?.set?.elem?.length ?? 0, n);
    },
    unlock: async () => {
      await host.exec('nft', ['delete', 'table', 'ip', NFT_TABLE], { timeoutMs: STEP_TIMEOUT_MS });
    },
    async verifyUnlocked() {
      const r = await host.exec('nft', ['list', 'table', 'ip', NFT_TABLE], { allowFailure: true });
      if (r.exitCode === 0) throw new Error(`table ${NFT_TABLE} still exists after unlock`);
    },
    async reset() {
      await host.exec('nft', ['delete', 'table', 'ip', NFT_TABLE], { allowFailure: true });
    },
  };
}

async function timed(step: () => Promise<void>): Promise<number> {
  const t0 = performance.now();
  await step();
  return performance.now() - t0;
}

async function measure(method: Method, ops: LockOps, tuples: FourTuple[], run: number, version: bigint): Promise<Measurement> {
  const m: Measurement = { method, entries: tuples.length, run, lockMs: null, unlockMs: null };
  try {
    await ops.prepare(tuples, version);
    await settle();
    m.lockMs = round(await timed(() => ops.lock()));
    await ops.verifyLocked(tuples.length);
    await settle();
    m.unlockMs = round(await timed(() => ops.unlock()));
    await ops.verifyUnlocked();
  } catch (err) {
    m.error = err instanceof Error ? err.message.split('\n')[0].slice(0, 300) : String(err);
    await ops.reset().catch(() => undefined);
  }
  return m;
}

/**
 * Before each timed operation: the kernel finishes what the previous one deferred (RCU frees of
 * 10,000 rules or map elements run on the same two CPUs), so no method pays for another's.
 */
const SETTLE_MS = 250;
const settle = () => new Promise((r) => setTimeout(r, SETTLE_MS));

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}

function median(xs: number[]): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

function fmt(ms: number | undefined): string {
  if (ms === undefined) return '—';
  return ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2);
}

function table(results: Measurement[], o: Options): string {
  const lines = [
    '| method | entries | lock ms (median) | unlock ms (median) | lock / ebpf | unlock / ebpf | runs: lock / unlock ms |',
    '|---|---:|---:|---:|---:|---:|---|',
  ];
  for (const n of o.entries) {
    const ok = (method: Method) => results.filter((r) => r.method === method && r.entries === n && !r.error);
    const base = { lock: median(ok('ebpf').map((r) => r.lockMs!)), unlock: median(ok('ebpf').map((r) => r.unlockMs!)) };
    for (const method of o.methods) {
      const rows = results.filter((r) => r.method === method && r.entries === n);
      const good = ok(method);
      const lock = median(good.map((r) => r.lockMs!));
      const unlock = median(good.map((r) => r.unlockMs!));
      const ratio = (x: number | undefined, b: number | undefined) => (x === undefined || !b ? '—' : `${(x / b).toFixed(1)}×`);
      const runs = rows.map((r) => (r.error ? 'failed' : `${fmt(r.lockMs!)} / ${fmt(r.unlockMs!)}`)).join(', ');
      lines.push(`| ${method} | ${n.toLocaleString('en-US')} | ${fmt(lock)} | ${fmt(unlock)} | ${ratio(lock, base.lock)} | ${ratio(unlock, base.unlock)} | ${runs} |`);
    }
  }
  const failures = results.filter((r) => r.error);
  if (failures.length > 0) {
    lines.push('', 'Failed:');
    for (const f of failures) lines.push(`- ${f.method} at ${f.entries.toLocaleString('en-US')} (run ${f.run}): ${f.error}`);
  }
  return lines.join('\n');
}

export async function run(argv: string[]): Promise<number> {
  let o: Options;
  try {
    o = parseOptions(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`bench lockops: ${err.message}\nusage: npm run bench -- lockops [--entries 1000,10000,100000] [--methods ${METHODS.join(',')}] [--runs 3] [--json]\n`);
    return 2;
  }

  const host = new BenchHost();
  const onSignal = () => {
    void host.down().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const results: Measurement[] = [];
  try {
    await host.up();
    const ops: Record<Method, LockOps> = {
      ebpf: ebpfOps(host),
      'bpf-hash-batch': hashMapOps(() => host.hashMap!, () => host.hashMap!),
      'bpftool-batch': hashMapOps(() => host.hashMapByBpftool!, () => host.hashMap!),
      'iptables-restore': iptablesOps(host),
      'nftables-set': nftOps(host),
    };
    const meta = { at: new Date().toISOString(), kernel: release(), iptables: (await execCommand('iptables', ['-V'], { allowFailure: true })).stdout.trim() };
    await mkdir(join(REPO_ROOT, 'bench', 'results'), { recursive: true });
    let version = 1n;
    // Warm-up, not reported: the first call of each path pays for loading and JIT-compiling it.
    const warmup = connections(Math.min(WARMUP_ENTRIES, Math.max(...o.entries)));
    for (const method of o.methods) await measure(method, ops[method], warmup, 0, version++);
    for (const n of o.entries) {
      const tuples = connections(n);
      for (let r = 1; r <= o.runs; r++) {
        // Methods interleaved per run, so a slow phase of the machine hits all of them.
        for (const method of o.methods) {
          const m = await measure(method, ops[method], tuples, r, version++);
          results.push(m);
          const line = JSON.stringify(m);
          if (o.json) process.stdout.write(line + '\n');
          else process.stderr.write(`lockops: ${method} ${n} run ${r}: ${m.error ? `failed: ${m.error}` : `lock ${fmt(m.lockMs!)} ms, unlock ${fmt(m.unlockMs!)} ms`}\n`);
          await appendFile(RESULTS, JSON.stringify({ ...m, ...meta }) + '\n');
        }
      }
    }
    if (!o.json) {
      process.stdout.write(table(results, o) + '\n');
      // 'element' where the kernel refused a batch call: the addon then made one call per entry.
      const calls = o.methods.includes('bpf-hash-batch') ? bpfMapMethods() : undefined;
      const hashCalls = calls ? `bpf-hash-batch kernel calls: update ${calls.update}, delete ${calls.delete}; ` : '';
      process.stdout.write(`\n${hashCalls}kernel ${meta.kernel}; ${meta.iptables}\n`);
    }
    return 0;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await host.down();
  }
}
