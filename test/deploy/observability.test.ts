// deploy/observability against the coordinator's real metrics exporter. The
// exporter (runtime/telemetry/metrics.ts) runs here with every field of its
// source set and exports OTLP/JSON to a receiver this test runs; what
// arrives gives each instrument's name, unit, kind and attributes. Those are
// put through the collector's name translation, UnderscoreEscapingWithoutSuffixes
// (prometheus/otlptranslator: MetricNamer without suffixes, LabelNamer), the
// strategy otel-collector.yaml sets, and every PromQL query of
// grafana-dashboard.json must then name only metrics and labels that exist,
// filter by the run, take rate/increase of counters and of nothing else, and
// the dashboard must show every instrument. The collector config and the
// compose files are checked for the settings and wiring that rests on.
import test from 'ava';
import { readFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { initRunMetrics, type RunMetricsSource } from '../../runtime/telemetry/metrics.ts';
import { otlpReceiver } from '../support/otlp-receiver.ts';

const dir = fileURLToPath(new URL('../../deploy/observability/', import.meta.url));
const read = (path: string) => readFileSync(join(dir, path), 'utf8');

// --- What the exporter sends --------------------------------------------------

type Kind = 'gauge' | 'counter' | 'updowncounter' | 'other';
interface Instrument {
  readonly name: string;
  readonly unit: string;
  readonly kind: Kind;
  /** Each point attribute's key and the values seen, as Prometheus shows values: strings. */
  readonly attributes: Map<string, Set<string>>;
  readonly points: number;
}

type AnyValue = { stringValue?: string; intValue?: number | string; doubleValue?: number; boolValue?: boolean };
type KeyValue = { key: string; value: AnyValue };
type OtlpMetric = { name: string; unit?: string; gauge?: Data; sum?: Data & { isMonotonic?: boolean }; histogram?: Data };
type Data = { dataPoints: Array<{ attributes?: KeyValue[] }> };
type OtlpMetricsBody = { resourceMetrics: Array<{ scopeMetrics: Array<{ metrics: OtlpMetric[] }> }> };

function instrumentsOf(bodies: OtlpMetricsBody[]): Map<string, Instrument> {
  const out = new Map<string, Instrument>();
  for (const m of bodies.flatMap((b) => b.resourceMetrics.flatMap((rm) => rm.scopeMetrics.flatMap((sm) => sm.metrics)))) {
    const kind: Kind = m.gauge ? 'gauge' : m.sum ? (m.sum.isMonotonic ? 'counter' : 'updowncounter') : 'other';
    const data = m.gauge ?? m.sum ?? m.histogram;
    const seen = out.get(m.name) ?? { name: m.name, unit: m.unit ?? '', kind, attributes: new Map(), points: 0 };
    for (const p of data?.dataPoints ?? []) {
      for (const a of p.attributes ?? []) {
        const v = a.value.stringValue ?? String(a.value.intValue ?? a.value.doubleValue ?? a.value.boolValue);
        seen.attributes.set(a.key, (seen.attributes.get(a.key) ?? new Set()).add(v));
      }
    }
    out.set(m.name, { ...seen, points: seen.points + (data?.dataPoints.length ?? 0) });
  }
  return out;
}

// Every field set, so every instrument has points to show.
const wire = (frames: number) => ({ frames, f32_bytes: frames * 4096, wire_bytes: frames * 2048 });
const recoveries = { hosts_lost: 1, slots_reassigned: 1, coordinator_restarts: 1 };
const source: RunMetricsSource = {
  step: 12, loss: 2.5, tokens_per_s: 4096, recoveries,
  metrics: {
    step: 11, tokens_per_s: 4096, mfu_pct: 14.5, devices_by_stage: ['cpu', 'cpu', 'cpu'],
    utilization_by_stage: [0.3, 0.25, 0.28], bubble: 0.72, bubble_bound: 0.5, schedule: '1f1b', peak_stash_bytes_by_stage: [1e6, 1e6, 1e6],
    edges: [{ edge: '0-1', act: wire(24), grad: wire(24) }, { edge: '1-2', act: wire(24), grad: wire(24) }],
    queued_by_stage: [0, 1, 2], recoveries,
  },
};
const RUN = 'observed';

let exported = new Map<string, Instrument>();

test.before(async () => {
  const receiver = await otlpReceiver();
  // The OTLP exporter reads its endpoint and protocol from process.env, when it is made.
  const env: Record<string, string> = {
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: `${receiver.url}/v1/metrics`, OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: 'http/json',
    OTEL_METRIC_EXPORT_INTERVAL: '100', OTEL_METRICS_EXPORTER: 'otlp',
  };
  const before = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    const metrics = initRunMetrics({ service: 'caravan-coordinator', run: RUN }, () => source, { ...process.env });
    if (!metrics.enabled) throw new Error('the exporter did not start');
    const began = Date.now();
    while (!receiver.requests.some((r) => r.path === 'POST /v1/metrics') && Date.now() - began < 10_000) await new Promise((r) => setTimeout(r, 50));
    await metrics.shutdown();
    exported = instrumentsOf(receiver.requests.filter((r) => r.path === 'POST /v1/metrics').map((r) => r.json as OtlpMetricsBody));
  } finally {
    for (const [k, v] of Object.entries(before)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    await receiver.close();
  }
});

// --- The translation otel-collector.yaml chooses ------------------------------

const TRANSLATION = 'UnderscoreEscapingWithoutSuffixes';

/** otlptranslator's MetricNamer without suffixes: runs of characters outside [a-zA-Z0-9_:] become one '_' (none at the ends), a leading digit gets '_'; unit and kind add nothing. */
function prometheusMetricName(name: string): string {
  const joined = name.split(/[^a-zA-Z0-9_:]+/).filter(Boolean).join('_');
  return /^\d/.test(joined) ? `_${joined}` : joined;
}

/** otlptranslator's LabelNamer: each character outside [a-zA-Z0-9_] becomes '_'; a leading digit gets 'key_', one leading '_' gets 'key'. */
function prometheusLabelName(key: string): string {
  const s = key.replace(/[^a-zA-Z0-9_]/g, '_');
  if (/^\d/.test(s)) return `key_${s}`;
  return s.startsWith('_') && !s.startsWith('__') ? `key${s}` : s;
}

interface Series { readonly instrument: Instrument; readonly labels: Map<string, Set<string>> }

function prometheusSeries(): Map<string, Series> {
  return new Map([...exported.values()].map((i) => [
    prometheusMetricName(i.name),
    { instrument: i, labels: new Map([...i.attributes].map(([k, v]) => [prometheusLabelName(k), v])) },
  ]));
}

// --- PromQL, as far as the dashboard uses it -----------------------------------

interface Matcher { readonly label: string; readonly op: string; readonly value: string }
interface Selector { readonly metric: string; readonly matchers: Matcher[]; /** The function applied to it, when it is an argument: rate(m{...}[5m]). */ readonly around?: string }
interface Query { readonly selectors: Selector[]; /** Labels named by by(...)/without(...) and by {{label}} in the legend. */ readonly labels: string[]; readonly problems: string[] }

const PROMQL_FUNCTIONS = new Set(['sum', 'avg', 'min', 'max', 'count', 'rate', 'irate', 'increase', 'delta', 'deriv', 'clamp_min', 'clamp_max', 'abs', 'topk', 'bottomk']);
const PROMQL_WORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'and', 'or', 'unless', 'offset', 'bool']);

function parseQuery(expr: string, legend = ''): Query {
  const problems: string[] = [];
  const selectors: Selector[] = [];
  const labels = [...legend.matchAll(/\{\{\s*([a-zA-Z_]\w*)\s*\}\}/g)].map((m) => m[1]);
  // Selector bodies first (their quoted values may hold anything), then ranges and groupings.
  let rest = expr.replace(/([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}/g, (whole, metric: string, body: string, at: number) => {
    const matchers = [...body.matchAll(/([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"/g)].map((m) => ({ label: m[1], op: m[2], value: m[3] }));
    if (body.replace(/([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"/g, '').replace(/[\s,]/g, '')) problems.push(`unread matchers in ${whole}`);
    const around = /([a-zA-Z_]\w*)\s*\(\s*$/.exec(expr.slice(0, at))?.[1];
    selectors.push({ metric, matchers, around });
    return ' SELECTOR ';
  });
  rest = rest.replace(/\[[^\]]*\]/g, ' ').replace(/\b(by|without)\s*\(([^)]*)\)/g, (_w, _k, list: string) => {
    labels.push(...list.split(',').map((l) => l.trim()).filter(Boolean));
    return ' ';
  });
  for (const m of rest.matchAll(/[a-zA-Z_:][\w:]*/g)) {
    const word = m[0];
    if (word === 'SELECTOR' || PROMQL_WORDS.has(word)) continue;
    const next = rest.slice(m.index! + word.length).trimStart()[0];
    if (next === '(') {
      if (!PROMQL_FUNCTIONS.has(word)) problems.push(`unknown function ${word}`);
    } else problems.push(`${word}: a metric without a selector, so without the run's filter`);
  }
  return { selectors, labels, problems };
}

// --- The dashboard -------------------------------------------------------------

type Target = { expr?: string; legendFormat?: string; refId?: string; datasource?: { type?: string; uid?: string } };
type Panel = { id: number; type: string; title: string; datasource?: { type?: string; uid?: string }; targets?: Target[]; fieldConfig?: { defaults?: { unit?: string } }; panels?: Panel[] };
type Variable = { type: string; name: string; query?: string | { query?: string }; datasource?: { uid?: string } };
type Dashboard = { schemaVersion: number; uid: string; title: string; panels: Panel[]; templating: { list: Variable[] } };

const dashboard = JSON.parse(read('grafana-dashboard.json')) as Dashboard;
const panels = dashboard.panels.flatMap((p) => (p.type === 'row' ? p.panels ?? [] : [p]));
const queries = panels.flatMap((p) => (p.targets ?? []).map((target) => ({ panel: p, target, query: parseQuery(target.expr ?? '', target.legendFormat) })));

test('the coordinator exported every instrument it declares, each with points', (t) => {
  t.true(exported.size > 0, 'metrics arrived');
  // A cross-check on the source above: an instrument it leaves empty would go unchecked below.
  const declared = [...readFileSync(fileURLToPath(new URL('../../runtime/telemetry/metrics.ts', import.meta.url)), 'utf8').matchAll(/\b(?:gauge|counter)\('([^']+)'/g)].map((m) => m[1]);
  t.true(declared.length > 0, 'metrics.ts declares instruments');
  t.deepEqual([...exported.keys()].sort(), [...new Set(declared)].sort());
  for (const i of exported.values()) {
    t.true(i.points > 0, `${i.name} has points`);
    t.deepEqual(i.attributes.get('caravan.run'), new Set([RUN]), `${i.name} carries caravan.run`);
    t.true(i.kind === 'gauge' || i.kind === 'counter', `${i.name} is a gauge or a monotonic counter, not ${i.kind}`);
  }
});

test('the translation gives every instrument its own Prometheus name and legal labels', (t) => {
  const series = prometheusSeries();
  t.is(series.size, exported.size, 'no two instruments share a Prometheus name');
  for (const [name, s] of series) {
    t.regex(name, /^[a-zA-Z_:][a-zA-Z0-9_:]*$/);
    for (const label of s.labels.keys()) t.regex(label, /^[a-zA-Z_][a-zA-Z0-9_]*$/);
  }
  // The rule on names of the kinds it meets: no unit or _total suffix, whatever the unit or kind.
  t.is(prometheusMetricName('caravan.edge.bytes'), 'caravan_edge_bytes');
  t.is(prometheusMetricName('caravan.run.tokens_per_second'), 'caravan_run_tokens_per_second');
  t.is(prometheusMetricName('(lambda).function.executions(#)'), 'lambda_function_executions');
  t.is(prometheusLabelName('caravan.stage'), 'caravan_stage');
  t.is(prometheusLabelName('2 cents'), 'key_2_cents');
});

test('the dashboard: Grafana JSON with a Prometheus datasource variable, a run variable, and a query on every panel', (t) => {
  t.true(dashboard.schemaVersion >= 36 && dashboard.schemaVersion <= 41, `schemaVersion ${dashboard.schemaVersion}`);
  t.truthy(dashboard.uid);
  const vars = new Map(dashboard.templating.list.map((v) => [v.name, v]));
  t.like(vars.get('datasource'), { type: 'datasource', query: 'prometheus' });
  const run = vars.get('run');
  t.is(run?.type, 'query');
  t.is(run?.datasource?.uid, '${datasource}');
  const runQuery = typeof run?.query === 'string' ? run.query : run?.query?.query ?? '';
  const lv = /^label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*([a-zA-Z_]\w*)\s*\)$/.exec(runQuery);
  t.truthy(lv, `run variable query: ${runQuery}`);
  const series = prometheusSeries();
  t.true(series.has(lv![1]), `${lv![1]} is exported`);
  t.is(lv![2], prometheusLabelName('caravan.run'));
  t.true(series.get(lv![1])?.labels.has(lv![2]), `${lv![1]} has the label ${lv![2]}`);

  t.true(panels.length >= 10, `${panels.length} panels`);
  for (const p of panels) {
    const exprs = (p.targets ?? []).filter((q) => q.expr?.trim());
    t.true(exprs.length > 0, `panel "${p.title}" has a query`);
    t.is(p.datasource?.uid, '${datasource}', `panel "${p.title}" uses the datasource variable`);
    for (const q of p.targets ?? []) t.is(q.datasource?.uid ?? p.datasource?.uid, '${datasource}');
  }
  t.is(new Set(panels.map((p) => p.id)).size, panels.length, 'panel ids are distinct');
});

test('every query names exported metrics and their labels, filters by the run, and takes rates of counters only', (t) => {
  const series = prometheusSeries();
  t.true(queries.length > 0);
  for (const { panel, target, query } of queries) {
    const where = `"${panel.title}" ${target.refId}: ${target.expr}`;
    t.deepEqual(query.problems, [], where);
    t.true(query.selectors.length > 0, `${where}: names a metric`);
    for (const sel of query.selectors) {
      const s = series.get(sel.metric);
      if (!s) { t.fail(`${where}: ${sel.metric} is not a metric the coordinator exports (it exports ${[...series.keys()].join(', ')})`); continue; }
      t.true(sel.matchers.some((m) => m.label === 'caravan_run' && (m.op === '=' || m.op === '=~') && /^\$(run|\{run\})$/.test(m.value)), `${where}: filtered by caravan_run="$run"`);
      for (const m of sel.matchers) {
        t.true(s.labels.has(m.label), `${where}: ${sel.metric} has no label ${m.label} (it has ${[...s.labels.keys()].join(', ')})`);
        if (m.op === '=' && !m.value.startsWith('$')) t.true(s.labels.get(m.label)?.has(m.value), `${where}: ${m.label}="${m.value}" is a value the coordinator sends`);
      }
      for (const label of query.labels) t.true(s.labels.has(label), `${where}: ${sel.metric} has no label ${label}`);
      const counted = sel.around === 'rate' || sel.around === 'increase' || sel.around === 'irate';
      t.is(counted, s.instrument.kind === 'counter', `${where}: ${sel.metric} is a ${s.instrument.kind}${counted ? ' under ' + sel.around : ''}`);
    }
  }
});

test('the dashboard shows every instrument, with units that agree with the instruments\'', (t) => {
  const series = prometheusSeries();
  const shown = new Set(queries.flatMap((q) => q.query.selectors.map((s) => s.metric)));
  for (const name of series.keys()) t.true(shown.has(name), `${name} is on the dashboard`);
  // Where the OTel unit has a Grafana equivalent, the panel says it.
  const grafanaUnit = (unit: string, rate: boolean) => ({ 'By/rate': 'Bps', 'By/': 'bytes', '%/': 'percent' } as Record<string, string>)[`${unit}/${rate ? 'rate' : ''}`];
  for (const { panel, query } of queries) {
    for (const sel of query.selectors) {
      const s = series.get(sel.metric);
      const want = s && grafanaUnit(s.instrument.unit, sel.around === 'rate');
      if (want) t.is(panel.fieldConfig?.defaults?.unit, want, `"${panel.title}": ${sel.metric} is in ${s.instrument.unit}`);
    }
  }
  // The bubble beside its bound, and each edge's bytes both as sent and as fp32, on one panel each.
  const metricsOf = (p: Panel) => queries.filter((q) => q.panel === p).flatMap((q) => q.query.selectors);
  const bubble = prometheusMetricName('caravan.pipeline.bubble'), bound = prometheusMetricName('caravan.pipeline.bubble_bound');
  t.true(panels.some((p) => metricsOf(p).some((s) => s.metric === bubble) && metricsOf(p).some((s) => s.metric === bound)), 'bubble and its bound share a panel');
  const bytes = prometheusMetricName('caravan.edge.bytes');
  const encodings = (p: Panel) => new Set(metricsOf(p).filter((s) => s.metric === bytes).flatMap((s) => s.matchers.filter((m) => m.label === 'caravan_encoding').map((m) => m.value)));
  t.true(panels.some((p) => encodings(p).has('wire') && encodings(p).has('f32')), 'wire and f32 bytes share a panel');
});

// --- The collector ---------------------------------------------------------------

type Pipeline = { receivers?: string[]; processors?: string[]; exporters?: string[] };
type CollectorConfig = {
  receivers: Record<string, { protocols?: { grpc?: { endpoint?: string }; http?: { endpoint?: string } } }>;
  processors: Record<string, unknown>;
  exporters: Record<string, Record<string, unknown>>;
  service: { pipelines: Record<string, Pipeline> };
};
const collector = parse(read('otel-collector.yaml')) as CollectorConfig;
const componentType = (id: string) => id.split('/')[0];

test('the collector takes OTLP on 4317 and 4318, batches, and sends metrics to a Prometheus endpoint on 8889 and traces to Jaeger', (t) => {
  t.regex(collector.receivers.otlp?.protocols?.grpc?.endpoint ?? '', /:4317$/);
  t.regex(collector.receivers.otlp?.protocols?.http?.endpoint ?? '', /:4318$/);
  t.true('batch' in collector.processors);
  t.regex(String(collector.exporters.prometheus?.endpoint), /:8889$/);
  // otlp_grpc is the OTLP/gRPC exporter's name from collector v0.144 on (otlp before).
  const jaeger = Object.entries(collector.exporters).filter(([id]) => ['otlp', 'otlp_grpc'].includes(componentType(id)));
  t.is(jaeger.length, 1, 'one OTLP exporter');
  const [jaegerId, jaegerConfig] = jaeger[0];
  t.is(jaegerConfig.endpoint, 'jaeger:4317');
  t.like(jaegerConfig, { tls: { insecure: true } });

  const { metrics, traces } = collector.service.pipelines;
  t.deepEqual(metrics, { receivers: ['otlp'], processors: ['batch'], exporters: ['prometheus'] });
  t.deepEqual(traces, { receivers: ['otlp'], processors: ['batch'], exporters: [jaegerId] });
  for (const p of Object.values(collector.service.pipelines)) {
    for (const id of p.receivers ?? []) t.true(id in collector.receivers, `receiver ${id} is defined`);
    for (const id of p.processors ?? []) t.true(id in collector.processors, `processor ${id} is defined`);
    for (const id of p.exporters ?? []) t.true(id in collector.exporters, `exporter ${id} is defined`);
  }
});

test('the prometheus exporter translates names as this test assumes', (t) => {
  const prom = collector.exporters.prometheus;
  t.is(prom.translation_strategy, TRANSLATION, 'the rule prometheusMetricName and prometheusLabelName implement');
  // Each of these would rename or relabel what the dashboard queries.
  t.is(prom.namespace, undefined, 'no namespace prefix');
  t.is(prom.const_labels, undefined);
  t.is(prom.resource_constant_labels, undefined);
  t.not((prom.resource_to_telemetry_conversion as { enabled?: boolean } | undefined)?.enabled, true, 'resource attributes stay in target_info');
});

// --- docker compose, Prometheus and Grafana provisioning --------------------------------

type Service = { image: string; volumes?: string[]; ports?: string[] };
const compose = parse(read('docker-compose.yaml')) as { services: Record<string, Service> };

test('docker compose pins every image, mounts files that exist, and wires collector, Prometheus, Grafana and Jaeger together', (t) => {
  const services = compose.services;
  for (const [name, s] of Object.entries(services)) {
    t.regex(s.image, /:v?\d+\.\d+\.\d+$/, `${name} is pinned to a version`);
    for (const v of s.volumes ?? []) {
      const from = v.split(':')[0];
      if (from.startsWith('.')) t.true(existsSync(join(dir, from)), `${name} mounts ${from}, which exists`);
    }
  }
  // translation_strategy and the otlp_grpc name are the collector's from v0.144.
  const version = /:(\d+)\.(\d+)\.(\d+)$/.exec(services['otel-collector']?.image ?? '');
  t.truthy(version && services['otel-collector'].image.startsWith('otel/opentelemetry-collector-contrib:'));
  t.true(Number(version![1]) > 0 || Number(version![2]) >= 144, `collector ${services['otel-collector'].image} is v0.144 or later`);
  const collectorMount = services['otel-collector'].volumes?.find((v) => v.startsWith('./otel-collector.yaml:'));
  t.truthy(collectorMount);
  t.true(services['otel-collector'].ports?.some((p) => p.startsWith('4318:4318')), 'OTLP/HTTP reachable from the host');
  t.truthy(services.jaeger, 'the exporter\'s jaeger:4317 is a service');

  const prometheus = parse(read('prometheus.yaml')) as { scrape_configs: Array<{ static_configs: Array<{ targets: string[] }> }> };
  const targets = prometheus.scrape_configs.flatMap((c) => c.static_configs.flatMap((s) => s.targets));
  const port = String(collector.exporters.prometheus.endpoint).split(':').pop();
  t.true(targets.includes(`otel-collector:${port}`), `Prometheus scrapes the collector's exporter (${targets.join(', ')})`);

  const datasources = parse(read('grafana/datasources.yaml')) as { datasources: Array<{ type: string; url: string; isDefault?: boolean }> };
  t.like(datasources.datasources[0], { type: 'prometheus', url: 'http://prometheus:9090', isDefault: true });
  const providers = parse(read('grafana/dashboards.yaml')) as { providers: Array<{ options: { path: string } }> };
  const dashboardMount = services.grafana.volumes?.find((v) => v.startsWith('./grafana-dashboard.json:'));
  t.is(dirname(dashboardMount!.split(':')[1]), providers.providers[0].options.path, 'Grafana loads the mounted dashboard');
});
