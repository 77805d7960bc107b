/**
 * `npm run bench -- follow --kinds handoff`: a workload's steering state moved between two
 * hosts' pinned maps through the image's steering file, as a migration moves it.
 *
 * Two "hosts" on this machine: the steering object loaded twice (not attached to any interface),
 * under two pin folders /sys/fs/bpf/godwit-bench-follow-<tag>-{a,b}, both removed at the end,
 * also on failure. Per measurement: both loaded fresh; host a's steer_flows filled with N flows
 * of the workload (backend WORKLOAD_ID) and N/10 (at least 100) of another workload, plus its
 * counters (and with --rnat one reverse-NAT entry per flow); then, timed:
 *   export = exportWorkload on a (batch walks, selection by value, counters) + the file written,
 *   import = the file mapped and checked (sha256, layout) + importWorkload on b (batch updates).
 * Afterwards b's entries of the workload are compared with what a exported: count and sha256
 * of the sorted entries (handoff-file.ts entriesDigest), and `lost` counts the exported entries
 * b does not hold with the same value. Another workload's entries must not have moved.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { entriesDigest, writeHandoffFile } from '../agent/handoff-file.js';
import { readHandoffFileMapped } from '../agent/linux/steer-handoff.js';
import { batchShape } from '../agent/linux/bpf/map-spec.js';
import { batchValueBytes, NativeMap, possibleCpus } from '../agent/linux/bpf/native-map.js';
import { FLOW_RNAT, STEER_MAPS } from '../agent/linux/steer-map-codec.js';
import { EbpfSteering } from '../agent/linux/steering-ebpf.js';
import type { PackedMapEntries, WorkloadSelector } from '../agent/steering.js';
import { execCommand } from '../lib/exec.js';
import { REPO_ROOT } from '../lib/rpc.js';
import type { FollowIo, FollowKind, FollowOptions } from './follow.js';
import { handoffSvg, handoffTable, summarizeHandoff, type HandoffRow, type HandoffRun } from './follow-report.js';

const WORKLOAD_ID = 7;
const OTHER_ID = 8;
const WORKLOAD_ADDRESS = '198.18.207.7';
const OTHER_ADDRESS = '198.18.207.8';
const SELECTOR: WorkloadSelector = { addresses: [WORKLOAD_ADDRESS], backendIds: [WORKLOAD_ID] };
const log = pino({ enabled: false });

export const handoffKind: FollowKind = { run: runHandoff };

async function runHandoff(opts: FollowOptions, io: FollowIo): Promise<{ table: string; ok: boolean }> {
  const tag = randomBytes(3).toString('hex');
  const pinDirs = ['a', 'b'].map((h) => `/sys/fs/bpf/godwit-bench-follow-${tag}-${h}`);
  const imageDir = mkdtempSync(join(tmpdir(), 'godwit-bench-follow-'));
  const rows: HandoffRow[] = [];
  try {
    for (const entries of opts.entries) {
      const runs: HandoffRun[] = [];
      for (let run = 1; run <= opts.runs; run++) {
        const r = await measure(entries, run, opts.rnat, pinDirs, imageDir);
        io.say(`handoff ${entries} entries run ${run}: export ${r.exportMs.toFixed(1)} ms, import ${r.importMs.toFixed(1)} ms, lost ${r.lost}${r.digestOk ? '' : ', digests differ'}`);
        runs.push(r);
      }
      const [row] = summarizeHandoff(runs);
      rows.push(row);
      io.emit({ ...row });
    }
  } finally {
    for (const d of pinDirs) await execCommand('rm', ['-rf', d], { allowFailure: true });
    rmSync(imageDir, { recursive: true, force: true });
  }
  if (rows.length > 0) writeFileSync(join(opts.results, 'follow-handoff.svg'), handoffSvg(rows));
  return { table: handoffTable(rows), ok: rows.every((r) => r.lost === 0 && r.digestOk) };
}

function host(pinDir: string, i: number): EbpfSteering {
  return new EbpfSteering({ exec: execCommand, iface: 'lo', pinDir, objectPath: join(REPO_ROOT, 'build', 'bpf', 'steer.o'), hostAddress: `198.18.206.${i + 1}`, attach: false, log });
}

/** Flows of one backend: client 10.x.y.z (distinct per i from `first`) -> VIP 198.19.207.1:80. */
function flows(first: number, n: number, backendId: number): PackedMapEntries {
  const keys = Buffer.alloc(n * 16);
  const values = Buffer.alloc(n * 12);
  for (let i = 0; i < n; i++) {
    keys.writeUInt32BE(0x0a000000 + first + i, i * 16);
    keys.writeUInt32BE(0xc613cf01, i * 16 + 4);
    keys.writeUInt16BE(1024 + ((first + i) % 60_000), i * 16 + 8);
    keys.writeUInt16BE(80, i * 16 + 10);
    keys[i * 16 + 12] = 6;
    values.writeUInt32LE(backendId, i * 12);
    values.writeUInt32LE(1, i * 12 + 4);
    values.writeUInt32LE(FLOW_RNAT, i * 12 + 8);
  }
  return { keySize: 16, valueSize: 12, count: n, keys, values };
}

/** Reverse NAT of the same clients for one backend address. */
function rnat(first: number, n: number, backend: string): PackedMapEntries {
  const keys = Buffer.alloc(n * 16);
  const values = Buffer.alloc(n * 8);
  const addr = Buffer.from(backend.split('.').map(Number));
  for (let i = 0; i < n; i++) {
    addr.copy(keys, i * 16);
    keys.writeUInt32BE(0x0a000000 + first + i, i * 16 + 4);
    keys.writeUInt16BE(8080, i * 16 + 8);
    keys.writeUInt16BE(1024 + ((first + i) % 60_000), i * 16 + 10);
    keys[i * 16 + 12] = 6;
    values.writeUInt32BE(0xc613cf01, i * 8);
    values.writeUInt16BE(80, i * 8 + 4);
  }
  return { keySize: 16, valueSize: 8, count: n, keys, values };
}

/** The entries of `all` (a dump) that `exported` holds with the same value are found; the rest lost. */
function lostEntries(exported: PackedMapEntries, held: PackedMapEntries): number {
  const have = new Set<string>();
  for (let i = 0; i < held.count; i++) have.add(held.keys.toString('latin1', i * held.keySize, (i + 1) * held.keySize) + held.values.toString('latin1', i * held.valueSize, (i + 1) * held.valueSize));
  let lost = 0;
  for (let i = 0; i < exported.count; i++)
    if (!have.has(exported.keys.toString('latin1', i * exported.keySize, (i + 1) * exported.keySize) + exported.values.toString('latin1', i * exported.valueSize, (i + 1) * exported.valueSize))) lost++;
  return lost;
}

async function dump(pinDir: string, m: typeof STEER_MAPS.flows | typeof STEER_MAPS.rnat): Promise<PackedMapEntries> {
  const d = await new NativeMap(join(pinDir, 'maps', m.name), batchShape(m)).dump();
  return { keySize: m.keySize, valueSize: m.valueSize, count: d.count, keys: d.keys, values: d.values };
}

async function measure(entries: number, run: number, withRnat: boolean, pinDirs: string[], imageDir: string): Promise<HandoffRun> {
  const [a, b] = pinDirs.map((d, i) => host(d, i));
  const others = Math.max(100, Math.floor(entries / 10));
  try {
    await a.install();
    await b.install();
    const pin = (d: string, name: string) => join(d, 'maps', name);
    // Source: the workload's flows and another workload's, interleaved in the kernel's hash order.
    const fill = async (m: typeof STEER_MAPS.flows | typeof STEER_MAPS.rnat, e: PackedMapEntries) => new NativeMap(pin(pinDirs[0], m.name), batchShape(m)).update(e.keys, e.values);
    await fill(STEER_MAPS.flows, flows(0, entries, WORKLOAD_ID));
    await fill(STEER_MAPS.flows, flows(entries, others, OTHER_ID));
    const rnatCount = withRnat ? entries : 0;
    if (withRnat) {
      await fill(STEER_MAPS.rnat, rnat(0, entries, WORKLOAD_ADDRESS));
      await fill(STEER_MAPS.rnat, rnat(entries, others, OTHER_ADDRESS));
    }
    // Counters on every CPU: the export sums them.
    const stats = STEER_MAPS.backendStats;
    const cpus = possibleCpus();
    const valueBytes = batchValueBytes(batchShape(stats));
    const counterValue = Buffer.alloc(valueBytes);
    for (let cpu = 0; cpu < cpus; cpu++) {
      counterValue.writeBigUInt64LE(BigInt(entries * 10), cpu * 24);
      counterValue.writeBigUInt64LE(BigInt(entries * 1000), cpu * 24 + 8);
      counterValue.writeBigUInt64LE(BigInt(entries), cpu * 24 + 16);
    }
    const idKey = Buffer.alloc(4);
    idKey.writeUInt32LE(WORKLOAD_ID);
    await new NativeMap(pin(pinDirs[0], stats.name), batchShape(stats)).update(idKey, counterValue);

    const cpuMs = () => {
      const u = process.cpuUsage();
      return (u.user + u.system) / 1000;
    };
    const c0 = cpuMs();
    const t0 = performance.now();
    const exported = await a.exportWorkload(SELECTOR);
    const t1 = performance.now();
    const fileBytes = await writeHandoffFile(imageDir, exported);
    const t2 = performance.now();
    const c2 = cpuMs();
    const read = await readHandoffFileMapped(imageDir);
    const t3 = performance.now();
    if (!read) throw new Error(`the steering file written to ${imageDir} is gone`);
    await b.importWorkload(read);
    const t4 = performance.now();
    const c4 = cpuMs();

    // What b holds now: exactly the workload's entries (b was empty), counters added.
    const bFlows = await dump(pinDirs[1], STEER_MAPS.flows);
    const bRnat = await dump(pinDirs[1], STEER_MAPS.rnat);
    const lost = lostEntries(exported.flows, bFlows) + lostEntries(exported.rnat, bRnat);
    const bCounter = (await b.counters()).backends.get(WORKLOAD_ID);
    const sum = BigInt(cpus);
    const countersOk = bCounter?.packets === BigInt(entries * 10) * sum && bCounter.bytes === BigInt(entries * 1000) * sum && bCounter.flows === BigInt(entries) * sum;
    const same = (x: PackedMapEntries, y: PackedMapEntries) => {
      const dx = entriesDigest(x);
      const dy = entriesDigest(y);
      return dx.count === dy.count && dx.sha256 === dy.sha256;
    };
    const digestOk = exported.flows.count === entries && exported.rnat.count === rnatCount && same(exported.flows, bFlows) && same(exported.rnat, bRnat) && countersOk;
    return {
      entries,
      others,
      rnat: rnatCount,
      run,
      exportMs: t2 - t0,
      importMs: t4 - t2,
      exportMapsMs: t1 - t0,
      writeFileMs: t2 - t1,
      readFileMs: t3 - t2,
      importMapsMs: t4 - t3,
      exportCpuMs: c2 - c0,
      importCpuMs: c4 - c2,
      fileBytes,
      lost: lost + Math.max(0, entries + rnatCount - exported.flows.count - exported.rnat.count),
      digestOk,
    };
  } finally {
    await a.uninstall().catch(() => undefined);
    await b.uninstall().catch(() => undefined);
  }
}
