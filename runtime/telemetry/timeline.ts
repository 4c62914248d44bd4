// The pipeline schedule drawn from a run's spans, as pipeline-parallelism
// papers draw it: one row per (replica, stage), one box per forward and
// backward of each microbatch (F, and B and W where the schedule splits the
// backward), queue waits as thin bars, frame transfers as lines from the
// sender's publish to the receiver's consume, work of a redone attempt faded,
// and the bubble (the fraction of stage time spent not computing) beside the
// least the run's schedule allows. One self-contained HTML page: the data is embedded as JSON
// and a small script draws the SVG, so a browser renders it offline.
import { pipelineSchedule, scheduleNames, type ScheduleName } from '../../actors/pipeline-schedule.ts';
import { steadyStateUtilization } from '../../actors/schedule-simulation.ts';
import type { SpanRecord } from './span-file.ts';

export type TimelineKind = 'forward' | 'backward' | 'backward-input' | 'backward-weight' | 'queue';

export interface TimelineBox {
  readonly kind: TimelineKind;
  readonly replica: number;
  readonly stage: number;
  readonly step: number;
  readonly microbatch: number;
  /** The step's attempt; a box of an attempt that was redone later is `voided` (its step before was rolled back). */
  readonly attempt: number;
  readonly voided: boolean;
  readonly start: number;  // ms from the first compute span
  readonly end: number;
}

export interface TimelineTransfer {
  readonly replica: number;
  readonly from: number;
  readonly to: number;
  readonly sent: number;
  readonly received: number;
}

export interface Timeline {
  readonly rows: Array<{ replica: number; stage: number; busyMs: number }>;
  readonly boxes: TimelineBox[];
  readonly transfers: TimelineTransfer[];
  readonly spanMs: number;
  readonly bubble: number;          // 1 − busy / (rows × span)
  /** The least bubble the run's schedule allows with equal op costs (the trace carries no costs). */
  readonly bubbleBound: number;
  readonly schedule: ScheduleName;
  readonly stages: number;
  readonly microbatchesPerStep: number;
}

const num = (v: unknown) => (typeof v === 'number' ? v : Number(v));
const WORK: readonly string[] = ['forward', 'backward', 'backward-input', 'backward-weight'];

export function buildTimeline(spans: readonly SpanRecord[]): Timeline {
  const compute = spans.filter((s) => WORK.includes(s.name) || s.name === 'queue');
  const work = compute.filter((s) => s.name !== 'queue');
  if (work.length === 0) throw new Error('no forward or backward spans in the trace file: was the run traced (caravan train --trace-file)?');
  const t0 = Math.min(...work.map((s) => s.start));
  const t1 = Math.max(...work.map((s) => s.end));
  const at = (s: SpanRecord) => ({
    replica: num(s.attributes['caravan.replica']), stage: num(s.attributes['caravan.stage']),
    step: num(s.attributes['caravan.step']), microbatch: num(s.attributes['caravan.microbatch']), attempt: num(s.attributes['caravan.attempt'] ?? 0),
  });
  // An attempt is voided where the same stage ran a later attempt of the same step.
  const latest = new Map<string, number>();
  const key = (b: { replica: number; stage: number; step: number }) => `${b.replica}/${b.stage}/${b.step}`;
  for (const s of work) { const a = at(s); latest.set(key(a), Math.max(latest.get(key(a)) ?? 0, a.attempt)); }
  const boxes: TimelineBox[] = compute.map((s) => {
    const a = at(s);
    return { kind: s.name as TimelineKind, ...a, voided: a.attempt < (latest.get(key(a)) ?? 0), start: s.start - t0, end: s.end - t0 };
  });
  const rowKey = (r: number, s: number) => `${r}/${s}`;
  const busy = new Map<string, number>();
  for (const b of boxes) if (b.kind !== 'queue') busy.set(rowKey(b.replica, b.stage), (busy.get(rowKey(b.replica, b.stage)) ?? 0) + (b.end - b.start));
  const rows = [...busy.entries()].map(([k, busyMs]) => {
    const [replica, stage] = k.split('/').map(Number);
    return { replica, stage, busyMs };
  }).sort((a, b) => a.replica - b.replica || a.stage - b.stage);
  const byId = new Map(spans.map((s) => [s.spanId, s]));
  const transfers: TimelineTransfer[] = [];
  for (const s of spans) {
    if (s.name !== 'consume' || !s.parentSpanId) continue;
    const p = byId.get(s.parentSpanId);
    if (!p || p.name !== 'publish') continue;
    transfers.push({ replica: num(s.attributes['caravan.replica']), from: num(p.attributes['caravan.stage']), to: num(s.attributes['caravan.stage']), sent: p.start - t0, received: s.start - t0 });
  }
  const stages = new Set(rows.map((r) => r.stage)).size;
  const perStep = new Map<string, Set<number>>();
  for (const b of boxes) if (b.kind === 'forward') perStep.set(`${b.replica}/${b.step}`, (perStep.get(`${b.replica}/${b.step}`) ?? new Set()).add(b.microbatch));
  const M = Math.max(...[...perStep.values()].map((s) => s.size));
  const spanMs = t1 - t0;
  const bubble = 1 - rows.reduce((sum, r) => sum + r.busyMs, 0) / (rows.length * spanMs);
  const named = spans.find((s) => s.name === 'microbatch' && typeof s.attributes['caravan.schedule'] === 'string')?.attributes['caravan.schedule'];
  const schedule = scheduleNames.find((n) => n === named) ?? '1f1b';
  const lists = pipelineSchedule(schedule, { stages, microbatches: M });
  const bound = steadyStateUtilization(lists, undefined, schedule === '1f1b' ? 'flush' : 'no-flush');
  return { rows, boxes, transfers, spanMs, bubble, bubbleBound: 1 - bound, schedule, stages, microbatchesPerStep: M };
}

const esc = (s: string) => s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);

export function timelineHtml(t: Timeline, title: string): string {
  const data = JSON.stringify(t).replace(/</g, '\\u003c');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>
body { font: 13px system-ui, sans-serif; margin: 16px; color: #222; }
.forward { fill: #4c78a8; } .backward, .backward-input { fill: #e45756; } .backward-weight { fill: #54a24b; } .queue { fill: #ccc; }
.voided { opacity: 0.3; }
.transfer { stroke: #999; stroke-width: 0.7; } text { font-size: 11px; }
</style></head><body>
<h1 style="font-size:16px">${esc(title)}</h1>
<p id="summary"></p>
<div id="chart"></div>
<p>Rows: (replica, stage). Blue: forward (F), red: backward (BW, or its input half B), green: the backward's weight half (W), labelled step.microbatch; faded: work of an attempt that was redone after a roll-back; grey: waiting in the queue; lines: frames between stages (publish → consume).</p>
<script>
(() => {
const T = ${data};
const NS = 'http://www.w3.org/2000/svg';
const rowH = 28, left = 110, width = 1200, top = 10;
const x = (ms) => left + (ms / T.spanMs) * (width - left - 10);
const rowOf = new Map(T.rows.map((r, i) => [r.replica + '/' + r.stage, i]));
const y = (replica, stage) => top + rowOf.get(replica + '/' + stage) * rowH;
const svg = document.createElementNS(NS, 'svg');
svg.setAttribute('width', width);
svg.setAttribute('height', top + T.rows.length * rowH + 30);
const el = (name, attrs, text) => {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  svg.appendChild(e);
  return e;
};
T.rows.forEach((r) => el('text', { x: 4, y: y(r.replica, r.stage) + 17 }, 'replica ' + r.replica + ' stage ' + r.stage));
for (const b of T.boxes) {
  if (!rowOf.has(b.replica + '/' + b.stage)) continue;
  const h = b.kind === 'queue' ? 4 : rowH - 6;
  const yy = y(b.replica, b.stage) + (b.kind === 'queue' ? rowH - 6 : 2);
  el('rect', { class: b.kind + (b.voided ? ' voided' : ''), x: x(b.start), y: yy, width: Math.max(1, x(b.end) - x(b.start)), height: h,
    'data-kind': b.kind, 'data-replica': b.replica, 'data-stage': b.stage, 'data-step': b.step, 'data-mb': b.microbatch, 'data-attempt': b.attempt });
  const letter = { forward: 'F', backward: 'BW', 'backward-input': 'B', 'backward-weight': 'W' }[b.kind];
  if (letter && x(b.end) - x(b.start) > 30) el('text', { x: x(b.start) + 2, y: yy + 15, fill: '#fff' }, letter + ' ' + b.step + '.' + b.microbatch);
}
for (const f of T.transfers) {
  if (!rowOf.has(f.replica + '/' + f.from) || !rowOf.has(f.replica + '/' + f.to)) continue;
  el('line', { class: 'transfer', x1: x(f.sent), y1: y(f.replica, f.from) + rowH / 2, x2: x(f.received), y2: y(f.replica, f.to) + rowH / 2 });
}
el('text', { x: left, y: top + T.rows.length * rowH + 20 }, '0 ms');
el('text', { x: width - 80, y: top + T.rows.length * rowH + 20 }, Math.round(T.spanMs) + ' ms');
document.getElementById('chart').appendChild(svg);
document.getElementById('summary').textContent = 'bubble ' + (100 * T.bubble).toFixed(1) + '% of stage time (' + T.schedule + ' bound for S=' + T.stages +
  ', M=' + T.microbatchesPerStep + ' with equal op costs: ' + (100 * T.bubbleBound).toFixed(1) + '%), over ' + Math.round(T.spanMs) + ' ms';
})();
</script></body></html>
`;
}
