// `caravan timeline` from a real traced run, rendered by headless Chromium:
// the page draws one forward and one backward (B and W) box for every stage, step and
// microbatch, and prints the bubble beside its schedule's bound.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { caravan, summaryOf } from '../support/caravan-cli.ts';
import { chromiumPath, HEADLESS_ARGS } from '../support/chromium.ts';

const run = promisify(execFile);

test('a traced 4-stage run draws a box for every stage, step and microbatch, in a real browser', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-timeline-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const spans = join(dir, 'spans.jsonl'), page = join(dir, 'timeline.html');
  const trained = await caravan(['train', '--stages', '4', '--steps', '2', '--microbatches', '2', '--seq', '32', '--batch', '2', '--trace-file', spans, '--json']);
  t.is(trained.code, 0, trained.stderr);
  const summary = summaryOf(await caravan(['timeline', '--trace-file', spans, '--out', page, '--json']));
  // The default schedule, zb-h2: F, B and W of every microbatch on every stage (a redone attempt's voided boxes aside).
  t.like(summary, { rows: 4, boxes: 4 * 2 * 2 * 3, stages: 4, microbatches: 2, schedule: 'zb-h2' });
  t.true((summary.bubble_bound as number) >= 0 && (summary.bubble_bound as number) < 0.6, `below 1F1B's 60% (${summary.bubble_bound})`);
  t.true((summary.bubble as number) > 0 && (summary.bubble as number) < 1);
  t.true((summary.transfers as number) >= 2 * 2 * 6, 'every frame between stages is drawn');

  const { stdout: dom } = await run(chromiumPath(), [...HEADLESS_ARGS, '--dump-dom', `file://${page}`], { timeout: 60_000, maxBuffer: 16 << 20 });
  const boxes = [...dom.matchAll(/<rect class="([a-z-]+)"[^>]*data-kind="(forward|backward-input|backward-weight)"[^>]*data-stage="(\d+)"[^>]*data-step="(\d+)"[^>]*data-mb="(\d+)"/g)].map((m) => `${m[2]} ${m[3]} ${m[4]}.${m[5]}`);
  const expected: string[] = [];
  for (const kind of ['forward', 'backward-input', 'backward-weight']) for (let s = 0; s < 4; s++) for (const step of [0, 1]) for (const mb of [0, 1]) expected.push(`${kind} ${s} ${step}.${mb}`);
  t.deepEqual(boxes.sort(), expected.sort(), 'the script ran in the browser and drew each box once');
  t.regex(dom, /id="summary">bubble \d+\.\d% of stage time \(zb-h2 bound for S=4, M=2 with equal op costs: \d+\.\d%\)/);
});

test('timeline refuses a trace file without compute spans, or none at all, in one line', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-timeline-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const empty = join(dir, 'empty.jsonl');
  await writeFile(empty, '');
  const none = await caravan(['timeline', '--trace-file', empty, '--out', join(dir, 'x.html')]);
  t.regex(none.stderr, /no forward or backward spans in the trace file/);
  const missing = await caravan(['timeline', '--trace-file', join(dir, 'nope.jsonl'), '--out', join(dir, 'x.html')]);
  t.regex(missing.stderr, /cannot read trace file .*nope\.jsonl: ENOENT/);
  await writeFile(empty, '{"name": 1}\n');
  const bad = await caravan(['timeline', '--trace-file', empty, '--out', join(dir, 'x.html')]);
  t.regex(bad.stderr, /empty\.jsonl line 1: not a span record/);
  const inProcess = await caravan(['train', '--in-process', '--steps', '1', '--trace-file', join(dir, 'y.jsonl')]);
  t.regex(inProcess.stderr, /--trace-file traces the hosts of a NATS run/);
});
