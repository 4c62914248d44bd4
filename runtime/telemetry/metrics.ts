// A run's metrics through the OpenTelemetry metrics API, exported by the
// coordinator (it hears every stage's counters, so one exporter covers the
// pipeline): off unless the standard OTLP variables name an endpoint
// (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
// OTEL_METRICS_EXPORTER not "none"). The protocol follows
// OTEL_EXPORTER_OTLP_METRICS_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL
// (http/protobuf, the default, or http/json); the export period
// OTEL_METRIC_EXPORT_INTERVAL (ms, default 60000 as the specification says).
// Instruments are observable: each export reads the coordinator's live state.
import type { Attributes, ObservableResult } from '@opentelemetry/api';
import { OTLPMetricExporter as JsonExporter } from '@opentelemetry/exporter-metrics-otlp-http';
import { OTLPMetricExporter as ProtoExporter } from '@opentelemetry/exporter-metrics-otlp-proto';
import { detectResources, envDetector, resourceFromAttributes } from '@opentelemetry/resources';
import { MeterProvider, PeriodicExportingMetricReader } from '@opentelemetry/sdk-metrics';
import type { LiveMetrics, RecoveryCounts } from '../../schemas/run-records.ts';

/** What the instruments read: the coordinator's run state (RunState), as far as metrics need it. */
export interface RunMetricsSource {
  readonly step: number;
  readonly loss: number | null;
  readonly tokens_per_s: number | null;
  readonly recoveries?: RecoveryCounts;
  readonly metrics?: LiveMetrics;
}

export interface RunMetrics {
  readonly enabled: boolean;
  /** Exports once more and stops; never rejects, and gives up after a few seconds (a collector that is down must not hold the run). */
  shutdown(): Promise<void>;
}

export function metricsConfigured(env: NodeJS.ProcessEnv = process.env): boolean {
  if ((env.OTEL_METRICS_EXPORTER ?? '').split(',').includes('none') || env.OTEL_SDK_DISABLED === 'true') return false;
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT);
}

const SHUTDOWN_MS = 5000;

export function initRunMetrics(id: { service: string; run: string }, read: () => RunMetricsSource, env: NodeJS.ProcessEnv = process.env): RunMetrics {
  if (!metricsConfigured(env)) return { enabled: false, shutdown: async () => {} };
  const protocol = env.OTEL_EXPORTER_OTLP_METRICS_PROTOCOL ?? env.OTEL_EXPORTER_OTLP_PROTOCOL ?? 'http/protobuf';
  if (protocol !== 'http/protobuf' && protocol !== 'http/json') {
    throw new Error(`OTEL_EXPORTER_OTLP_PROTOCOL=${protocol}: caravan exports metrics over http/protobuf or http/json`);
  }
  const interval = env.OTEL_METRIC_EXPORT_INTERVAL === undefined ? 60_000 : Number(env.OTEL_METRIC_EXPORT_INTERVAL);
  if (!(Number.isInteger(interval) && interval >= 100)) throw new Error(`OTEL_METRIC_EXPORT_INTERVAL=${env.OTEL_METRIC_EXPORT_INTERVAL}: milliseconds, at least 100`);
  const exporter = protocol === 'http/json' ? new JsonExporter() : new ProtoExporter();
  const resource = resourceFromAttributes({ 'service.name': env.OTEL_SERVICE_NAME || id.service, 'caravan.run': id.run })
    .merge(detectResources({ detectors: [envDetector] }));
  const provider = new MeterProvider({
    resource,
    readers: [new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: interval, exportTimeoutMillis: Math.min(interval, SHUTDOWN_MS) })],
  });
  const meter = provider.getMeter('caravan');
  const run: Attributes = { 'caravan.run': id.run };
  const gauge = (name: string, description: string, unit: string, observe: (r: ObservableResult, s: RunMetricsSource) => void) =>
    meter.createObservableGauge(name, { description, unit }).addCallback((r) => observe(r, read()));
  const counter = (name: string, description: string, unit: string, observe: (r: ObservableResult, s: RunMetricsSource) => void) =>
    meter.createObservableCounter(name, { description, unit }).addCallback((r) => observe(r, read()));

  gauge('caravan.run.step', 'steps committed (replica 0)', '{step}', (r, s) => r.observe(s.step, run));
  gauge('caravan.run.loss', 'training loss of the last committed step (replica 0)', '1', (r, s) => { if (s.loss !== null) r.observe(s.loss, run); });
  gauge('caravan.run.tokens_per_second', 'tokens trained per second, all replicas, since the run started', '{token}/s', (r, s) => { if (s.tokens_per_s !== null) r.observe(s.tokens_per_s, run); });
  gauge('caravan.run.mfu', "model FLOPs per second over the hosts' peaks", '%', (r, s) => { if (s.metrics) r.observe(s.metrics.mfu_pct, run); });
  gauge('caravan.pipeline.bubble', "the fraction of the window replica 0's stages did not compute", '1', (r, s) => { if (s.metrics) r.observe(s.metrics.bubble, run); });
  gauge('caravan.pipeline.bubble_bound', "the least bubble the run's pipeline schedule allows", '1', (r, s) => { if (s.metrics) r.observe(s.metrics.bubble_bound, run); });
  gauge('caravan.stage.utilization', 'the fraction of the window each stage of replica 0 spent computing', '1', (r, s) => {
    s.metrics?.utilization_by_stage.forEach((u, stage) => r.observe(u, { ...run, 'caravan.stage': stage }));
  });
  gauge('caravan.stage.queued_frames', 'frames a stage of replica 0 has received or has waiting in its edge streams', '{frame}', (r, s) => {
    s.metrics?.queued_by_stage.forEach((q, stage) => r.observe(q, { ...run, 'caravan.stage': stage }));
  });
  counter('caravan.edge.bytes', 'bytes across each boundary of replica 0, by direction, on the wire and as fp32', 'By', (r, s) => {
    for (const e of s.metrics?.edges ?? []) {
      for (const direction of ['act', 'grad'] as const) {
        r.observe(e[direction].wire_bytes, { ...run, 'caravan.edge': e.edge, 'caravan.direction': direction, 'caravan.encoding': 'wire' });
        r.observe(e[direction].f32_bytes, { ...run, 'caravan.edge': e.edge, 'caravan.direction': direction, 'caravan.encoding': 'f32' });
      }
    }
  });
  counter('caravan.edge.frames', 'frames across each boundary of replica 0, by direction', '{frame}', (r, s) => {
    for (const e of s.metrics?.edges ?? []) {
      for (const direction of ['act', 'grad'] as const) r.observe(e[direction].frames, { ...run, 'caravan.edge': e.edge, 'caravan.direction': direction });
    }
  });
  counter('caravan.recovery.events', 'hosts lost, slots handed to standbys, coordinator restarts', '{event}', (r, s) => {
    const c = s.recoveries;
    if (!c) return;
    r.observe(c.hosts_lost, { ...run, 'caravan.event': 'host_lost' });
    r.observe(c.slots_reassigned, { ...run, 'caravan.event': 'slot_reassigned' });
    r.observe(c.coordinator_restarts, { ...run, 'caravan.event': 'coordinator_restart' });
  });

  return {
    enabled: true,
    shutdown: () => Promise.race([
      provider.shutdown().catch(() => {}),
      new Promise<void>((resolve) => setTimeout(resolve, SHUTDOWN_MS).unref()),
    ]),
  };
}
