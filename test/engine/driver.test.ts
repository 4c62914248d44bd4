// The standalone C++ driver (no Node.js) runs the same engine: its gradient
// checks pass and it trains to the same bits as the addon on the same batches.
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { DRIVER_PATH } from '../../native/index.ts';
import { LocalPipeline } from '../../runtime/train/local-pipeline.ts';
import { B, M, T, corpusBatches, smallModel as m, smallOptim as o } from '../support/tiny-run.ts';

const run = promisify(execFile);

test('driver gradcheck passes', async (t) => {
  const { stdout } = await run(DRIVER_PATH, ['gradcheck', '--seed', '3']);
  const rows = stdout.trim().split('\n').map((l) => JSON.parse(l));
  t.true(rows.length > 30);
  t.true(rows.every((r) => r.ok === true && r.rel_err <= r.tolerance));
});

test('driver and addon train to identical losses and parameters', async (t) => {
  const steps = 5;
  const dir = await mkdtemp(join(tmpdir(), 'caravan-driver-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const batches = Array.from({ length: steps }, (_, s) => corpusBatches(s));
  const file = new Int32Array(steps * M * 2 * B * T);
  let at = 0;
  for (const step of batches) for (const mb of step) { file.set(mb.tokens, at); file.set(mb.targets, at + B * T); at += 2 * B * T; }
  await writeFile(join(dir, 'batches.bin'), file);

  const p = new LocalPipeline(m, o, 2, 1);
  const losses = batches.map((mbs) => p.trainStep(mbs, B, T, 1).loss);

  const args = ['train', '--tokens', join(dir, 'batches.bin'), '--dump-params', join(dir, 'params.bin'),
    '--steps', steps, '--microbatches', M, '--batch', B, '--seq', T, '--stages', 2, '--seed', 1, '--clip', 1,
    '--vocab', m.vocabSize, '--d', m.dModel, '--layers', m.nLayers, '--heads', m.nHeads, '--kv-heads', m.nKvHeads,
    '--ffn', m.ffnHidden, '--max-seq', m.maxSeqLen,
    '--lr', o.lr, '--warmup', o.warmupSteps, '--total-steps', o.totalSteps, '--weight-decay', o.weightDecay].map(String);
  const { stdout } = await run(DRIVER_PATH, args);
  const driverLosses = stdout.trim().split('\n').map((l) => JSON.parse(l).loss as number);
  t.deepEqual(driverLosses, losses);
  const dumped = await readFile(join(dir, 'params.bin'));
  const ours = Buffer.concat(p.stages.map((s) => { const a = s.params(); return Buffer.from(a.buffer, a.byteOffset, a.byteLength); }));
  t.true(dumped.equals(ours), 'parameters are bitwise equal');
});

test('driver refuses a truncated batch file with a clear error', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-driver-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'short.bin'), new Int32Array(10));
  const err = await t.throwsAsync(run(DRIVER_PATH, ['train', '--tokens', join(dir, 'short.bin'), '--steps', '1']));
  t.regex((err as Error & { stderr: string }).stderr, /expected \d+ bytes of batches, got 40/);
});
