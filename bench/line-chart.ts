/**
 * The benchmarks' line chart as an SVG string: a few series of milliseconds against a size
 * (agents, entries), a dashed target line, a legend. Series carry data-series and the target
 * data-target, so tests can find them. Points whose value is not finite are left out.
 */

export interface ChartSeries {
  label: string;
  color: string;
  /** One value (ms) per point, in the order of `points`. */
  values: readonly number[];
}

export interface LineChart {
  title: string;
  /** The sizes on the x axis, in any order. */
  points: readonly number[];
  /** Axis text of a size. */
  xText: (x: number) => string;
  xLabel: string;
  yLabel?: string;
  xScale: 'linear' | 'log';
  series: readonly ChartSeries[];
  targetMs: number;
  targetLabel: string;
  /** The tooltip of one point. */
  pointTitle: (series: string, x: number, valueText: string) => string;
  /** Room on the right for the target's text and the legend (default 130). */
  rightMargin?: number;
}

export function lineChartSvg(c: LineChart): string {
  const W = 720;
  const H = 420;
  const m = { left: 70, right: c.rightMargin ?? 130, top: 40, bottom: 52 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const order = c.points.map((x, i) => ({ x, i })).sort((a, b) => a.x - b.x);
  const values = c.series.flatMap((s) => s.values).filter((v) => Number.isFinite(v));
  const top = niceCeil(Math.max(c.targetMs * 1.2, ...values));
  const x = xScale(c, pw, m.left);
  const y = (v: number) => m.top + ph - (v / top) * ph;
  const p: string[] = [];
  p.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  p.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  p.push(`<text x="${m.left + pw / 2}" y="22" text-anchor="middle" font-size="15">${esc(c.title)}</text>`);
  for (let i = 0; i <= 5; i++) {
    const v = (top / 5) * i;
    p.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${y(v).toFixed(1)}" y2="${y(v).toFixed(1)}" stroke="#e3e3e3"/>`);
    p.push(`<text x="${m.left - 6}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end">${fmt(v)} ms</text>`);
  }
  for (const o of order) p.push(`<text x="${x(o.x).toFixed(1)}" y="${m.top + ph + 18}" text-anchor="middle">${esc(c.xText(o.x))}</text>`);
  p.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${m.top + ph}" y2="${m.top + ph}" stroke="black"/>`);
  p.push(`<line x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${m.top + ph}" stroke="black"/>`);
  p.push(`<text x="${m.left + pw / 2}" y="${H - 12}" text-anchor="middle">${esc(c.xLabel)}</text>`);
  if (c.yLabel) p.push(`<text transform="translate(16 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle">${esc(c.yLabel)}</text>`);
  p.push(`<line data-target="${c.targetMs}" x1="${m.left}" x2="${m.left + pw}" y1="${y(c.targetMs).toFixed(1)}" y2="${y(c.targetMs).toFixed(1)}" stroke="#555" stroke-dasharray="6 4"/>`);
  p.push(`<text x="${m.left + pw + 6}" y="${(y(c.targetMs) + 4).toFixed(1)}">${esc(c.targetLabel)}</text>`);
  let legendY = m.top + 10;
  for (const s of c.series) {
    const pts = order.filter((o) => Number.isFinite(s.values[o.i])).map((o) => ({ x: o.x, v: s.values[o.i] }));
    p.push(`<polyline data-series="${esc(s.label)}" fill="none" stroke="${s.color}" stroke-width="2" points="${pts.map((q) => `${x(q.x).toFixed(1)},${y(q.v).toFixed(1)}`).join(' ')}"/>`);
    for (const q of pts) p.push(`<circle cx="${x(q.x).toFixed(1)}" cy="${y(q.v).toFixed(1)}" r="3.5" fill="${s.color}"><title>${esc(c.pointTitle(s.label, q.x, fmt(q.v)))}</title></circle>`);
    p.push(`<line x1="${m.left + pw + 14}" x2="${m.left + pw + 38}" y1="${legendY + 30}" y2="${legendY + 30}" stroke="${s.color}" stroke-width="2"/>`);
    p.push(`<text x="${m.left + pw + 44}" y="${legendY + 34}">${esc(s.label)}</text>`);
    legendY += 20;
  }
  p.push('</svg>');
  return p.join('\n') + '\n';
}

/** Linear from 0 to the largest size; log from min(smallest, 1000) to at least a decade above. */
function xScale(c: LineChart, pw: number, left: number): (n: number) => number {
  if (c.xScale === 'linear') {
    const maxN = Math.max(...c.points, 1);
    return (n) => left + (n / maxN) * pw;
  }
  const lo = Math.log10(Math.max(1, Math.min(...c.points, 1000)));
  const hi = Math.max(lo + 1, Math.log10(Math.max(...c.points, 1)));
  return (n) => left + ((Math.log10(n) - lo) / (hi - lo)) * pw;
}

export function fmt(v: number): string {
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** 1, 2, 5 x 10^k at or above v. */
function niceCeil(v: number): number {
  const d = 10 ** Math.floor(Math.log10(v));
  for (const k of [1, 2, 5, 10]) if (k * d >= v) return k * d;
  return 10 * d;
}
