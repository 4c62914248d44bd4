// Same seed, same data → the same bits, however the layers are split.
import test from 'ava';
import { LocalPipeline } from '../../runtime/train/local-pipeline.ts';
import { B, T, corpusBatches, smallModel, smallOptim } from '../support/tiny-run.ts';

function run(stages: number, steps = 10) {
  const p = new LocalPipeline(smallModel, smallOptim, stages, 1);
  const initial = p.paramHash();
  const losses = Array.from({ length: steps }, (_, step) => p.trainStep(corpusBatches(step), B, T, 1).loss);
  return { losses, hash: p.paramHash(), initial };
}

test('1, 2 and 4 stages train to bitwise identical losses and parameters', (t) => {
  const one = run(1), two = run(2), four = run(4);
  t.true(one.losses[9] < one.losses[0] - 0.5, `training moved the loss: ${one.losses[0]} → ${one.losses[9]}`);
  t.not(one.hash, one.initial);
  t.is(two.initial, one.initial, 'initialisation depends on (seed, layer), not on the split');
  t.is(four.initial, one.initial);
  t.deepEqual(two.losses, one.losses);
  t.deepEqual(four.losses, one.losses);
  t.is(two.hash, one.hash);
  t.is(four.hash, one.hash);
});

test('a different seed gives different weights', (t) => {
  const a = new LocalPipeline(smallModel, smallOptim, 2, 1), b = new LocalPipeline(smallModel, smallOptim, 2, 2);
  t.not(a.paramHash(), b.paramHash());
});
