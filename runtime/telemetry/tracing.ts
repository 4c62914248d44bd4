// OpenTelemetry tracing for a host: off unless the standard OTLP variables
// name an endpoint (OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_TRACES_EXPORTER not "none"). The
// exporter follows OTEL_EXPORTER_OTLP_PROTOCOL (http/protobuf, the default,
// or http/json); the service name OTEL_SERVICE_NAME; extra resource
// attributes OTEL_RESOURCE_ATTRIBUTES; sampling OTEL_TRACES_SAMPLER_ARG (a
// ratio, parent-based: a microbatch's trace is sampled once, at its root).
// The resource names the host and its datacenter. Trace context crosses
// hosts as W3C `traceparent` in NATS headers (traceHeaders / traceContext).
import { context, ROOT_CONTEXT, trace, type Context, type Span, type SpanOptions, type Tracer } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter as JsonExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { OTLPTraceExporter as ProtoExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { detectResources, envDetector, resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, BatchSpanProcessor, ParentBasedSampler, TraceIdRatioBasedSampler } from '@opentelemetry/sdk-trace-base';

/** Message headers as the propagator reads and writes them (NATS headers fit): `get` answers "" or undefined for a missing key. */
export interface TraceCarrier {
  get(key: string): string | undefined;
  set(key: string, value: string): void;
  keys(): string[];
}

/** Headers of their own, for a caller that has none yet: like NATS headers, `get` answers "" for a missing key. */
export class TraceHeaderMap implements TraceCarrier {
  private readonly values = new Map<string, string>();
  get(key: string): string { return this.values.get(key) ?? ''; }
  set(key: string, value: string) { this.values.set(key, value); }
  keys() { return [...this.values.keys()]; }
}

export interface TracingIdentity {
  readonly service: string;       // default for OTEL_SERVICE_NAME
  readonly host: string;
  readonly datacenter: string;
}

export interface Tracing {
  readonly enabled: boolean;
  /** Starts a span, a child of `parent` (a root when absent). */
  start(name: string, parent: Context | undefined, options?: SpanOptions): Span;
  /** The context of `span`, for its children. */
  contextOf(span: Span): Context;
  /** Exports every ended span now. Never rejects: a collector that is down must not stop training (the export errors go to OpenTelemetry's diagnostics). */
  flush(): Promise<void>;
  /** Flushes and stops the exporter. */
  shutdown(): Promise<void>;
}

const propagator = new W3CTraceContextPropagator();

/** NATS headers carrying `ctx` as traceparent (and tracestate), merged into `into` when given. */
export function traceHeaders(ctx: Context | undefined): TraceHeaderMap | undefined;
export function traceHeaders<C extends TraceCarrier>(ctx: Context | undefined, into: C): C;
export function traceHeaders(ctx: Context | undefined, into?: TraceCarrier): TraceCarrier | undefined {
  if (!ctx || !trace.getSpan(ctx)?.isRecording()) return into;
  const h = into ?? new TraceHeaderMap();
  propagator.inject(ctx, h, { set: (carrier, key, value) => carrier.set(key, value) });
  return h;
}

/** The trace context a message's headers carry, if any. */
export function traceContext(h: TraceCarrier | undefined): Context | undefined {
  if (!h || !h.get('traceparent')) return undefined;
  return propagator.extract(ROOT_CONTEXT, h, {
    // NATS headers' get answers "" for a missing key; the propagator wants undefined.
    get: (carrier, key) => carrier.get(key) || undefined,
    keys: (carrier) => carrier.keys(),
  });
}

const disabled: Tracing = {
  enabled: false,
  start: (name) => trace.getTracer('caravan-off').startSpan(name),  // the no-op tracer: non-recording spans
  contextOf: (span) => trace.setSpan(ROOT_CONTEXT, span),
  flush: async () => {},
  shutdown: async () => {},
};

export function tracingConfigured(env: NodeJS.ProcessEnv = process.env): boolean {
  if ((env.OTEL_TRACES_EXPORTER ?? '').split(',').includes('none') || env.OTEL_SDK_DISABLED === 'true') return false;
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
}

export function initTracing(id: TracingIdentity, env: NodeJS.ProcessEnv = process.env): Tracing {
  if (!tracingConfigured(env)) return disabled;
  const protocol = env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ?? env.OTEL_EXPORTER_OTLP_PROTOCOL ?? 'http/protobuf';
  if (protocol !== 'http/protobuf' && protocol !== 'http/json') {
    throw new Error(`OTEL_EXPORTER_OTLP_PROTOCOL=${protocol}: caravan exports traces over http/protobuf or http/json`);
  }
  const exporter = protocol === 'http/json' ? new JsonExporter() : new ProtoExporter();
  const ratio = env.OTEL_TRACES_SAMPLER_ARG === undefined ? 1 : Number(env.OTEL_TRACES_SAMPLER_ARG);
  if (!(ratio >= 0 && ratio <= 1)) throw new Error(`OTEL_TRACES_SAMPLER_ARG=${env.OTEL_TRACES_SAMPLER_ARG}: a sampling ratio in [0, 1]`);
  const resource = resourceFromAttributes({
    'service.name': env.OTEL_SERVICE_NAME || id.service,
    'host.name': id.host,
    'caravan.datacenter': id.datacenter,
  }).merge(detectResources({ detectors: [envDetector] }));
  const provider = new BasicTracerProvider({
    resource,
    sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(ratio) }),
    spanProcessors: [new BatchSpanProcessor(exporter, { scheduledDelayMillis: 1000 })],
  });
  const tracer: Tracer = provider.getTracer('caravan');
  return {
    enabled: true,
    start: (name, parent, options) => tracer.startSpan(name, options, parent ?? ROOT_CONTEXT),
    contextOf: (span) => trace.setSpan(context.active(), span),
    flush: () => provider.forceFlush().catch(() => {}),
    shutdown: () => provider.shutdown().catch(() => {}),
  };
}
