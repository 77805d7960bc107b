/**
 * Where a workload goes when it must leave a host (a drain): a pure decision, no I/O, so that
 * the rule can be read and tested in one place. The rule, in order:
 *   1. only ready hosts, never the source, never a cordoned host (nor one outside `allowed`);
 *   2. anti-affinity: a workload labelled `avoid=SELECTOR[,SELECTOR...]` never shares a host with
 *      a workload matching a selector, and the other way round (a pair that must not meet does
 *      not meet whichever of them moves); a selector is `KEY` (the label is there) or `KEY=VALUE`;
 *   3. least loaded: fewest workloads (those registered there plus those on their way), then the
 *      most free memory, then the name (so that equal hosts are chosen the same way each time).
 */

export type Labels = Readonly<Record<string, string>>;

/** The label key whose value lists the selectors a workload must not share a host with. */
export const AVOID_LABEL = 'avoid';

export interface PlacementHost {
  name: string;
  ready: boolean;
  cordoned: boolean;
  /** Workloads on it now plus those moving to it. */
  workloads: number;
  /** From the host's heartbeat; undefined when it does not say (counts as none). */
  freeMemoryBytes?: number;
  /** The labels of every workload on it now or moving to it. */
  workloadLabels: readonly Labels[];
}

export interface PlacementWorkload {
  name: string;
  /** Where it runs now: never its target. */
  host: string;
  labels: Labels;
}

export interface PlacementOptions {
  /** Only these hosts may take it (empty or absent: any). */
  allowed?: readonly string[];
}

export type Placement = { host: string } | { host?: undefined; reasons: string[] };

/** The host the workload should go to, or why no host can take it (one reason per host). */
export function chooseTarget(w: PlacementWorkload, hosts: readonly PlacementHost[], opts: PlacementOptions = {}): Placement {
  const reasons: string[] = [];
  const fit: PlacementHost[] = [];
  for (const h of hosts) {
    const why = unfit(w, h, opts);
    if (why) reasons.push(`${h.name}: ${why}`);
    else fit.push(h);
  }
  if (fit.length === 0) return { reasons: reasons.length > 0 ? reasons : ['no hosts are registered'] };
  fit.sort((a, b) => a.workloads - b.workloads || (b.freeMemoryBytes ?? 0) - (a.freeMemoryBytes ?? 0) || a.name.localeCompare(b.name));
  return { host: fit[0].name };
}

function unfit(w: PlacementWorkload, h: PlacementHost, opts: PlacementOptions): string | undefined {
  if (h.name === w.host) return 'the workload runs there';
  if (opts.allowed && opts.allowed.length > 0 && !opts.allowed.includes(h.name)) return 'not among the allowed targets';
  if (!h.ready) return 'not ready (no recent heartbeat)';
  if (h.cordoned) return 'cordoned';
  for (const other of h.workloadLabels) {
    const mine = avoidedBy(w.labels).find((s) => matches(s, other));
    if (mine) return `holds a workload labelled ${mine}, which ${w.name} avoids`;
    const theirs = avoidedBy(other).find((s) => matches(s, w.labels));
    if (theirs) return `holds a workload that avoids ${theirs}`;
  }
  return undefined;
}

/** The selectors a workload's `avoid` label lists. */
export function avoidedBy(labels: Labels): string[] {
  const v = labels[AVOID_LABEL];
  return v ? v.split(',').map((s) => s.trim()).filter(Boolean) : [];
}

/** `KEY` matches when the label is there; `KEY=VALUE` when it has that value. */
export function matches(selector: string, labels: Labels): boolean {
  const eq = selector.indexOf('=');
  if (eq < 0) return Object.hasOwn(labels, selector);
  const key = selector.slice(0, eq);
  return Object.hasOwn(labels, key) && labels[key] === selector.slice(eq + 1);
}

const LABEL_KEY = /^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$/;
const MAX_LABEL_VALUE = 253;

/** Why a label set is not acceptable, or undefined. */
export function labelProblem(labels: Labels): string | undefined {
  for (const [k, v] of Object.entries(labels)) {
    if (!LABEL_KEY.test(k)) return `label key "${k}" must be 1-63 of [A-Za-z0-9_./-], starting with a letter or digit`;
    if (v.length > MAX_LABEL_VALUE) return `label "${k}" has a value longer than ${MAX_LABEL_VALUE} characters`;
  }
  return undefined;
}

/** `KEY=VALUE` or `KEY` (empty value) as the CLI takes them; the first `=` splits (avoid=app=db keeps app=db). */
export function parseLabels(items: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of items) {
    const eq = item.indexOf('=');
    const [k, v] = eq < 0 ? [item, ''] : [item.slice(0, eq), item.slice(eq + 1)];
    out[k] = v;
  }
  return out;
}
