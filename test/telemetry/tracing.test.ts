// One trace per microbatch across hosts and datacenters: a 4-stage pipeline
// whose hosts are labelled as two datacenters exports its spans over
// OTLP/HTTP (JSON) to a receiver this test runs (a real HTTP server decoding
// the OTLP payload with the decoder caravan timeline uses), and every microbatch comes back as exactly one trace
// with forward and backward (input and weight halves) spans of all 4 stages, parented across the NATS
// hops, with byte counts on the spans that send frames.
import test from 'ava';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { createLogger } from '../../runtime/log.ts';
import { trainDistributed } from '../../runtime/train/train-distributed.ts';
import { spansOfOtlpJson, type SpanRecord } from '../../runtime/telemetry/span-file.ts';
import { initTracing, traceContext, traceHeaders, tracingConfigured } from '../../runtime/telemetry/tracing.ts';
import { otlpReceiver, withEnv } from '../support/otlp-receiver.ts';

test.serial('every microbatch is one trace across 4 stages, two hosts and two datacenters, parented across NATS hops', async (t) => {
  const receiver = await otlpReceiver();
  t.teardown(() => receiver.close());
  withEnv(t, { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_SERVICE_NAME: 'caravan-test' });
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { steps: 2, stages: 4, microbatches: 2, seqLen: 32, batchSize: 2 } } });
  const summary = await trainDistributed({ config, run: 'traced', log: createLogger('test', 'silent'), datacenters: ['dc-east', 'dc-west'] });
  t.is(summary.steps, 2);

  // The coordinator exports metrics to the same endpoint (test/telemetry/metrics.test.ts).
  const traceExports = receiver.requests.filter((r) => r.path === 'POST /v1/traces');
  t.true(traceExports.length > 0 && traceExports.every((r) => r.contentType === 'application/json'), traceExports.map((r) => r.contentType).join(', '));
  const spansReceived = traceExports.flatMap((r) => spansOfOtlpJson(r.json as Parameters<typeof spansOfOtlpJson>[0]));
  const all = new Map<string, SpanRecord[]>();
  for (const s of spansReceived) all.set(s.traceId, [...(all.get(s.traceId) ?? []), s]);
  // A step after one whose provisional update was rolled back is redone as attempt 1, in traces of its own: the
  // microbatch's valid trace is its latest attempt's.
  const rootOf = (spans: SpanRecord[]) => spans.find((s) => s.name === 'microbatch');
  const attemptOf = (spans: SpanRecord[]) => Number(rootOf(spans)?.attributes['caravan.attempt'] ?? 0);
  const latest = new Map<string, [string, SpanRecord[]]>();
  for (const [id, spans] of all) {
    const root = rootOf(spans);
    const key = `${root?.attributes['caravan.step']}/${root?.attributes['caravan.microbatch']}`;
    if (!latest.has(key) || attemptOf(latest.get(key)![1]) < attemptOf(spans)) latest.set(key, [id, spans]);
  }
  const traces = new Map(latest.values());
  if (summary.rolled_back_steps?.length === 0) t.is(all.size, traces.size, 'no redone attempts without a roll-back');
  t.is(traces.size, 2 * 2, 'one trace per microbatch (2 steps × 2 microbatches), nothing else');
  const microbatches = new Set<string>();
  for (const [traceId, spans] of traces) {
    const roots = spans.filter((s) => !s.parentSpanId);
    t.deepEqual(roots.map((r) => r.name), ['microbatch'], `trace ${traceId} has one root`);
    microbatches.add(`${roots[0].attributes['caravan.step']}/${roots[0].attributes['caravan.microbatch']}`);
    const ids = new Set(spans.map((s) => s.spanId));
    t.deepEqual(spans.filter((s) => s.parentSpanId && !ids.has(s.parentSpanId)).map((s) => s.name), [], 'every parent is in the trace');
    // The default schedule (zb-h2) splits each backward into its input half and its weight half, a child of the first.
    for (const name of ['forward', 'backward-input', 'backward-weight']) {
      t.deepEqual([...new Set(spans.filter((s) => s.name === name).map((s) => s.attributes['caravan.stage']))].sort(), [0, 1, 2, 3], `${name} on every stage`);
    }
    t.true(new Set(spans.map((s) => s.resource['host.name'])).size >= 2, 'spans from more than one host');
    t.deepEqual([...new Set(spans.map((s) => s.resource['caravan.datacenter']))].sort(), ['dc-east', 'dc-west']);
    t.true(spans.every((s) => s.resource['service.name'] === 'caravan-test'));
    // Across hosts: stage 1's forward hangs under what stage 0 published, through consume and queue.
    const byId = new Map(spans.map((s) => [s.spanId, s]));
    const forward1 = spans.find((s) => s.name === 'forward' && s.attributes['caravan.stage'] === 1)!;
    const chain: string[] = [];
    for (let s: SpanRecord | undefined = forward1; s; s = s.parentSpanId ? byId.get(s.parentSpanId) : undefined) chain.push(`${s.name}@${s.attributes['caravan.stage']}`);
    t.deepEqual(chain, ['forward@1', 'consume@1', 'publish@0', 'forward@0', 'microbatch@0']);
    for (const p of spans.filter((s) => s.name === 'publish')) {
      t.true(Number(p.attributes['caravan.bytes_raw']) > 0 && Number(p.attributes['caravan.bytes_wire']) > Number(p.attributes['caravan.bytes_raw']), 'fp32 and wire bytes on every publish');
    }
    t.is(spans.filter((s) => s.name === 'publish').length, 6, '3 boundaries × 2 directions');
    t.true(spans.some((s) => s.name === 'queue') && spans.some((s) => s.name === 'decode') && spans.some((s) => s.name === 'encode'));
  }
  t.deepEqual([...microbatches].sort(), ['0/0', '0/1', '1/0', '1/1']);
});

test.serial('tracing is off without an endpoint; http/protobuf is the default protocol; traceparent survives NATS headers; the ratio samples', async (t) => {
  t.false(tracingConfigured({}));
  t.false(tracingConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://x', OTEL_TRACES_EXPORTER: 'none' }));
  t.true(tracingConfigured({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://x/v1/traces' }));
  const off = initTracing({ service: 's', host: 'h', datacenter: 'd' }, {});
  t.false(off.enabled);
  t.is(traceHeaders(off.contextOf(off.start('x', undefined))), undefined, 'an unsampled span puts nothing in the headers');

  const receiver = await otlpReceiver();
  t.teardown(() => receiver.close());
  const env = { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url };
  withEnv(t, { ...env, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf' });  // the exporters read the endpoint from the environment
  const on = initTracing({ service: 's', host: 'h', datacenter: 'd' }, env);
  const span = on.start('microbatch', undefined);
  const headers = traceHeaders(on.contextOf(span))!;
  t.regex(headers.get('traceparent'), new RegExp(`^00-${span.spanContext().traceId}-${span.spanContext().spanId}-01$`));
  t.is((await import('@opentelemetry/api')).trace.getSpanContext(traceContext(headers)!)?.traceId, span.spanContext().traceId);
  span.end();
  await on.shutdown();
  const protobuf = receiver.requests.filter((r) => r.path === 'POST /v1/traces' && r.contentType === 'application/x-protobuf');
  t.true(protobuf.length >= 1 && protobuf[0].raw.length > 10, 'one protobuf export');

  const never = initTracing({ service: 's', host: 'h', datacenter: 'd' }, { ...env, OTEL_TRACES_SAMPLER_ARG: '0' });
  t.false(never.start('microbatch', undefined).isRecording(), 'ratio 0 samples nothing');
  await never.shutdown();
  t.throws(() => initTracing({ service: 's', host: 'h', datacenter: 'd' }, { ...env, OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }), { message: /http\/protobuf or http\/json/ });
});
