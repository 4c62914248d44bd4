// The single-process run that `npm start` performs, and resuming it from its
// checkpoints without changing a bit.
import test from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { preset } from '../../runtime/config/presets.ts';
import { trainLocal } from '../../runtime/train/train-local.ts';
import { smallModel, smallOptim } from '../support/tiny-run.ts';

test('the tiny preset brings the loss well below ln(vocab) on the bundled corpus', async (t) => {
  const tiny = preset('tiny');
  const steps = 40;
  const s = await trainLocal({ ...tiny, optim: { ...tiny.optim, totalSteps: steps }, training: { ...tiny.training, steps }, valBatches: 2 });
  t.is(s.losses.length, steps);
  t.true(Math.abs(s.firstLoss - s.lnVocab) < 0.3, `starts near ln V: ${s.firstLoss} vs ${s.lnVocab}`);
  t.true(s.finalLoss < 0.6 * s.lnVocab, `train loss ${s.finalLoss} vs ln V ${s.lnVocab}`);
  t.true(s.valLoss < 0.6 * s.lnVocab, `validation loss ${s.valLoss} vs ln V ${s.lnVocab}`);
});

test('stopping at a checkpoint and resuming gives the uninterrupted run, bit for bit', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-resume-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const base = { model: smallModel, optim: smallOptim, valBatches: 1 };
  const training = { steps: 6, microbatches: 2, batchSize: 2, seqLen: 16, stages: 2, replicas: 1, seed: 5, maxGradNorm: 1, tokenizer: 'byte' as const, cpuThreads: 2, checkpointEvery: 2, lz4: true, nonFinite: 'stop' as const };
  const straight = await trainLocal({ ...base, training });
  await trainLocal({ ...base, training: { ...training, steps: 4 }, checkpointDir: dir });
  const resumed = await trainLocal({ ...base, training, checkpointDir: dir, resume: true });
  t.deepEqual(resumed.losses, straight.losses.slice(4));
  t.is(resumed.paramsSha256, straight.paramsSha256);
});

test('a missing token shard is a clear error', async (t) => {
  const tiny = preset('tiny');
  await t.throwsAsync(trainLocal({ ...tiny, dataFile: '/nonexistent/shard.bin' }), { message: /\/nonexistent\/shard\.bin/ });
});
