/**
 * The pure half of `npm run bench -- faults` (bench/faults.ts): the matrix's cases, each row's
 * `--json` line and the table. No I/O here.
 */
import { FAULT_PARTS, FAULT_POINTS, type FaultCase, type FaultPart, type FaultPoint, type FaultRow } from './fault-case.js';

/** Every part at every point (32), and for the controller also a standby taking over (8 more). */
export function matrixCases(parts: readonly FaultPart[] = FAULT_PARTS, points: readonly FaultPoint[] = FAULT_POINTS, standby = true): FaultCase[] {
  const out: FaultCase[] = [];
  for (const killed of parts)
    for (const point of points) {
      out.push({ killed, point, standby: false });
      if (killed === 'controller' && standby) out.push({ killed, point, standby: true });
    }
  return out;
}

/** CI's subset: at least one case per killed part, at the points that matter most for each. */
export const QUICK_CASES: readonly FaultCase[] = [
  { killed: 'controller', point: 'after-dump', standby: false },
  { killed: 'controller', point: 'during-restore', standby: true },
  { killed: 'source-agent', point: 'during-dump', standby: false },
  { killed: 'target-agent', point: 'during-restore', standby: false },
  { killed: 'nats', point: 'after-lock', standby: false },
];

/** The issue's --json fields first, then the rest of the row. */
export function jsonLine(r: FaultRow): string {
  const { killed, point, standby, outcome, safe, exactlyOnce, survived, connections, bytesLost, leftovers, ...rest } = r;
  return JSON.stringify({ killed, point, standby, outcome, safe, exactlyOnce, survived, connections, bytesLost, leftovers: leftovers.length, leftoverList: leftovers, ...rest });
}

export function faultTable(rows: readonly FaultRow[]): string {
  const head = ['killed', 'nats', 'point', 'standby', 'outcome', 'safe', 'once', 'runs on', 'alive', 'lost', 'dup', 'leftovers', 'events', 'back->end s', 'note'];
  const lines = rows.map((r) => [
    r.killed,
    r.nats,
    r.point,
    r.standby ? 'yes' : '',
    r.outcome,
    r.safe ? 'yes' : 'NO',
    r.exactlyOnce ? 'yes' : 'NO',
    r.survived,
    `${r.alive}/${r.connections}`,
    String(r.bytesLost),
    String(r.bytesDuplicated),
    r.leftovers.length === 0 ? '0' : r.leftovers.join('; '),
    r.eventsInOrder ? 'ok' : 'NO',
    (r.recoveredMs / 1000).toFixed(1),
    note(r),
  ]);
  const md = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [md(head), md(head.map(() => '---')), ...lines.map(md)].join('\n');
}

function note(r: FaultRow): string {
  const parts: string[] = [];
  if (!r.killedAtPoint) parts.push('point not seen (passed or ended first)');
  if (r.outcome !== 'DONE' && r.error) parts.push(r.error.length > 120 ? `${r.error.slice(0, 117)}...` : r.error);
  return parts.join('; ').replaceAll('|', '/');
}

export function summaryLine(rows: readonly FaultRow[]): string {
  const safe = rows.filter((r) => r.safe).length;
  const by = (o: string) => rows.filter((r) => r.outcome === o).length;
  return `${safe}/${rows.length} cases safe (DONE ${by('DONE')}, FAILED ${by('FAILED')}, NEEDS_ATTENTION ${by('NEEDS_ATTENTION')}, unfinished ${by('UNFINISHED')})`;
}
