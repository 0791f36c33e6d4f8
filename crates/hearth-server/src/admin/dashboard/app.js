// Hearth admin dashboard: the browser side. Two ES modules (this one and parts.js), no dependencies,
// no build step.
//
// Layout of this file:
//   1. Helpers and charts live in parts.js: DOM builders, formatting, colours, SVG charts.
//   2. api(): fetch with the admin token from sessionStorage. 401 opens the token form and pauses
//      polling; every other failure becomes a line in #error-banner, keyed by its source and
//      cleared when that source next succeeds.
//   3. Sections, each a load*() that fetches and a render*() that draws:
//      catalog, live runs (with cancel), spend & requests (totals table + two SVG charts),
//      model latency (windows computed from the deltas between successive /admin/metrics polls).
//   4. Run page (#run/<id>): the run's live row while it runs; once it is not live, its record
//      and its stored payload (request and answer, kept only when logging asked for it, with a
//      button that deletes it), both from GET /admin/runs/{id}.
//   5. Scheduler and wiring: a 2 s tick for runs and metrics, every 5th tick catalog and usage.

import {
  MAX_POINTS,
  chartFrame,
  colorFor,
  colors,
  el,
  fmtAge,
  fmtCost,
  fmtInt,
  fmtPrice,
  fmtShort,
  fmtTick,
  isoSeconds,
  keyLabel,
  legend,
  linePath,
  miniChart,
  num,
  svg,
  swatch,
  timeAxis,
} from './parts.js';

const TOKEN_KEY = 'hearth-admin-token';
const FAST_MS = 2000;
const SLOW_EVERY = 5; // catalog and usage every 5 fast ticks = 10 s
const BUCKET_FOR_RANGE = { 900: 30, 3600: 60, 21600: 300, 86400: 900, 604800: 3600 };
const SERIES_COLORS = { requests: '#2f6fdb', failed: '#d93f3f', cached: '#2e9e5b', p90: '#e08a1e' };

const $ = (id) => document.getElementById(id);
const state = {
  needAuth: false,
  errors: new Map(), // source → message shown in the banner
  busy: new Set(), // sources with a request in flight (polls skip them)
  runs: [],
  runsLoaded: false,
  usageSeq: 0,
  metrics: new Map(), // model → { prev, prevT, points: [] }
  record: { runId: null, body: undefined, payload: undefined }, // run page: GET /admin/runs/{id} once the run is not live
  tick: 0,
};

// ---------- 2. api, banner, token ----------

const apiError = (message, status) => Object.assign(new Error(message), { status });

async function api(path, options = {}) {
  const headers = { Accept: 'application/json' };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(path, { ...options, headers, cache: 'no-store' });
  } catch (e) {
    throw apiError(`cannot reach the daemon (${e.message})`, 0);
  }
  const body = await res.json().catch(() => null);
  if (res.ok) return body;
  const message = typeof body?.error === 'string' ? body.error : `${res.status} ${res.statusText}`;
  if (res.status === 401) askForToken(message);
  throw apiError(message, res.status);
}

// Runs one load; turns any failure into a banner line instead of an exception.
async function guarded(source, load) {
  state.busy.add(source);
  try {
    await load();
    setError(source, null);
    $('last-refresh').textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    setError(source, e.status === 401 ? null : `${source}: ${e.message}`);
  } finally {
    state.busy.delete(source);
  }
}

function setError(source, message) {
  if (message) state.errors.set(source, message);
  else state.errors.delete(source);
  const banner = $('error-banner');
  banner.replaceChildren(...[...state.errors.values()].map((m) => el('div', { text: m })));
  banner.hidden = state.errors.size === 0;
}

function askForToken(message) {
  const form = $('token-form');
  const hadToken = sessionStorage.getItem(TOKEN_KEY) != null;
  $('token-message').textContent = hadToken
    ? `The admin token was refused (${message}). Enter another one.`
    : 'This daemon needs an admin token.';
  state.needAuth = true;
  if (form.hidden || !hadToken) {
    form.hidden = false;
    $('token-input').focus();
  }
}

function onTokenSubmit(ev) {
  ev.preventDefault();
  const token = $('token-input').value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('token-input').value = '';
  $('token-form').hidden = true;
  state.needAuth = false;
  route();
  refreshAll();
}

// ---------- 3a. catalog ----------

async function loadCatalog() {
  const body = await api('/admin/catalog');
  renderCatalog(body?.data ?? []);
}

function renderCatalog(models) {
  const rows = models.map((m) => el('tr', { data: { model: m.id } }, [
    el('td', {}, el('code', { text: m.id })),
    el('td', { text: m.kind ?? '—' }),
    el('td', {}, stateCell(m)),
    el('td', { text: m.modality ?? '—' }),
    el('td', { text: (m.providers ?? []).join(', ') || '—' }),
    el('td', { class: 'num', text: fmtInt(m.context_length) }),
    el('td', { class: 'num', text: fmtPrice(m.prices?.input_per_mtok) }),
    el('td', { class: 'num', text: fmtPrice(m.prices?.output_per_mtok) }),
  ]));
  if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: 8, class: 'empty', text: 'No models in the catalog.' })));
  $('catalog-table').tBodies[0].replaceChildren(...rows);
}

function stateCell(m) {
  const badge = el('span', { class: `badge state-${m.state}`, text: m.state ?? '—' });
  return m.reason ? [badge, el('div', { class: 'reason', text: m.reason })] : badge;
}

// ---------- 3b. live runs ----------

async function loadRuns() {
  const body = await api('/admin/runs');
  state.runs = body?.data ?? [];
  state.runsLoaded = true;
  syncRows($('runs-table').tBodies[0], state.runs, 'runId', (r) => r.run_id, fillRunRow);
  $('runs-empty').hidden = state.runs.length > 0;
  if (currentRunId() != null) renderRunLive();
}

// Keyed update: rows that stay keep their DOM nodes, so a button is never swapped under the pointer.
function syncRows(tbody, items, dataKey, keyOf, fill) {
  const wanted = new Set(items.map(keyOf));
  for (const tr of [...tbody.rows]) if (!wanted.has(tr.dataset[dataKey])) tr.remove();
  const existing = new Map([...tbody.rows].map((tr) => [tr.dataset[dataKey], tr]));
  items.forEach((item, i) => {
    const tr = existing.get(keyOf(item)) ?? el('tr', { data: { [dataKey]: keyOf(item) } });
    fill(tr, item);
    if (tbody.rows[i] !== tr) tbody.insertBefore(tr, tbody.rows[i] ?? null);
  });
}

function fillRunRow(tr, run) {
  if (!tr.cells.length) {
    const link = el('a', { href: `#run/${encodeURIComponent(run.run_id)}`, title: run.run_id },
      el('code', { text: shortId(run.run_id) }));
    const cancel = el('button', { type: 'button', class: 'cancel', 'aria-label': `Cancel run ${run.run_id}`, text: 'Cancel' });
    tr.append(el('td', {}, link), el('td'), el('td'), el('td', { class: 'num' }), el('td', { class: 'num' }),
      el('td'), el('td', {}, cancel));
  }
  const [, model, route, tokens, age, meta] = tr.cells;
  model.textContent = run.model ?? '—';
  route.textContent = run.route ?? '—';
  tokens.textContent = fmtInt(run.output_tokens);
  age.textContent = fmtAge(run.age_ms);
  meta.replaceChildren(metadataList(run.metadata));
}

const shortId = (id) => (id.length > 12 ? `${id.slice(0, 10)}…` : id);

function metadataList(metadata) {
  const entries = Object.entries(metadata ?? {});
  if (!entries.length) return el('span', { class: 'muted', text: '—' });
  return el('ul', { class: 'meta' }, entries.map(([k, v]) =>
    el('li', { text: `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}` })));
}

function onCancelClick(ev) {
  const button = ev.target.closest('button.cancel');
  const runId = button?.closest('tr')?.dataset.runId;
  if (runId != null && !button.disabled) cancelRun(runId, button);
}

async function cancelRun(runId, button) {
  button.disabled = true;
  button.textContent = 'Cancelling…';
  try {
    await api(`/admin/runs/${encodeURIComponent(runId)}/cancel`, { method: 'POST' });
    setError('cancel', null);
  } catch (e) {
    // 404: the run already ended; the refresh below drops its row.
    if (e.status !== 404 && e.status !== 401) setError('cancel', `cancel ${runId}: ${e.message}`);
    button.disabled = false;
    button.textContent = 'Cancel';
  }
  await guarded('runs', loadRuns);
  setTimeout(() => poll('runs', loadRuns), 700); // the run ends shortly after the cancel is asked
}

// ---------- 3c. spend & requests ----------

function usageQuery() {
  const range = Number($('range').value);
  const bucket = BUCKET_FOR_RANGE[range] ?? 60;
  const mode = $('group-by').value;
  const key = $('metadata-key').value.trim();
  if (mode === 'metadata' && !key) return null;
  const until = Math.floor(Date.now() / 1000) * 1000;
  // since is aligned to a bucket boundary, so epoch-aligned and since-aligned buckets coincide.
  const since = Math.floor((until / 1000 - range) / bucket) * bucket * 1000;
  return { groupBy: mode === 'metadata' ? `metadata.${key}` : mode, bucket, since, until };
}

async function loadUsage() {
  const q = usageQuery();
  const seq = ++state.usageSeq;
  if (!q) {
    renderUsage({ totals: [], series: [] }, null);
    $('usage-note').textContent = 'Type a metadata key to group by it.';
    return;
  }
  const params = new URLSearchParams({
    group_by: q.groupBy, since: isoSeconds(q.since), until: isoSeconds(q.until), bucket: String(q.bucket),
  });
  const body = await api(`/admin/usage?${params}`);
  if (seq === state.usageSeq) renderUsage(body ?? {}, q);
}

function renderUsage(body, q) {
  const totals = [...(body.totals ?? [])].sort((a, b) => num(b.cost) - num(a.cost) || b.requests - a.requests);
  if (colors.groupBy !== q?.groupBy) Object.assign(colors, { groupBy: q?.groupBy, byKey: new Map() });
  const rows = totals.map((g) => el('tr', { data: { key: g.key ?? '' } }, [
    el('td', { class: g.key == null ? 'muted' : '' }, [swatch(colorFor(g.key)), ` ${keyLabel(g.key)}`]),
    ...['requests', 'failed', 'cancelled', 'cached', 'rejected', 'input_tokens', 'output_tokens']
      .map((f) => el('td', { class: 'num', text: fmtInt(num(g[f])) })),
    el('td', { class: 'num', text: fmtCost(g.cost) }),
  ]));
  $('usage-table').tBodies[0].replaceChildren(...rows);
  $('usage-empty').hidden = rows.length > 0 || !q;
  $('usage-note').textContent = q ? `grouped by ${body.group_by ?? q.groupBy}, ${body.bucket_secs ?? q.bucket} s buckets` : '';
  const slots = q ? bucketSlots(body, q) : null;
  $('cost-chart').replaceChildren(...(slots ? costChart(slots, totals, q) : []));
  $('requests-chart').replaceChildren(...(slots ? requestsChart(slots, q) : []));
}

// One array of groups per bucket between since and until; buckets without records stay empty.
function bucketSlots(body, q) {
  const bucketMs = num(body.bucket_secs || q.bucket) * 1000;
  const n = Math.max(1, Math.ceil((q.until - q.since) / bucketMs));
  const slots = Array.from({ length: n }, () => []);
  for (const b of body.series ?? []) {
    const i = Math.floor((Date.parse(b.start) - q.since) / bucketMs);
    if (i >= 0 && i < n) slots[i].push(...(b.groups ?? []));
  }
  return { slots, n, bucketMs, start: q.since };
}

function costChart(s, totals, q) {
  const order = new Map(totals.map((g, i) => [g.key ?? null, i]));
  const stackTotals = s.slots.map((gs) => gs.reduce((a, g) => a + num(g.cost), 0));
  const f = chartFrame(640, 200, Math.max(0, ...stackTotals), (v) => `$${fmtShort(v)}`);
  timeAxis(f, s, q);
  const bw = f.plotW / s.n;
  s.slots.forEach((groups, i) => {
    let acc = 0;
    const rank = (g) => order.get(g.key ?? null) ?? 1e9;
    for (const g of [...groups].sort((a, b) => rank(a) - rank(b))) {
      const cost = num(g.cost);
      if (cost <= 0) continue;
      const y0 = f.y(acc);
      const y1 = f.y(acc + cost);
      const tip = `${keyLabel(g.key)}: $${cost.toFixed(6)} at ${fmtTick(s.start + i * s.bucketMs, true)}`;
      f.root.append(svg('rect', {
        x: f.left + i * bw + bw * 0.1, y: y1, width: Math.max(bw * 0.8, 1), height: Math.max(y0 - y1, 0.5),
        fill: colorFor(g.key),
      }, svg('title', {}, tip)));
      acc += cost;
    }
  });
  return [f.root, legend(totals.map((g) => ({ label: keyLabel(g.key), color: colorFor(g.key) })))];
}

function requestsChart(s, q) {
  const sum = (groups, field) => groups.reduce((a, g) => a + num(g[field]), 0);
  const sums = s.slots.map((gs) => ({ requests: sum(gs, 'requests'), failed: sum(gs, 'failed'), cached: sum(gs, 'cached') }));
  const f = chartFrame(640, 200, Math.max(0, ...sums.map((x) => x.requests)), fmtShort);
  timeAxis(f, s, q);
  const x = (i) => f.left + ((i + 0.5) * f.plotW) / s.n;
  const series = [['requests', 'Requests'], ['failed', 'Failed'], ['cached', 'Cache hits']];
  for (const [field, label] of series) {
    const points = sums.map((v, i) => [x(i), f.y(v[field])]);
    f.root.append(linePath(points, SERIES_COLORS[field], label));
  }
  return [f.root, legend(series.map(([field, label]) => ({ label, color: SERIES_COLORS[field] })))];
}

// ---------- 3d. model latency ----------

async function loadMetrics() {
  const body = await api('/admin/metrics');
  const t = performance.now();
  const bounds = body?.bucket_bounds_seconds ?? [];
  const models = body?.data ?? [];
  for (const m of models) addMetricsSample(m, bounds, t);
  renderLatency(models.map((m) => m.model).sort());
}

function addMetricsSample(m, bounds, t) {
  let h = state.metrics.get(m.model);
  if (!h) state.metrics.set(m.model, (h = { prev: null, prevT: 0, points: [] }));
  if (h.prev) {
    const point = windowPoint(h.prev, m, bounds, (t - h.prevT) / 1000);
    if (point) h.points.push(point);
    if (h.points.length > MAX_POINTS) h.points.shift();
  }
  h.prev = m;
  h.prevT = t;
}

// One point over the last poll interval; null after a counter reset (daemon restarted).
function windowPoint(prev, cur, bounds, dt) {
  const dTokens = num(cur.generation_tokens_total) - num(prev.generation_tokens_total);
  if (dTokens < 0 || !(dt > 0)) return null;
  const ttft = [prev.time_to_first_token, cur.time_to_first_token];
  return {
    ttft50: percentileMs(...ttft, bounds, 0.5),
    ttft90: percentileMs(...ttft, bounds, 0.9),
    itl50: percentileMs(prev.inter_token_latency, cur.inter_token_latency, bounds, 0.5),
    tps: dTokens / dt,
  };
}

// Upper bound of the bucket where the cumulative delta count crosses q; +Inf reports the last bound.
function percentileMs(prev, cur, bounds, q) {
  const counts = cur?.counts ?? [];
  const deltas = counts.map((c, i) => num(c) - num(prev?.counts?.[i]));
  const total = deltas.reduce((a, b) => a + b, 0);
  if (!(total > 0) || deltas.some((d) => d < 0) || !bounds.length) return null;
  let acc = 0;
  for (let i = 0; i < deltas.length; i++) {
    acc += deltas[i];
    if (acc >= q * total) return bounds[Math.min(i, bounds.length - 1)] * 1000;
  }
  return null;
}

function renderLatency(models) {
  const grid = $('latency-models');
  $('latency-empty').hidden = models.length > 0;
  grid.replaceChildren(...models.map((model) => latencyCard(model, state.metrics.get(model))));
}

function latencyCard(model, h) {
  const m = h.prev;
  const last = h.points[h.points.length - 1];
  const lastMs = (v) => (v == null ? '—' : `${fmtShort(v)} ms`);
  const status = `running ${fmtInt(m.running)} · waiting ${fmtInt(m.waiting)} · KV cache ${(num(m.kv_cache_usage) * 100).toFixed(0)}%`;
  return el('article', { class: 'latency-card', data: { model } }, [
    el('h3', {}, [el('code', { text: model }), el('span', { class: 'muted', text: ` ${status}` })]),
    miniChart(`TTFT p50 ${lastMs(last?.ttft50)} · p90 ${lastMs(last?.ttft90)}`, h.points, [
      { get: (p) => p.ttft50, color: SERIES_COLORS.requests, label: 'TTFT p50 (ms)' },
      { get: (p) => p.ttft90, color: SERIES_COLORS.p90, label: 'TTFT p90 (ms)' },
    ]),
    miniChart(`Inter-token p50 ${lastMs(last?.itl50)}`, h.points, [
      { get: (p) => p.itl50, color: SERIES_COLORS.cached, label: 'Inter-token latency p50 (ms)' },
    ]),
    miniChart(`Throughput ${last ? fmtShort(last.tps) : '—'} tok/s`, h.points, [
      { get: (p) => p.tps, color: SERIES_COLORS.failed, label: 'Throughput (tokens/s)' },
    ]),
  ]);
}


// ---------- 4. run page ----------

function currentRunId() {
  const m = location.hash.match(/^#run\/(.+)$/);
  if (!m) return null;
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return m[1];
  }
}

function renderRunLive() {
  const id = currentRunId();
  const box = $('run-live');
  const run = state.runs.find((r) => r.run_id === id);
  if (!run) {
    if (state.runsLoaded && state.record.runId !== id) {
      state.record = { runId: id, body: undefined, payload: undefined };
      guarded('record', loadRecord);
    }
    box.replaceChildren(...runRecord(state.runsLoaded ? state.record.body : undefined));
    renderPayload(id, state.runsLoaded ? state.record.payload : undefined);
    return;
  }
  renderPayload(id, 'running');
  let tbody = box.querySelector('tbody');
  if (!tbody) {
    const head = ['Run', 'Model', 'Route', 'Tokens', 'Age', 'Metadata', ''].map((t) => el('th', { scope: 'col', text: t }));
    tbody = el('tbody');
    box.replaceChildren(el('table', { class: 'run-live-table' }, [el('thead', {}, el('tr', {}, head)), tbody]));
  }
  syncRows(tbody, [run], 'runId', (r) => r.run_id, fillRunRow);
}

// GET /admin/runs/{id} → {"record": {...}, "payload": {...}} describes a run that ended.
async function loadRecord() {
  const id = state.record.runId;
  let run = null;
  try {
    run = await api(`/admin/runs/${encodeURIComponent(id)}`);
  } catch (e) {
    if (e.status !== 404) throw e;
  } finally {
    if (state.record.runId === id) {
      state.record.body = run?.record ?? null;
      state.record.payload = run?.payload ?? null;
    }
    if (currentRunId() === id) renderRunLive();
  }
}

function runRecord(record) {
  const note = (text) => [el('p', { class: 'muted', text })];
  if (record === undefined) return note('Loading…');
  if (record === null) return note('This run is not running on this daemon now, and it has no stored record.');
  const rows = Object.entries(record).map(([k, v]) => el('tr', {}, [
    el('th', { scope: 'row', text: k }),
    el('td', {}, v != null && typeof v === 'object' ? el('code', { text: JSON.stringify(v) }) : String(v ?? '—')),
  ]));
  return [el('p', {}, ['Not running. Status: ', el('span', { class: `badge state-${record.status}`, text: String(record.status ?? 'unknown') })]),
    el('table', { class: 'record' }, el('tbody', {}, rows))];
}

// `payload`: the stored one, null for none, undefined while loading, 'running' until the end.
function renderPayload(id, payload) {
  const box = $('run-payload');
  if (box.dataset.shown === id && box.dataset.payload === String(payload?.stored_at ?? payload)) return;
  box.dataset.shown = id;
  box.dataset.payload = String(payload?.stored_at ?? payload);
  if (payload === undefined || payload === 'running') {
    const text = payload ? 'A payload, when logging keeps one, is stored once the run ends.' : 'Loading…';
    box.replaceChildren(el('p', { class: 'muted', text }));
    return;
  }
  if (payload === null) {
    box.replaceChildren(el('p', { class: 'empty', text: 'No payload stored for this run. Payloads are kept only with [logging] payloads = true or x-hearth-collect-log-payload: true.' }));
    return;
  }
  const remove = el('button', { type: 'button', class: 'delete-payload', text: 'Delete payload' });
  remove.addEventListener('click', () => guarded('payload', () => deletePayload(id, remove)));
  box.replaceChildren(
    el('p', { class: 'muted', text: `Stored ${new Date(payload.stored_at).toLocaleString()}` }),
    el('h3', { text: 'Request' }),
    el('pre', { class: 'payload-request', text: JSON.stringify(payload.request, null, 2) }),
    el('h3', { text: 'Response' }),
    el('pre', { class: 'payload-response', text: JSON.stringify(payload.response, null, 2) }),
    remove,
  );
}

async function deletePayload(id, button) {
  button.disabled = true;
  try {
    await api(`/admin/runs/${encodeURIComponent(id)}/payload`, { method: 'DELETE' });
  } catch (e) {
    if (e.status !== 404) {
      button.disabled = false;
      throw e;
    }
  }
  if (state.record.runId === id) state.record.payload = null;
  if (currentRunId() === id) renderPayload(id, null);
}

function route() {
  const id = currentRunId();
  $('dashboard-view').hidden = id != null;
  $('run-page').hidden = id == null;
  if (id != null) {
    $('run-title').textContent = id;
    state.record = { runId: null, body: undefined, payload: undefined };
    renderRunLive();
    return;
  }
  const target = location.hash.length > 1 ? document.getElementById(location.hash.slice(1)) : null;
  if (target) target.scrollIntoView();
}

// ---------- 5. scheduler and wiring ----------

function poll(source, load) {
  if (!state.busy.has(source)) guarded(source, load);
}

// The catalog goes first: when it answers 401, the other calls would only fail the same way.
async function refreshAll() {
  await guarded('catalog', loadCatalog);
  if (state.needAuth) return;
  guarded('runs', loadRuns);
  guarded('usage', loadUsage);
  guarded('metrics', loadMetrics);
  state.record.runId = null; // the run page asks for the run's record again if it is not live
}

function tick() {
  if (!$('auto-refresh').checked || state.needAuth || document.hidden) return;
  state.tick += 1;
  poll('runs', loadRuns);
  poll('metrics', loadMetrics);
  if (state.tick % SLOW_EVERY === 0) {
    poll('catalog', loadCatalog);
    poll('usage', loadUsage);
  }
}

let usageTimer = 0;
function usageSoon(delay) {
  clearTimeout(usageTimer);
  usageTimer = setTimeout(() => guarded('usage', loadUsage), delay);
}

function wire() {
  $('token-form').addEventListener('submit', onTokenSubmit);
  $('refresh-now').addEventListener('click', () => refreshAll());
  $('auto-refresh').addEventListener('change', (ev) => { if (ev.target.checked) refreshAll(); });
  document.addEventListener('click', onCancelClick);
  $('range').addEventListener('change', () => usageSoon(0));
  $('group-by').addEventListener('change', (ev) => {
    if (ev.target.value === 'metadata' && !$('metadata-key').value.trim()) $('metadata-key').focus();
    usageSoon(0);
  });
  $('metadata-key').addEventListener('input', (ev) => {
    if (ev.target.value.trim()) $('group-by').value = 'metadata';
    usageSoon(400);
  });
  window.addEventListener('hashchange', route);
}

// Asks the daemon whether its admin API wants a token before calling it, so that a first visit
// shows the token form rather than a refused call.
async function start() {
  wire();
  const config = await fetch('/dashboard/config.json', { cache: 'no-store' })
    .then((res) => (res.ok ? res.json() : {}))
    .catch(() => ({}));
  if (config.token_required && sessionStorage.getItem(TOKEN_KEY) == null) {
    askForToken('');
  } else {
    $('token-form').hidden = true;
    route();
    refreshAll();
  }
  setInterval(tick, FAST_MS);
}

start();
