// Logs: pino JSON lines whose per-microbatch records carry run, replica,
// stage, step, trace_id and span_id (so a line leads to its trace in Jaeger);
// --log-level; and readable lines on a terminal.
import test from 'ava';
import { prettyLine } from '../../runtime/log.ts';
import { caravan } from '../support/caravan-cli.ts';
import { otlpReceiver } from '../support/otlp-receiver.ts';

test('at --log-level debug a host logs each forward and backward with its step, trace_id and span_id', async (t) => {
  const receiver = await otlpReceiver();
  t.teardown(() => receiver.close());
  const r = await caravan(['train', '--json', '--no-progress', '--log-level', 'debug', '--steps', '1', '--stages', '2', '--microbatches', '2', '--seq', '32', '--batch', '2'],
    { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_METRICS_EXPORTER: 'none', CARAVAN_LOG_FORMAT: 'json' });
  t.is(r.code, 0, r.stderr.slice(-1000));
  const records = r.stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  const computes = records.filter((x) => x.name === 'caravan-host' && (x.msg === 'forward' || x.msg === 'backward'));
  t.is(computes.length, 2 * 2 * 2, '2 stages × 2 microbatches × forward and backward');
  for (const x of computes) {
    t.like(x, { level: 20, replica: 0, step: 0 });
    t.true(x.stage === 0 || x.stage === 1);
    t.regex(x.run, /^run-/);
    t.regex(x.trace_id, /^[0-9a-f]{32}$/);
    t.regex(x.span_id, /^[0-9a-f]{16}$/);
  }
  // Each microbatch's lines share its trace across both hosts.
  t.is(new Set(computes.map((x) => x.trace_id)).size, 2);
});

test('on a terminal a record reads as one line: time, level, logger, context, message, the rest as key=value', (t) => {
  const time = Date.UTC(2026, 10, 26, 12, 3, 31, 123);
  const line = JSON.stringify({ level: 40, time, pid: 7, name: 'caravan-host', run: 'r1', host: 'gpu-3', replica: 0, stage: 1, generation: 2, msg: 'slot handed to a standby', replacing: 'gpu-1' });
  t.is(prettyLine(line, false), '12:03:31.123 WARN  caravan-host [run=r1 host=gpu-3 replica=0 stage=1]: slot handed to a standby  generation=2 replacing=gpu-1');
  t.is(prettyLine(line, true).slice(13, 27), '\x1b[33mWARN \x1b[0m');
  t.is(prettyLine('not json', false), 'not json');
});
