// A host's training speed for the run's own shapes, measured before it
// registers, so the coordinator (and `caravan status`, and an operator
// choosing a split by speed: speed-split.ts) knows what each machine does
// with this model, not what its datasheet says. One transformer layer of the
// run's model (a middle one where there is one, so neither the embedding nor
// the head is counted) trains on one microbatch of the run's shape [B, T]:
// a forward and a backward, timed after one untimed round that warms the
// caches and the allocator. Speed is that layer's training FLOPs (three
// forwards' worth, model-flops.ts) over the time.
import { EngineStage } from '../../native/index.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import { stageForwardFlopsPerToken } from '../../schemas/model-flops.ts';
import type { HostDevice } from '../compute/compute-stage.ts';

export interface MeasuredSpeed {
  /** Training TFLOP/s of one layer of the run's model at its microbatch shape. */
  readonly tflops: number;
  /** The timed forward and backward, ms. */
  readonly ms: number;
}

/** Measures one layer of the run's model training on `device` (see the top of the file); undefined for a simulated run. */
export function measureTrainingSpeed(config: RunConfig, device: HostDevice): MeasuredSpeed | undefined {
  const { model, optim, training: t } = config;
  if (t.synthetic) return undefined;  // a simulated device's speed is the run's own setting, per stage
  const begin = model.nLayers >= 3 ? 1 : 0;
  const end = begin + 1;
  const stage = new EngineStage({
    model, optim, layerBegin: begin, layerEnd: end, seed: t.seed, threads: t.cpuThreads,
    ...(device.kind === 'cuda' ? { device: 'cuda' as const, gpu: device.gpu.index } : {}),
  });
  const B = t.batchSize, T = t.seqLen;
  // Inputs of the right shape: token ids on stage 0, activations [B, T, inWidth] otherwise; a loss on the last stage.
  const input = stage.isFirst ? new Int32Array(B * T).map((_, i) => i % model.vocabSize) : new Float32Array(B * T * stage.inWidth).map((_, i) => Math.sin(i) * 0.1);
  const targets = stage.isLast ? new Int32Array(B * T).map((_, i) => (i * 7) % model.vocabSize) : undefined;
  const tokens = stage.needsTokens ? new Int32Array(B * T).map((_, i) => i % model.vocabSize) : undefined;
  const gradOut = stage.isLast ? null : new Float32Array(B * T * stage.outWidth).fill(1e-3);
  const round = (mb: number) => {
    stage.forwardTrain(mb, input, B, T, targets, tokens);
    stage.backward(mb, gradOut);
  };
  round(0);
  const began = performance.now();
  round(1);
  const ms = performance.now() - began;
  const flops = 3 * stageForwardFlopsPerToken(model, T, begin, end) * B * T;
  return { tflops: flops / (ms / 1000) / 1e12, ms };
}
