// The pipeline over NATS, with separate host processes, computes exactly what
// one process computes: bitwise the same losses and final parameters for 4
// stages, 1 stage, and the in-process chain.
import test from 'ava';
import { caravan, summaryOf } from '../support/caravan-cli.ts';

const common = ['train', '--json', '--steps', '4', '--seq', '32', '--batch', '4', '--microbatches', '3', '--seed', '7'];

test('caravan train --stages 4 over NATS equals --stages 1 and the in-process run, bit for bit', async (t) => {
  const [four, one, local] = await Promise.all([
    caravan([...common, '--stages', '4']),
    caravan([...common, '--stages', '1']),
    caravan([...common, '--stages', '2', '--in-process']),
  ]);
  const [a, b, c] = [summaryOf(four), summaryOf(one), summaryOf(local)];
  t.is(a.mode, 'nats');
  t.is(a.stages, 4);
  t.is(b.stages, 1);
  t.is((a.losses as number[]).length, 4);
  t.deepEqual(a.losses, b.losses);
  t.deepEqual(a.losses, c.losses);
  t.is(a.params_sha256, b.params_sha256);
  t.is(a.params_sha256, c.params_sha256);
  t.is(a.final_loss, (a.losses as number[])[3]);
  t.true((a.losses as number[])[3] < (a.losses as number[])[0], 'the loss falls');
  t.regex(a.params_sha256 as string, /^[0-9a-f]{64}$/);
  t.true((a.tokens_per_s as number) > 0);
  t.is(a.dead_letters, 0);
  const utilization = a.utilization_by_stage as number[];
  t.is(utilization.length, 4);
  t.true(utilization.every((u) => u > 0 && u <= 1), `utilization ${utilization}`);
  t.true((a.bubble as number) >= 0 && (a.bubble as number) < 1);
  t.is(a.schedule, 'zb-h2', 'the default schedule');
  t.true((a.bubble_bound as number) >= 0 && (a.bubble_bound as number) < 3 / (3 + 4 - 1), `zb-h2 allows less bubble than 1F1B with M=3 over S=4 (${a.bubble_bound})`);
  t.true((a.mfu_pct as number) > 0 && (a.mfu_pct as number) < 100, `MFU ${a.mfu_pct}%`);
});

test('with bottlenecks quantized to MX int8 the NATS run equals the in-process run, and the wire carries k channels', async (t) => {
  const compressed = [...common, '--stages', '4', '--bottleneck', '4', '--bottleneck-quant', 'mxint8'];
  const [nats, local, plain] = await Promise.all([caravan(compressed), caravan([...compressed, '--in-process']), caravan([...common, '--stages', '4', '--no-lz4'])]);
  const [a, b, c] = [summaryOf(nats), summaryOf(local), summaryOf(plain)];
  t.deepEqual(a.losses, b.losses);
  t.is(a.params_sha256, b.params_sha256);
  t.not(a.params_sha256, c.params_sha256, 'the bottleneck is part of the model');
  const wire = a.wire as { frames: number; f32_bytes: number; wire_bytes: number };
  const raw = c.wire as typeof wire;
  // 4 steps × 3 microbatches × 3 boundaries × 2 directions, and what a rolled-back step's successor sent before it was redone
  for (const [run, w] of [[a, wire], [c, raw]] as const) {
    if ((run.rolled_back_steps as unknown[]).length === 0) t.is(w.frames, 72);
    else t.true(w.frames > 72, `${w.frames} frames with steps rolled back`);
  }
  t.is((wire.f32_bytes / wire.frames) * 32, raw.f32_bytes / raw.frames, 'k = 4 of d = 128 channels cross');
  t.true((wire.wire_bytes / wire.frames) * 80 < raw.wire_bytes / raw.frames, `${raw.wire_bytes} bytes on the wire uncompressed, ${wire.wire_bytes} compressed`);
});

test('two replicas train independently on their own data', async (t) => {
  const r = summaryOf(await caravan([...common, '--stages', '2', '--replicas', '2', '--steps', '2']));
  const byReplica = r.params_sha256_by_replica as string[];
  t.is(byReplica.length, 2);
  t.not(byReplica[0], byReplica[1], 'different data shards give different weights (no Bridge yet)');
  t.notDeepEqual((r.losses_by_replica as number[][])[0], (r.losses_by_replica as number[][])[1]);
});

test('an uneven split gives the same weights: --stage-layers 1,3 over NATS (both hosts in one process) and 3,1 in process equal one stage, bit for bit', async (t) => {
  const [uneven, reversed, one] = await Promise.all([
    caravan([...common, '--stages', '2', '--stage-layers', '1,3', '--hosts-per-process', '2']),
    caravan([...common, '--stages', '2', '--stage-layers', '3,1', '--in-process']),
    caravan([...common, '--stages', '1', '--in-process']),
  ]);
  const [a, b, c] = [summaryOf(uneven), summaryOf(reversed), summaryOf(one)];
  t.is(a.mode, 'nats');
  t.deepEqual(a.losses, c.losses);
  t.deepEqual(b.losses, c.losses);
  t.is(a.params_sha256, c.params_sha256);
  t.is(b.params_sha256, c.params_sha256);
  const bad = await caravan([...common, '--stages', '2', '--stage-layers', '1,2']);
  t.is(bad.code, 1);
  t.regex(bad.stderr, /training\.stageLayers \[1,2\] holds 3 layers, the model has 4/);
});
