// The dashboard's one page: plain HTML, CSS and a script that polls
// /snapshot.json every second and redraws. Charts are hand-made SVG, not a
// charting library: hosts and operators' laptops may have no internet (so no
// CDN), the charts are a few lines and dots, and a bundled library would be a
// dependency to keep up for that. Everything the page shows comes from the
// snapshot (run-watch.ts); the page itself reads nothing else and writes nothing.

export function dashboardHtml(run: string): string {
  const title = `caravan: ${run.replace(/[&<>"]/g, '')}`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
${STYLE}</style></head><body>
${SECTIONS.replace('TITLE', title)}<script>
${SCRIPT}</script>
</body></html>`;
}

const STYLE = `body { font: 13px system-ui, sans-serif; margin: 0; color: #222; background: #f6f6f4; }
header { background: #23303d; color: #fff; padding: 10px 16px; display: flex; gap: 24px; align-items: baseline; flex-wrap: wrap; }
header h1 { font-size: 16px; margin: 0; }
header .figure b { font-size: 15px; }
#banner { padding: 8px 16px; background: #b33; color: #fff; display: none; }
#banner.warn { background: #c80; }
main { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 12px; padding: 12px; }
section { background: #fff; border: 1px solid #ddd; border-radius: 4px; padding: 8px 12px; }
section h2 { font-size: 13px; margin: 0 0 6px; color: #555; }
table { border-collapse: collapse; width: 100%; }
td, th { text-align: left; padding: 2px 6px; border-bottom: 1px solid #eee; font-variant-numeric: tabular-nums; }
tr.vacant td { color: #b33; }
ol#events { list-style: none; padding: 0; margin: 0; max-height: 260px; overflow-y: auto; }
ol#events li { padding: 2px 0; border-bottom: 1px solid #f0f0f0; }
.k-host_lost, .k-run_failed, .k-audit_failed, .k-rewind { color: #b33; } .k-slot_reassigned { color: #c60; } .k-bridge_sync { color: #365; } .k-coordinator_restart { color: #849; }
svg text { font-size: 10px; fill: #555; }
.legend span { margin-right: 12px; } .swatch { display: inline-block; width: 10px; height: 10px; margin-right: 4px; vertical-align: middle; }
iframe { width: 100%; height: 420px; border: 0; }
.wide { grid-column: 1 / -1; }
`;

/** The header's figures, the banner, and a section per view: the script fills them. */
const SECTIONS = `<header>
  <h1 id="title">TITLE</h1>
  <span class="figure">status <b id="status">–</b></span>
  <span class="figure">step <b id="step">–</b></span>
  <span class="figure">loss <b id="loss">–</b></span>
  <span class="figure">tokens/s <b id="tps">–</b></span>
  <span class="figure">MFU <b id="mfu">–</b></span>
  <span class="figure">recoveries <b id="recoveries">–</b></span>
</header>
<div id="banner"></div>
<main>
  <section><h2>Loss by step (lines: training, each replica; dots: validation)</h2><div id="loss-chart" data-testid="loss-chart"></div><div class="legend" id="loss-legend"></div></section>
  <section><h2>Tokens/s and MFU by step (replica 0)</h2><div id="speed-chart" data-testid="speed-chart"></div><div class="legend"><span><i class="swatch" style="background:#4c78a8"></i>tokens/s, all replicas (left)</span><span><i class="swatch" style="background:#f58518"></i>MFU % (right)</span></div></section>
  <section><h2>Stage utilization (replica 0) against the schedule's bound</h2><div id="stage-chart" data-testid="stage-chart"></div><p id="bubble"></p></section>
  <section><h2>Slots</h2><table id="slots" data-testid="slots"><thead><tr><th>replica</th><th>stage</th><th>host</th><th>generation</th><th>datacenter</th><th>checkpoint</th><th>status</th></tr></thead><tbody></tbody></table><p id="standbys"></p></section>
  <section class="wide"><h2>Recoveries and Bridge syncs on the run's time axis</h2><div id="event-axis" data-testid="event-axis"></div><ol id="events" data-testid="events"></ol></section>
  <section class="wide" id="timeline-section" style="display:none"><h2>Pipeline timeline of recent steps (from the trace file)</h2><iframe id="timeline" title="timeline"></iframe></section>
</main>
`;

/** Polls /snapshot.json every second and redraws every view from it. */
const SCRIPT = `(() => {
const NS = 'http://www.w3.org/2000/svg';
const COLORS = ['#4c78a8', '#f58518', '#54a24b', '#e45756', '#72b7b2', '#b279a2', '#ff9da6', '#9d755d'];
const $ = (id) => document.getElementById(id);
const el = (name, attrs, text) => { const e = document.createElementNS(NS, name); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); if (text !== undefined) e.textContent = text; return e; };
const fmt = (x, d = 3) => (x === null || x === undefined || !isFinite(x)) ? '–' : (Math.abs(x) >= 1000 ? Math.round(x).toLocaleString('en') : x.toFixed(d));
let lastOk = Date.now(), timelineLoadedAt = 0, timelineSeen = '';

/** A line chart: series of {x, y} (lines, or dots with dots: true), x and y axes with a few ticks. */
function chart(target, series, o = {}) {
  const W = 500, H = 200, L = 46, R = o.right ? 46 : 10, T = 8, B = 22;
  const svg = el('svg', { viewBox: '0 0 ' + W + ' ' + H, width: '100%', 'data-points': String(series.reduce((n, s) => n + s.points.length, 0)) });
  const all = series.filter((s) => !s.axis2).flatMap((s) => s.points);
  const xs = series.flatMap((s) => s.points.map((p) => p.x));
  if (!xs.length) { svg.appendChild(el('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, o.empty || 'no data yet')); target.replaceChildren(svg); return; }
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const range = (pts) => { const ys = pts.map((p) => p.y).filter(isFinite); let a = Math.min(...ys), b = Math.max(...ys); if (!ys.length) { a = 0; b = 1; } if (a === b) { a -= 0.5; b += 0.5; } return [a, b]; };
  const [y0, y1] = range(all), [z0, z1] = range(series.filter((s) => s.axis2).flatMap((s) => s.points));
  const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = (y, a = y0, b = y1) => T + (1 - (y - a) / (b - a)) * (H - T - B);
  svg.appendChild(el('line', { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: '#999' }));
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    svg.appendChild(el('text', { x: L - 4, y: sy(y) + 3, 'text-anchor': 'end' }, fmt(y, 2)));
    svg.appendChild(el('line', { x1: L, y1: sy(y), x2: W - R, y2: sy(y), stroke: '#eee' }));
    if (o.right) svg.appendChild(el('text', { x: W - R + 4, y: sy(z0 + (z1 - z0) * i / 4, z0, z1) + 3 }, fmt(z0 + (z1 - z0) * i / 4, 1)));
  }
  for (let i = 0; i <= 5; i++) { const x = x0 + (x1 - x0) * i / 5; svg.appendChild(el('text', { x: sx(x), y: H - 6, 'text-anchor': 'middle' }, o.xLabel ? o.xLabel(x) : String(Math.round(x)))); }
  for (const s of series) {
    const Y = (y) => s.axis2 ? sy(y, z0, z1) : sy(y);
    const pts = s.points.filter((p) => isFinite(p.y));
    if (s.dots) for (const p of pts) svg.appendChild(el('circle', { cx: sx(p.x), cy: Y(p.y), r: 3.5, fill: s.color, class: 'dot ' + (s.cls || '') }));
    else if (pts.length) svg.appendChild(el('polyline', { points: pts.map((p) => sx(p.x) + ',' + Y(p.y)).join(' '), fill: 'none', stroke: s.color, 'stroke-width': 1.6, class: 'line ' + (s.cls || ''), 'data-points': String(pts.length) }));
  }
  target.replaceChildren(svg);
}

function stageBars(target, m, bound) {
  const W = 500, H = 200, L = 46, T = 8, B = 22;
  const svg = el('svg', { viewBox: '0 0 ' + W + ' ' + H, width: '100%' });
  if (!m) { svg.appendChild(el('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'no step measured yet')); target.replaceChildren(svg); return; }
  const u = m.utilization_by_stage, n = u.length, bw = (W - L - 10) / n;
  const sy = (y) => T + (1 - y) * (H - T - B);
  for (let i = 0; i <= 4; i++) { svg.appendChild(el('text', { x: L - 4, y: sy(i / 4) + 3, 'text-anchor': 'end' }, (25 * i) + '%')); svg.appendChild(el('line', { x1: L, y1: sy(i / 4), x2: W - 10, y2: sy(i / 4), stroke: '#eee' })); }
  u.forEach((v, s) => {
    svg.appendChild(el('rect', { x: L + s * bw + 2, y: sy(v), width: bw - 4, height: sy(0) - sy(v), fill: '#4c78a8', class: 'stage-bar' }));
    svg.appendChild(el('text', { x: L + s * bw + bw / 2, y: H - 6, 'text-anchor': 'middle' }, 'stage ' + s));
  });
  const best = 1 - bound;
  svg.appendChild(el('line', { x1: L, y1: sy(best), x2: W - 10, y2: sy(best), stroke: '#e45756', 'stroke-dasharray': '4 3' }));
  svg.appendChild(el('text', { x: W - 12, y: sy(best) - 3, 'text-anchor': 'end' }, 'schedule bound ' + (100 * best).toFixed(1) + '%'));
  target.replaceChildren(svg);
}

function eventAxis(target, events, state, now) {
  const W = 1000, H = 60, L = 10, R = 10;
  const svg = el('svg', { viewBox: '0 0 ' + W + ' ' + H, width: '100%' });
  const t0 = Math.min(state && state.started_at || now, ...events.map((e) => e.from || e.t)), t1 = Math.max(now, ...events.map((e) => e.t));
  const sx = (t) => L + (t - t0) / Math.max(t1 - t0, 1) * (W - L - R);
  svg.appendChild(el('line', { x1: L, y1: 30, x2: W - R, y2: 30, stroke: '#999' }));
  for (const e of events) {
    const color = { host_lost: '#b33', slot_reassigned: '#c60', bridge_sync: '#365', coordinator_restart: '#849', run_failed: '#b33', audit_failed: '#b33', rewind: '#b33' }[e.kind] || '#555';
    if (e.kind === 'bridge_sync') svg.appendChild(el('rect', { x: sx(e.from), y: 36, width: Math.max(2, sx(e.t) - sx(e.from)), height: 8, fill: color, class: 'event ' + e.kind }));
    else svg.appendChild(el('circle', { cx: sx(e.t), cy: 24, r: 5, fill: color, class: 'event ' + e.kind }, undefined));
  }
  for (let i = 0; i <= 5; i++) { const t = t0 + (t1 - t0) * i / 5; svg.appendChild(el('text', { x: sx(t), y: 56, 'text-anchor': i === 0 ? 'start' : i === 5 ? 'end' : 'middle' }, '+' + ((t - t0) / 1000).toFixed(0) + ' s')); }
  target.replaceChildren(svg);
}

function banner(text, warn) {
  const b = $('banner');
  b.textContent = text || '';
  b.className = warn ? 'warn' : '';
  b.style.display = text ? 'block' : 'none';
}

function render(s) {
  const st = s.state || {}, last = s.metrics[s.metrics.length - 1], sum = s.summary;
  if (!s.known) banner('No run ' + s.run + ' on ' + s.nats.url + (s.nats.error ? ' (' + s.nats.error + ')' : '') + ': waiting for it to be created.', true);
  else if (!s.nats.connected) banner('NATS connection lost ' + Math.round((s.now - s.nats.since) / 1000) + ' s ago' + (s.nats.error ? ' (' + s.nats.error + ')' : '') + ': showing what was read before; reconnecting.', false);
  else banner('');
  $('status').textContent = st.status || (s.known ? 'unknown' : 'no such run');
  $('step').textContent = s.config ? (st.step ?? 0) + ' / ' + s.config.steps : (st.step ?? '–');
  $('loss').textContent = fmt(st.loss, 4);
  $('tps').textContent = fmt(sum ? sum.tokens_per_s : st.tokens_per_s, 0);
  $('mfu').textContent = (sum && sum.mfu_pct !== undefined ? fmt(sum.mfu_pct, 1) : last ? fmt(last.mfu_pct, 1) : '–') + '%';
  const r = st.recoveries;
  $('recoveries').textContent = r ? r.hosts_lost + ' lost, ' + r.slots_reassigned + ' reassigned, ' + r.coordinator_restarts + ' coordinator' : '–';

  const replicas = [...new Set(s.losses.map((p) => p.replica))];
  const lossSeries = replicas.map((rep, i) => ({ color: COLORS[i % COLORS.length], cls: 'train replica-' + rep, points: s.losses.filter((p) => p.replica === rep && p.loss !== null).map((p) => ({ x: p.step + 1, y: p.loss })) }));
  lossSeries.push({ color: '#222', dots: true, cls: 'validation', points: s.validation.points.map((p) => ({ x: p.step, y: p.loss })) });
  chart($('loss-chart'), lossSeries, { empty: 'no step committed yet' });
  $('loss-legend').innerHTML = replicas.map((rep, i) => '<span><i class="swatch" style="background:' + COLORS[i % COLORS.length] + '"></i>replica ' + rep + '</span>').join('') +
    '<span><i class="swatch" style="background:#222;border-radius:5px"></i>validation' + (s.validation.batches ? ' (' + s.validation.batches + ' held-out batches)' : ': off') + (s.validation.error ? ' – ' + s.validation.error : '') + '</span>';
  chart($('speed-chart'), [
    { color: '#4c78a8', cls: 'tokens', points: s.metrics.map((m) => ({ x: m.step + 1, y: m.tokens_per_s })) },
    { color: '#f58518', cls: 'mfu', axis2: true, points: s.metrics.map((m) => ({ x: m.step + 1, y: m.mfu_pct })) },
  ], { right: true, empty: 'no step measured yet' });
  const use = sum && sum.utilization_by_stage ? sum : last;
  stageBars($('stage-chart'), use, use ? use.bubble_bound : 0);
  $('bubble').textContent = use ? 'bubble ' + (100 * use.bubble).toFixed(1) + '% (' + ((s.config && s.config.schedule) || '') + ' bound ' + (100 * use.bubble_bound).toFixed(1) + '%)' + (sum ? ', whole run' : ', as of step ' + (use.step + 1)) : '';

  const tbody = $('slots').querySelector('tbody');
  tbody.replaceChildren(...s.slots.map((x) => {
    const tr = document.createElement('tr');
    tr.className = x.status;
    for (const v of [x.replica, x.stage, x.host, x.generation, x.datacenter || '–', x.checkpoint_step === null ? 'none' : 'after step ' + x.checkpoint_step, x.status === 'vacant' ? 'VACANT: waiting for a host' : 'holding']) {
      const td = document.createElement('td'); td.textContent = String(v); tr.appendChild(td);
    }
    return tr;
  }));
  const standbys = s.hosts.filter((h) => h.status === 'standby').map((h) => h.host);
  $('standbys').textContent = 'standbys: ' + (standbys.length ? standbys.join(', ') : 'none');

  eventAxis($('event-axis'), s.events, s.state, s.now);
  const t0 = st.started_at || (s.events[0] && s.events[0].t) || s.now;
  $('events').replaceChildren(...s.events.slice().reverse().map((e) => {
    const li = document.createElement('li');
    li.className = 'k-' + e.kind;
    li.dataset.kind = e.kind;
    li.textContent = '+' + ((e.t - t0) / 1000).toFixed(1) + ' s  ' + e.text;
    return li;
  }));
  if (s.timeline) {
    $('timeline-section').style.display = '';
    // The trace file grows with the run: redrawn after the run moved on (at most every 5 s), and every 15 s anyway, as late spans arrive.
    const seen = (st.status || '') + '/' + (st.step ?? '');
    const since = Date.now() - timelineLoadedAt;
    if ((since > 5000 && seen !== timelineSeen) || since > 15000) { $('timeline').src = 'timeline?t=' + Date.now(); timelineLoadedAt = Date.now(); timelineSeen = seen; }
  }
  document.body.dataset.updated = String(s.now);
}

async function poll() {
  try {
    const res = await fetch('snapshot.json', { cache: 'no-store' });
    if (!res.ok) throw new Error('HTTP ' + res.status);
    render(await res.json());
    lastOk = Date.now();
  } catch (err) {
    banner('The dashboard server does not answer (' + err.message + ') since ' + Math.round((Date.now() - lastOk) / 1000) + ' s: the page shows its last update.', false);
  }
  setTimeout(poll, 1000);
}
poll();
})();
`;
