// A run's metrics through the OpenTelemetry metrics API: a 3-stage pipeline
// over NATS whose coordinator exports OTLP/HTTP (JSON) to a receiver this
// test runs. The exports come while the run goes on (the step moves), and
// their last values are the run's: tokens/s, MFU, bubble beside its bound,
// each stage's utilization and queue, bytes and frames on every edge in both
// directions (fp32 bytes exactly what the frames' shapes say), and no
// recovery events. `caravan status` shows the same figures from the run's KV
// state. The pure arithmetic of live-metrics.ts is checked on its own.
import test from 'ava';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { liveMetrics, mfuPercent, NO_RECOVERIES, pipelineUse } from '../../runtime/coordinator/live-metrics.ts';
import { scheduleUse } from '../../runtime/config/run-schedule.ts';
import type { StageCounters } from '../../schemas/control-messages.ts';
import { createLogger } from '../../runtime/log.ts';
import { initRunMetrics, metricsConfigured } from '../../runtime/telemetry/metrics.ts';
import { trainDistributed } from '../../runtime/train/train-distributed.ts';
import { trainFlopsPerToken } from '../../schemas/model-flops.ts';
import { formatStatus } from '../../runtime/cli/status-command.ts';
import { caravan } from '../support/caravan-cli.ts';
import { otlpReceiver, withEnv } from '../support/otlp-receiver.ts';

interface Point { name: string; value: number; attributes: Record<string, string | number>; time: bigint; resource: Record<string, string> }

type AnyValue = { stringValue?: string; intValue?: number | string; doubleValue?: number };
type KeyValue = { key: string; value: AnyValue };
const attrs = (list: KeyValue[] = []) => Object.fromEntries(list.map((a) => [a.key, a.value.stringValue ?? Number(a.value.intValue ?? a.value.doubleValue)]));

/** Every data point of every gauge and sum in OTLP/JSON metrics exports. */
function pointsOf(bodies: unknown[]): Point[] {
  const out: Point[] = [];
  for (const body of bodies as Array<{ resourceMetrics: Array<{ resource: { attributes: KeyValue[] }; scopeMetrics: Array<{ metrics: Array<Record<string, unknown>> }> }> }>) {
    for (const rm of body.resourceMetrics) {
      const resource = attrs(rm.resource.attributes) as Record<string, string>;
      for (const sm of rm.scopeMetrics) {
        for (const m of sm.metrics) {
          const data = (m.gauge ?? m.sum) as { dataPoints: Array<{ asDouble?: number; asInt?: number | string; attributes?: KeyValue[]; timeUnixNano: string }> } | undefined;
          for (const p of data?.dataPoints ?? []) {
            out.push({ name: m.name as string, value: Number(p.asDouble ?? p.asInt), attributes: attrs(p.attributes), time: BigInt(p.timeUnixNano), resource });
          }
        }
      }
    }
  }
  return out;
}

test.serial('the coordinator exports the run\'s metrics over OTLP while it runs, and status shows the same figures', async (t) => {
  const receiver = await otlpReceiver();
  t.teardown(() => receiver.close());
  withEnv(t, { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_METRIC_EXPORT_INTERVAL: '200', OTEL_TRACES_EXPORTER: 'none' });
  const steps = 6, S = 3, M = 2, B = 2, T = 32;
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { steps, stages: S, microbatches: M, seqLen: T, batchSize: B } } });
  let url = '';
  const summary = await trainDistributed({
    config, run: 'metered', log: createLogger('test', 'silent'),
    onFinished: async (info) => {
      url = info.url;
      const status = await caravan(['status', '--nats', url, '--run', 'metered', '--json']);
      t.is(status.code, 0, status.stderr);
      const state = JSON.parse(status.stdout).state;
      t.is(state.metrics.step, steps - 1, 'the live figures are those after the last step');
      t.deepEqual(state.metrics.edges.map((e: { edge: string }) => e.edge), ['0-1', '1-2']);
      t.is(state.metrics.queued_by_stage.length, S);
      t.deepEqual(state.recoveries, NO_RECOVERIES);
      // Each host measured its training speed for the run's model before it registered (host/speed-probe.ts).
      const hosts = JSON.parse(status.stdout).hosts as Array<{ host: string; tflops?: number }>;
      t.true(hosts.length >= S && hosts.every((h) => typeof h.tflops === 'number' && h.tflops > 0), JSON.stringify(hosts));
      const text = await caravan(['status', '--nats', url, '--run', 'metered']);
      t.regex(text.stdout, /^ {2}\S+ {2}assigned {2}replica 0 stage 0 {2}\S+ {2}[\d.]+ [TG]FLOP\/s measured$/m);
      t.regex(text.stdout, /stages busy \(replica 0, whole run\): [\d.]+% [\d.]+% [\d.]+%; bubble/);
      t.regex(text.stdout, /recovery: 0 hosts lost, 0 slots handed to standbys, 0 coordinator restarts/);
    },
  });
  t.is(summary.steps, steps);

  const metricExports = receiver.requests.filter((r) => r.path === 'POST /v1/metrics');
  t.true(metricExports.every((r) => r.contentType === 'application/json'));
  const points = pointsOf(metricExports.map((r) => r.json));
  t.true(points.length > 0, 'metrics arrived');
  t.true(points.every((p) => p.resource['service.name'] === 'caravan-coordinator' && p.resource['caravan.run'] === 'metered'));
  const last = (name: string, match: Record<string, string | number> = {}) => {
    const ps = points.filter((p) => p.name === name && Object.entries(match).every(([k, v]) => p.attributes[k] === v));
    t.true(ps.length > 0, `${name} ${JSON.stringify(match)} was exported`);
    return ps.reduce((a, b) => (b.time >= a.time ? b : a)).value;
  };
  // Live: exports while the run went on saw the step move.
  const stepsSeen = new Set(points.filter((p) => p.name === 'caravan.run.step').map((p) => p.value));
  t.true(stepsSeen.size >= 2, `steps seen in exports: ${[...stepsSeen].join(', ')}`);
  t.is(last('caravan.run.step'), steps);
  t.is<number | null, number | null>(last('caravan.run.loss'), summary.final_loss);
  t.true(last('caravan.run.tokens_per_second') > 0);
  t.true(last('caravan.run.mfu') > 0 && last('caravan.run.mfu') < 100);
  t.is(last('caravan.pipeline.bubble_bound'), 1 - scheduleUse(config).bound, "the least bubble the run's schedule allows");
  t.true(last('caravan.pipeline.bubble_bound') < (S - 1) / (M + S - 1), 'zb-h2 (the default) allows less than 1F1B');
  const bubble = last('caravan.pipeline.bubble');
  t.true(bubble >= 0 && bubble < 1, `bubble ${bubble}`);
  for (let s = 0; s < S; s++) {
    const u = last('caravan.stage.utilization', { 'caravan.stage': s });
    t.true(u > 0 && u <= 1, `stage ${s} utilization ${u}`);
    t.true(last('caravan.stage.queued_frames', { 'caravan.stage': s }) >= 0);
  }
  // Every frame across every edge, both ways: steps × M frames of [B, T, d] fp32 each (and those of redone attempts).
  const frameBytes = B * T * config.model.dModel * 4;
  for (const edge of ['0-1', '1-2']) {
    for (const direction of ['act', 'grad']) {
      // A step redone after a roll-back sends its frames again.
      const frames = last('caravan.edge.frames', { 'caravan.edge': edge, 'caravan.direction': direction });
      if (summary.rolled_back_steps?.length === 0) t.is(frames, steps * M, `${edge} ${direction} frames`);
      else t.true(frames >= steps * M, `${edge} ${direction} frames`);
      t.is(last('caravan.edge.bytes', { 'caravan.edge': edge, 'caravan.direction': direction, 'caravan.encoding': 'f32' }), frames * frameBytes);
      const wire = last('caravan.edge.bytes', { 'caravan.edge': edge, 'caravan.direction': direction, 'caravan.encoding': 'wire' });
      t.true(wire > 0.5 * steps * M * frameBytes, `${edge} ${direction}: ${wire} bytes on the wire`);
    }
  }
  for (const event of ['host_lost', 'slot_reassigned', 'coordinator_restart']) t.is(last('caravan.recovery.events', { 'caravan.event': event }), 0);
});

test('metrics are off without an endpoint or with OTEL_METRICS_EXPORTER=none; bad settings are refused by name', async (t) => {
  t.false(metricsConfigured({}));
  t.false(metricsConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://x', OTEL_METRICS_EXPORTER: 'none' }));
  t.true(metricsConfigured({ OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: 'http://x/v1/metrics' }));
  const off = initRunMetrics({ service: 's', run: 'r' }, () => ({ step: 0, loss: null, tokens_per_s: null }), {});
  t.false(off.enabled);
  await off.shutdown();
  const env = { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:1' };
  t.throws(() => initRunMetrics({ service: 's', run: 'r' }, () => ({ step: 0, loss: null, tokens_per_s: null }), { ...env, OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }), { message: /http\/protobuf or http\/json/ });
  t.throws(() => initRunMetrics({ service: 's', run: 'r' }, () => ({ step: 0, loss: null, tokens_per_s: null }), { ...env, OTEL_METRIC_EXPORT_INTERVAL: 'soon' }), { message: /OTEL_METRIC_EXPORT_INTERVAL=soon/ });
  // A collector that is down does not hold the run: shutdown gives up within its bound.
  const down = initRunMetrics({ service: 's', run: 'r' }, () => ({ step: 1, loss: 2, tokens_per_s: 3 }), env);
  const began = Date.now();
  await down.shutdown();
  t.true(Date.now() - began < 6000);
});

test('live metrics: utilization over the common window, bubble beside the schedule\'s bound, MFU over summed peaks, edges both ways', (t) => {
  const model = { vocabSize: 256, dModel: 128, nLayers: 4, nHeads: 4, nKvHeads: 2, ffnHidden: 352, maxSeqLen: 128, ropeTheta: 10000, normEps: 1e-5, tiedEmbeddings: false };
  const wire = (frames: number) => ({ frames, f32_bytes: frames * 100, wire_bytes: frames * 60 });
  const stage = (busy: number, first: number, last: number, act: number, grad: number, queued: number): StageCounters => ({
    compute: { busy_ms: busy, first_ms: first, last_ms: last, peak_gflops: 50, device: 'cpu' }, sent_by_kind: { act: wire(act), grad: wire(grad) }, queued,
  });
  const counters = new Map([['0.0', stage(600, 1000, 2000, 8, 0, 1)], ['0.1', stage(500, 1100, 1900, 0, 8, 3)]]);
  const common = { stages: 2, schedule: { name: '1f1b', bound: 0.8 }, model, seqLen: 128, step: 3, tokensPerS: 1000, recoveries: NO_RECOVERIES };
  t.is(liveMetrics({ ...common, counters: new Map([['0.0', counters.get('0.0')!]]) }), undefined, 'not until every stage of replica 0 reported');
  const m = liveMetrics({ ...common, counters })!;
  t.deepEqual(m.utilization_by_stage, [0.6, 0.5]);
  t.is(m.bubble, 1 - 1.1 / 2);
  t.is(m.bubble_bound, 1 - 0.8);
  t.deepEqual(pipelineUse([counters.get('0.0')!.compute, counters.get('0.1')!.compute], { name: '1f1b', bound: 0.8 }), {
    utilization_by_stage: [0.6, 0.5], bubble: m.bubble, bubble_bound: 1 - 0.8, schedule: '1f1b', peak_stash_bytes_by_stage: [0, 0],
  });
  t.is(m.mfu_pct, (100 * 1000 * trainFlopsPerToken(model, 128)) / (100 * 1e9));
  t.is(m.mfu_pct, mfuPercent(1000, model, 128, [50, 50]));
  t.deepEqual(m.edges, [{ edge: '0-1', act: wire(8), grad: wire(8) }]);
  t.deepEqual(m.queued_by_stage, [1, 3]);
  t.deepEqual(m.devices_by_stage, ['cpu', 'cpu']);
});

test('status while a run goes on shows the live figures: busy stages, edges both ways, waiting frames, recoveries', (t) => {
  const wire = (frames: number) => ({ frames, f32_bytes: frames * 1e6, wire_bytes: frames * 5e5 });
  const text = formatStatus({
    run: 'r1', hosts: [], slots: [], summary: null, dead_letters: { count: 0, recent: [] },
    bridge: [{ stage: 0, outer: 3, replicas: [0, 1], ms: 412 }, { stage: 1, outer: 2, replicas: [0], ms: 1503 }],
    state: {
      status: 'running', step: 4, loss: 2.5, tokens_per_s: 1234.4, started_at: null, updated: '',
      recoveries: { hosts_lost: 2, slots_reassigned: 2, coordinator_restarts: 1 },
      metrics: {
        step: 3, tokens_per_s: 1234.4, utilization_by_stage: [0.5, 0.25], bubble: 0.625, bubble_bound: 0.2, schedule: '1f1b', peak_stash_bytes_by_stage: [2e6, 1e6], mfu_pct: 12.34, devices_by_stage: ['NVIDIA H100 80GB HBM3', 'cpu'],
        edges: [{ edge: '0-1', act: wire(8), grad: wire(6) }], queued_by_stage: [0, 3], recoveries: { hosts_lost: 2, slots_reassigned: 2, coordinator_restarts: 1 },
      },
    },
  });
  t.regex(text, /^run r1: running, step 4, loss 2\.5000, 1234 tok\/s$/m);
  t.regex(text, /^stages busy \(replica 0, as of step 3\): 50\.0% 25\.0%; bubble 62\.5% \(1f1b bound 20\.0%\); peak activation stash by stage 2\.00 MB 1\.00 MB; MFU 12\.3% of the hosts' peak \(bf16 tensor-core peak of NVIDIA H100 80GB HBM3; measured fp32 sgemm of the CPU hosts\)$/m);
  t.regex(text, /^ {2}edge 0-1: activations 8 frames 4\.00 MB, gradients 6 frames 3\.00 MB on the wire$/m);
  t.regex(text, /^ {2}frames waiting by stage: 0 3$/m);
  t.regex(text, /^recovery: 2 hosts lost, 2 slots handed to standbys, 1 coordinator restarts$/m);
  t.regex(text, /^bridge: outer step 2; last sync by stage: 412 ms \(outer 3, replicas 0,1\); 1503 ms \(outer 2, replicas 0\)$/m);
});

test('status names a vacant slot: its host was lost and no standby was left to take it', (t) => {
  const host = (name: string, status: 'assigned' | 'lost', stage: number) => ({ host: name, datacenter: 'dc-0', status, joined: '', replica: 0, stage });
  const text = formatStatus({
    run: 'r2', summary: null, dead_letters: { count: 0, recent: [] }, bridge: [],
    hosts: [host('vm-1', 'assigned', 0), host('vm-2', 'lost', 1)],
    slots: [{ replica: 0, stage: 0, host: 'vm-1', generation: 1 }, { replica: 0, stage: 1, host: 'vm-2', generation: 2 }],
    state: { status: 'running', step: 3, loss: 2.5, tokens_per_s: 10, started_at: null, updated: '' },
  });
  t.regex(text, /^ {2}replica 0 stage 1 {2}vm-2 {2}generation 2 {2}checkpoint none {2}VACANT: its host was lost and no standby was left; the next host to join takes it$/m);
  t.regex(text, /^ {2}replica 0 stage 0 {2}vm-1 {2}generation 1 {2}checkpoint none$/m, 'a held slot is not vacant');
});
