/**
 * `bench drain`'s rows, as the issue fixes them for machines (one JSON line each), and as a table
 * for people. Pure: the measuring is in bench/drain.ts.
 */

export interface DrainRow {
  kind: 'drain';
  workloads: number;
  moved: number;
  failed: number;
  /** Drain request to its record's end (ms). */
  drainMs: number;
  /** Live connections over all the drained workloads. */
  connections: number;
  survived: number;
  bytesLost: number;
}

export interface ConcurrentRow {
  kind: 'concurrent';
  migrations: number;
  done: number;
  /** Median freeze of the migrations run at once. */
  freezeMsMedian: number;
  /** Median freeze of the same kind of migration run alone. */
  freezeMsAloneMedian: number;
  survived: number;
  connections: number;
  bytesLost: number;
}

/** The field order (JSON keeps insertion order). */
export function drainJson(r: DrainRow): string {
  const { kind, workloads, moved, failed, drainMs, connections, survived, bytesLost } = r;
  return JSON.stringify({ kind, workloads, moved, failed, drainMs: Math.round(drainMs), connections, survived, bytesLost });
}

export function concurrentJson(r: ConcurrentRow): string {
  const { kind, migrations, done, freezeMsMedian, freezeMsAloneMedian, survived, connections, bytesLost } = r;
  return JSON.stringify({ kind, migrations, done, freezeMsMedian: Math.round(freezeMsMedian), freezeMsAloneMedian: Math.round(freezeMsAloneMedian), survived, connections, bytesLost });
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function reportTable(drain: DrainRow | undefined, concurrent: ConcurrentRow | undefined): string {
  const lines: string[] = [];
  if (drain) {
    lines.push('drain: one host emptied onto the rest of the lab');
    lines.push('  workloads  moved  failed  drain ms  connections  survived  bytes lost');
    lines.push(
      `  ${pad(drain.workloads, 9)}  ${pad(drain.moved, 5)}  ${pad(drain.failed, 6)}  ${pad(Math.round(drain.drainMs), 8)}  ${pad(drain.connections, 11)}  ${pad(drain.survived, 8)}  ${pad(drain.bytesLost, 10)}`,
    );
  }
  if (concurrent) {
    lines.push('concurrent: migrations started at once vs one at a time');
    lines.push('  migrations  done  freeze ms (median, at once)  freeze ms (median, alone)  connections  survived  bytes lost');
    lines.push(
      `  ${pad(concurrent.migrations, 10)}  ${pad(concurrent.done, 4)}  ${pad(Math.round(concurrent.freezeMsMedian), 27)}  ${pad(Math.round(concurrent.freezeMsAloneMedian), 25)}  ${pad(concurrent.connections, 11)}  ${pad(concurrent.survived, 8)}  ${pad(concurrent.bytesLost, 10)}`,
    );
  }
  return lines.join('\n');
}

const pad = (v: number, w: number) => String(v).padStart(w);
