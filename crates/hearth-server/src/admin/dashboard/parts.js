// The dashboard's building blocks: DOM builders (text only ever goes in through
// textContent), number and time formatting, a stable colour per group key, and the SVG
// charts every section draws with. No dependencies.

/** Points a latency chart holds: one per poll. */
export const MAX_POINTS = 120;

// ---------- 1. helpers ----------

export function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'text') node.textContent = v;
    else if (k === 'class') node.className = v;
    else if (k === 'data') Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of [].concat(children)) if (c != null) node.append(c);
  return node;
}

export const SVG_NS = 'http://www.w3.org/2000/svg';
export function svg(tag, attrs = {}, children = []) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  for (const c of [].concat(children)) if (c != null) node.append(c);
  return node;
}

export const num = (v) => (v == null ? 0 : Number(v) || 0);
export const fmtInt = (n) => (n == null ? '—' : Number(n).toLocaleString('en-US'));
export const fmtCost = (v) => num(v).toFixed(6);
export const fmtShort = (v) => (v === 0 ? '0' : String(Number(v.toPrecision(3))));
export const keyLabel = (key) => (key == null ? '(not set)' : String(key));
export const isoSeconds = (ms) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

export const fmtPrice = (s) => (s == null || !Number.isFinite(Number(s)) ? '—' : String(Number(s)));

export function fmtAge(ms) {
  const s = num(ms) / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${Math.floor(s / 86400)} d`;
}

export function fmtTick(ms, withDate) {
  const opts = { hour: '2-digit', minute: '2-digit', hour12: false };
  if (withDate) Object.assign(opts, { month: 'short', day: 'numeric' });
  return new Date(ms).toLocaleString(undefined, opts);
}


// A key keeps its colour while the grouping stays: its FNV-1a hash picks a palette slot, probing
// on to the next free slot on a clash; once the palette is used up, the hash picks a hue.
export const PALETTE = ['#4e79a7', '#f28e2b', '#e15759', '#59a14f', '#b07aa1', '#edc948',
  '#76b7b2', '#ff9da7', '#9c755f', '#17becf', '#bcbd22', '#7f62c9'];
export const colors = { groupBy: null, byKey: new Map() };
export function colorFor(key) {
  if (key == null) return '#9aa0a6';
  if (colors.byKey.has(key)) return colors.byKey.get(key);
  let h = 2166136261;
  for (const ch of String(key)) h = Math.imul(h ^ ch.codePointAt(0), 16777619);
  h >>>= 0;
  const used = new Set(colors.byKey.values());
  const free = PALETTE.map((_, i) => PALETTE[(h + i) % PALETTE.length]).find((c) => !used.has(c));
  const color = free ?? `hsl(${h % 360}, 55%, 45%)`;
  colors.byKey.set(key, color);
  return color;
}

export function swatch(color) {
  return svg('svg', { width: 10, height: 10, class: 'swatch', 'aria-hidden': 'true' },
    svg('rect', { width: 10, height: 10, rx: 2, fill: color }));
}

export function legend(items) {
  return el('div', { class: 'legend' },
    items.map(({ label, color }) => el('span', { class: 'legend-item' }, [swatch(color), label])));
}

// ---------- charts (shared) ----------

export function niceMax(v) {
  if (!(v > 0)) return 1;
  const pow = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 2.5, 5, 10].map((m) => m * pow).find((m) => m >= v);
}

// An SVG with a y grid (0, half, top) and scale helpers; the caller draws into f.root.
export function chartFrame(width, height, maxY, fmtY) {
  const pad = { l: 58, r: 10, t: 10, b: 22 };
  const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart', role: 'img' });
  const plotW = width - pad.l - pad.r;
  const plotH = height - pad.t - pad.b;
  const top = niceMax(maxY);
  const y = (v) => pad.t + plotH - (v / top) * plotH;
  for (const frac of [0, 0.5, 1]) {
    const yy = y(top * frac);
    root.append(svg('line', { x1: pad.l, x2: width - pad.r, y1: yy, y2: yy, class: 'grid' }),
      svg('text', { x: pad.l - 6, y: yy + 4, 'text-anchor': 'end' }, fmtY(top * frac)));
  }
  return { root, y, left: pad.l, plotW, bottom: height - 6, right: width - pad.r };
}

export function timeAxis(f, s, q) {
  const withDate = q.until - q.since > 86400000 - 1;
  for (const i of [0, Math.floor(s.n / 2), s.n]) {
    const anchor = i === 0 ? 'start' : i === s.n ? 'end' : 'middle';
    f.root.append(svg('text', { x: f.left + (i * f.plotW) / s.n, y: f.bottom, 'text-anchor': anchor },
      fmtTick(s.start + i * s.bucketMs, withDate)));
  }
}

// A path through [x, y] points; a null y breaks the line; the last known point gets a dot.
export function linePath(points, color, label) {
  let d = '';
  let pen = false;
  let last = null;
  for (const [x, y] of points) {
    if (y == null) { pen = false; continue; }
    d += `${pen ? 'L' : 'M'}${x.toFixed(1)},${y.toFixed(1)}`;
    pen = true;
    last = [x, y];
  }
  const g = svg('g', {}, svg('title', {}, label));
  if (d) g.append(svg('path', { d, stroke: color, fill: 'none', 'stroke-width': 2, 'stroke-linejoin': 'round' }));
  if (last) g.append(svg('circle', { cx: last[0], cy: last[1], r: 2.5, fill: color }));
  return g;
}

// The newest point sits at the right edge; the axis holds MAX_POINTS polls.
export function miniChart(caption, points, series) {
  const values = points.flatMap((p) => series.map((s) => s.get(p))).filter((v) => v != null);
  const f = chartFrame(320, 110, Math.max(0, ...values), fmtShort);
  const x = (i) => f.left + (f.plotW * (MAX_POINTS - points.length + i)) / (MAX_POINTS - 1);
  for (const s of series) {
    f.root.append(linePath(points.map((p, i) => [x(i), s.get(p) == null ? null : f.y(s.get(p))]), s.color, s.label));
  }
  if (!points.length) f.root.append(svg('text', { x: f.left + 8, y: 40, class: 'chart-note' }, 'Waiting for a second poll…'));
  return el('figure', { class: 'mini' }, [el('figcaption', { text: caption }), f.root]);
}
