// A host's measured training speed for the run's model (host/speed-probe.ts),
// on the real CPU engine: a positive figure whose FLOPs are one middle layer's
// training at the run's microbatch shape; a simulated run has no speed to
// measure (its stages take the simulated device's time).
import test from 'ava';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { measureTrainingSpeed } from '../../runtime/host/speed-probe.ts';
import { stageForwardFlopsPerToken } from '../../schemas/model-flops.ts';

test('one layer of the run\'s model trains at a measured speed: its FLOPs over the timed forward and backward', async (t) => {
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { batchSize: 2, seqLen: 32 } } });
  const speed = measureTrainingSpeed(config, { kind: 'cpu' });
  if (!speed) return t.fail('no speed measured');
  t.true(speed.ms > 0 && Number.isFinite(speed.tflops) && speed.tflops > 0, JSON.stringify(speed));
  // Three forwards' worth of layer 1 (a middle layer: no embedding, no head) over 2 × 32 tokens.
  const flops = 3 * stageForwardFlopsPerToken(config.model, 32, 1, 2) * 2 * 32;
  t.is(Number((flops / (speed.ms / 1000) / 1e12).toPrecision(9)), Number(speed.tflops.toPrecision(9)));
});

test('a simulated run has no speed to measure', async (t) => {
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { synthetic: { device: 'A100', peakTflops: 312, efficiency: 0.5, timeScale: 1, frameBytes: 1024 } } } });
  t.is(measureTrainingSpeed(config, { kind: 'cpu' }), undefined);
});
