// Named run configurations. `tiny` is what `npm start` trains; `bench` is the
// engine benchmark's model, wide enough that matrix work dominates; `wide` the
// compression benchmark's.
import type { RunConfig } from '../../schemas/run-config.ts';

export type RunPreset = RunConfig;

const tiny: RunPreset = {
  model: { vocabSize: 256, dModel: 128, nLayers: 4, nHeads: 4, nKvHeads: 2, ffnHidden: 352, maxSeqLen: 128, ropeTheta: 10000, normEps: 1e-5, tiedEmbeddings: false },
  optim: { lr: 3e-3, minLrRatio: 0.1, warmupSteps: 20, totalSteps: 200, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 },
  training: { steps: 200, microbatches: 2, batchSize: 8, seqLen: 128, stages: 4, replicas: 1, seed: 1, maxGradNorm: 1, tokenizer: 'byte', cpuThreads: 2, checkpointEvery: 10, lz4: true, nonFinite: 'stop' },
};

const bench: RunPreset = {
  model: { vocabSize: 4096, dModel: 512, nLayers: 6, nHeads: 8, nKvHeads: 8, ffnHidden: 1376, maxSeqLen: 256, ropeTheta: 10000, normEps: 1e-5, tiedEmbeddings: false },
  optim: { lr: 1e-3, minLrRatio: 0.1, warmupSteps: 10, totalSteps: 1000, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 },
  training: { steps: 10, microbatches: 1, batchSize: 8, seqLen: 256, stages: 1, replicas: 1, seed: 1, maxGradNorm: 1, tokenizer: 'byte', cpuThreads: 2, checkpointEvery: 10, lz4: true, nonFinite: 'stop' },
};

// The compression benchmark's model: wide enough (d = 256) that a bottleneck
// of d/64 channels at the stage boundary means something.
const wide: RunPreset = {
  model: { vocabSize: 256, dModel: 256, nLayers: 4, nHeads: 4, nKvHeads: 4, ffnHidden: 704, maxSeqLen: 128, ropeTheta: 10000, normEps: 1e-5, tiedEmbeddings: false },
  optim: { lr: 2e-3, minLrRatio: 0.1, warmupSteps: 20, totalSteps: 300, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 },
  training: { steps: 300, microbatches: 2, batchSize: 8, seqLen: 128, stages: 2, replicas: 1, seed: 1, maxGradNorm: 1, tokenizer: 'byte', cpuThreads: 2, checkpointEvery: 10, lz4: true, nonFinite: 'stop' },
};

export const PRESETS: Readonly<Record<string, RunPreset>> = { tiny, bench, wide };

export function preset(name: string): RunPreset {
  const p = PRESETS[name];
  if (!p) throw new Error(`unknown preset '${name}': expected one of ${Object.keys(PRESETS).join(', ')}`);
  return p;
}
