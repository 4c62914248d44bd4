// The backward's split into B (input gradient) and W (weight gradient), by
// hand: the halves add up to the full backward (2 × forward) on every stage
// of every preset, B − W is the attention products' 8·T·d per layer (their backward, all input), the
// orion-100b ratio is what the matmul shapes say, and the synthetic stage
// sleeps each half and stashes a microbatch from its forward to its W.
import test from 'ava';
import { forwardFlopsPerToken, opCostsFromFlops, stageBackwardFlopsPerToken, stageForwardFlopsPerToken, trainFlopsPerToken } from '../../schemas/model-flops.ts';
import { SyntheticStage } from '../../runtime/compute/synthetic-stage.ts';
import { SIMULATE_PRESETS } from '../../runtime/synthetic/simulate-presets.ts';
import { splitLayers } from '../../native/index.ts';

test('B + W is the full backward on every stage of every preset, and B − W the attention products', (t) => {
  for (const [name, { config }] of Object.entries(SIMULATE_PRESETS)) {
    const m = config.model, T = config.training.seqLen;
    let total = 0;
    for (const [b, e] of splitLayers(m.nLayers, config.training.stages)) {
      const { input, weight } = stageBackwardFlopsPerToken(m, T, b, e);
      const forward = stageForwardFlopsPerToken(m, T, b, e);
      t.is(input + weight, 2 * forward, `${name} [${b}, ${e})`);
      t.is(input - weight, (e - b) * 8 * T * m.dModel, `${name} [${b}, ${e})`);
      total += forward + input + weight;
    }
    t.is(total, trainFlopsPerToken(m, T), `${name}: the stages add up to the model's training FLOPs`);
  }
});

test('orion-100b: F : B : W per layer is 1 : 1.063 : 0.937, from the matmul weights and the attention products', (t) => {
  const { model: m, training } = SIMULATE_PRESETS['orion-100b'].config;
  const T = training.seqLen, d = m.dModel, hd = d / m.nHeads;
  // Per layer: q and o (d × d), k and v (d × kv·hd), gate, up, down (d × ffn).
  const weights = 2 * d * d + 2 * d * m.nKvHeads * hd + 3 * d * m.ffnHidden;
  const attention = 4 * T * d;
  const mid = stageBackwardFlopsPerToken(m, T, 6, 12);  // a middle stage: no head
  t.is(mid.weight, 6 * 2 * weights);
  t.is(mid.input, 6 * (2 * weights + 2 * attention));
  const F = stageForwardFlopsPerToken(m, T, 6, 12);
  t.is((mid.input / F).toFixed(3), '1.063');
  t.is((mid.weight / F).toFixed(3), '0.937');
  const costs = opCostsFromFlops(m, T, splitLayers(m.nLayers, 16), training.batchSize * T);
  t.is(costs.length, 16);
  // Stages 14 and 15 both have 5 layers; the last one also runs the head (V × d weights), in B and in W alike.
  const head = 2 * m.vocabSize * d * training.batchSize * T;
  t.is(costs[15].W - costs[14].W, head);
  t.is(costs[15].B - costs[14].B, head);
  t.is(costs.reduce((n, c) => n + c.F, 0), forwardFlopsPerToken(m, T) * training.batchSize * T);
});

test('the synthetic stage sleeps B and W by their FLOPs, B + W = the fused backward, and stashes from forward to W', async (t) => {
  const { model } = SIMULATE_PRESETS['orion-100b'].config;
  const small = { ...model, nLayers: 4 };
  const synthetic = { device: 'test', peakTflops: 100, efficiency: 0.5, timeScale: 1000, frameBytes: 2 * 64 * 16 * 4 };
  const stage = new SyntheticStage({ model: small, layerBegin: 1, layerEnd: 3, batchSize: 2, seqLen: 64, synthetic });
  const { input, weight } = stageBackwardFlopsPerToken(small, 64, 1, 3);
  t.is(stage.backwardInputMs, (input * 2 * 64 / (100e12 * 0.5)) * 1000 / 1000);
  t.is(stage.backwardWeightMs, (weight * 2 * 64 / (100e12 * 0.5)) * 1000 / 1000);
  t.true(Math.abs(stage.backwardInputMs + stage.backwardWeightMs - 2 * stage.forwardMs) < 1e-9 * stage.forwardMs);
  t.is(stage.stashBytesPerMicrobatch, 34 * 2 * 64 * small.dModel * 2);
  const out = (await stage.forwardTrainAsync(0, new Float32Array(0), 2, 64)).value as Float32Array;
  await stage.forwardTrainAsync(1, out, 2, 64);
  t.is(stage.stashedBytes(), 2 * stage.stashBytesPerMicrobatch);
  const t0 = performance.now();
  t.is((await stage.backwardInputAsync(0, out)).value!.length, 2 * 64 * 16, 'B returns the gradient frame');
  const b = performance.now() - t0;
  t.is(stage.stashedBytes(), 2 * stage.stashBytesPerMicrobatch, 'B keeps the stash for W');
  const t1 = performance.now();
  await stage.backwardWeightAsync(0);
  const w = performance.now() - t1;
  t.is(stage.stashedBytes(), stage.stashBytesPerMicrobatch);
  t.true(b >= stage.backwardInputMs * 0.9 && w >= stage.backwardWeightMs * 0.9, `B ${b.toFixed(1)} ms, W ${w.toFixed(1)} ms`);
  await stage.backwardAsync(1, out);
  t.is(stage.stashedBytes(), 0, 'the fused backward frees its stash');
  const first = new SyntheticStage({ model: small, layerBegin: 0, layerEnd: 1, batchSize: 2, seqLen: 64, synthetic });
  t.is((await first.backwardInputAsync(0, out)).value, null, 'stage 0 sends no gradient');
});
