// The synthetic backend's arithmetic and state, by hand: a stage's forward
// takes its model FLOPs on the microbatch ÷ (peak · efficiency) ÷ timeScale,
// a backward twice that; frames have the real payload size; state round
// trips and a foreign state is refused by name.
import test from 'ava';
import { stageForwardFlopsPerToken, forwardFlopsPerToken } from '../../schemas/model-flops.ts';
import { validateRunConfig } from '../../schemas/run-config.ts';
import { SyntheticStage } from '../../runtime/compute/synthetic-stage.ts';
import { SIMULATE_PRESETS } from '../../runtime/synthetic/simulate-presets.ts';
import { splitLayers } from '../../native/index.ts';

const orion = SIMULATE_PRESETS['orion-100b'].config;

test('orion-100b is a 100B Llama in 16 stages whose boundary frames are 1/64 of bf16 activations', (t) => {
  const m = orion.model;
  const params = m.nLayers * (m.dModel * m.dModel * 2 + 2 * m.dModel * m.nKvHeads * (m.dModel / m.nHeads) + 3 * m.dModel * m.ffnHidden) + 2 * m.vocabSize * m.dModel;
  t.true(params > 100e9 && params < 103e9, `${(params / 1e9).toFixed(1)}B parameters`);
  const s = orion.training.synthetic!;
  t.is(s.frameBytes, (orion.training.batchSize * orion.training.seqLen * m.dModel * 2) / 64);
  t.notThrows(() => validateRunConfig(orion));
  // The stages' FLOPs add up to the model's (the embedding is a lookup, counted by neither).
  const T = orion.training.seqLen;
  const sum = splitLayers(m.nLayers, 16).reduce((n, [b, e]) => n + stageForwardFlopsPerToken(m, T, b, e), 0);
  t.is(sum, forwardFlopsPerToken(m, T));
});

test('forward and backward take the device time of the stage\'s FLOPs, scaled; frames have the real size', async (t) => {
  const synthetic = { device: 'test', peakTflops: 100, efficiency: 0.5, timeScale: 1000, frameBytes: 2 * 64 * 16 * 4 };
  const model = { ...orion.model, nLayers: 4 };
  const stage = new SyntheticStage({ model, layerBegin: 1, layerEnd: 3, batchSize: 2, seqLen: 64, synthetic });
  const flops = stageForwardFlopsPerToken(model, 64, 1, 3) * 2 * 64;
  t.is(stage.forwardMs, (flops / (100e12 * 0.5)) * 1000 / 1000);
  t.is(stage.peakGflops, 100e3 * 1000);
  t.is(stage.inWidth, 16);
  t.is(stage.outWidth, 16);
  const t0 = performance.now();
  const out = (await stage.forwardTrainAsync(0, new Float32Array(0), 2, 64)).value as Float32Array;
  const fwd = performance.now() - t0;
  t.is(out.length, 2 * 64 * 16, 'a frame of frameBytes');
  const t1 = performance.now();
  t.is((await stage.backwardAsync(0, out)).value!.length, 2 * 64 * 16);
  const bwd = performance.now() - t1;
  t.true(fwd >= stage.forwardMs * 0.9 && bwd >= 2 * stage.forwardMs * 0.9, `forward ${fwd.toFixed(1)} ms, backward ${bwd.toFixed(1)} ms for ${stage.forwardMs.toFixed(1)} ms`);
  const last = new SyntheticStage({ model, layerBegin: 3, layerEnd: 4, batchSize: 2, seqLen: 64, synthetic });
  t.is(typeof (await last.forwardTrainAsync(5, out, 2, 64)).value, 'number', 'the last stage returns a loss');
  t.is(last.outWidth, 0);
  t.is((await new SyntheticStage({ model, layerBegin: 0, layerEnd: 1, batchSize: 2, seqLen: 64, synthetic }).backwardAsync(0, out)).value, null, 'stage 0 sends no gradient');
});

test('state round trips; another kind of state is refused by name', (t) => {
  const synthetic = { device: 'test', peakTflops: 100, efficiency: 0.5, timeScale: 1e6, frameBytes: 1024 };
  const a = new SyntheticStage({ model: orion.model, layerBegin: 0, layerEnd: 6, batchSize: 1, seqLen: 16, synthetic });
  a.step(1); a.step(1);
  const b = new SyntheticStage({ model: orion.model, layerBegin: 0, layerEnd: 6, batchSize: 1, seqLen: 16, synthetic });
  b.loadState(a.state(), 'a');
  t.deepEqual(b.state(), a.state());
  t.deepEqual(b.params(), a.params());
  t.throws(() => b.loadState(new Uint8Array(10), 'junk'), { message: /junk: not a valid safetensors blob/ });
  t.throws(() => b.setParams(new Float32Array(3)), { message: 'a synthetic stage has 16 parameters, not 3' });
});

test('a bad synthetic config is refused naming the field', (t) => {
  const bad = (synthetic: unknown) => () => validateRunConfig({ ...orion, training: { ...orion.training, synthetic } });
  t.throws(bad({ ...orion.training.synthetic, efficiency: 1.5 }), { message: 'invalid run config: training.synthetic.efficiency must be in (0, 1], got 1.5' });
  t.throws(bad({ ...orion.training.synthetic, timeScale: 0 }), { message: 'invalid run config: training.synthetic.timeScale must be a positive number, got 0' });
  t.throws(bad('fast'), { message: /training.synthetic must be an object/ });
});
