// Shapes for `caravan simulate`: a model, a split, a schedule and a device,
// computed by the synthetic backend. `orion-100b` is the run caravan answers:
// a Llama-style 100B model (90 layers, d = 9216) in 16 stages × 3 replicas on
// A100s in 5 datacenters, with activations shrunk 64× at the boundaries (a
// microbatch of 2 × 4096 tokens crosses as 2.36 MB: 8192 × 9216 bf16 ÷ 64).
import type { RunConfig, StageDevice, SyntheticCompute } from '../../schemas/run-config.ts';
import { stageTrainingBytes } from '../../schemas/model-memory.ts';
import { speedAwareLayers } from '../config/speed-split.ts';

export interface SimulatePreset {
  readonly description: string;
  readonly config: RunConfig;
  readonly datacenters: number;
  /** Devices of different speeds, given to the stages in turn (stage s gets mix[s mod n]). */
  readonly mix?: readonly StageDevice[];
  /** With more than one replica, the Bridge combines them every this many steps. */
  readonly syncEvery?: number;
}

// Peak dense bf16 tensor TFLOPS and memory, as the vendors give them. Memory bounds the speed-aware split
// (schemas/model-memory.ts); the synthetic backend does not allocate it.
const DEVICES = {
  h100: { device: 'H100 SXM', peakTflops: 989, memoryGiB: 80 },
  a100: { device: 'A100 80GB', peakTflops: 312, memoryGiB: 80 },
  rtx4090: { device: 'RTX 4090', peakTflops: 165, memoryGiB: 24 },
  rtx3090: { device: 'RTX 3090', peakTflops: 71, memoryGiB: 24 },
} as const satisfies Record<string, StageDevice>;

export type LayerSplit = 'even' | 'speed';

/**
 * For `stages` stages of the preset: its devices (its mix given to the stages in turn, or its one device) in
 * `synthetic`, and with split 'speed' the layers per stage that balance them among the splits that fit the devices'
 * memory (runtime/config/speed-split.ts).
 */
export function splitStages(p: SimulatePreset, synthetic: SyntheticCompute, stages: number, split: LayerSplit): { synthetic: SyntheticCompute; stageLayers?: number[] } {
  const stageDevices = p.mix ? Array.from({ length: stages }, (_, s) => p.mix![s % p.mix!.length]) : undefined;
  const speeds = stageDevices?.map((d) => d.peakTflops) ?? Array.from({ length: stages }, () => synthetic.peakTflops);
  const t = p.config.training;
  const fits = (stage: number, begin: number, end: number) => {
    const limit = stageDevices?.[stage].memoryGiB;
    return limit === undefined || stageTrainingBytes(p.config.model, { begin, end, stage, stages, microbatches: t.microbatches, microbatchTokens: t.batchSize * t.seqLen }) <= limit * 2 ** 30;
  };
  return {
    synthetic: { ...synthetic, ...(stageDevices ? { stageDevices } : {}) },
    ...(split === 'speed' ? { stageLayers: speedAwareLayers(p.config.model, t.seqLen, speeds, fits) } : {}),
  };
}

const optim = { lr: 1e-4, minLrRatio: 0.1, warmupSteps: 0, totalSteps: 1000, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };

const llama100b = { vocabSize: 32000, dModel: 9216, nLayers: 90, nHeads: 72, nKvHeads: 8, ffnHidden: 33792, maxSeqLen: 4096, ropeTheta: 500000, normEps: 1e-5, tiedEmbeddings: false };

// Every preset: microbatches of 2 × 4096 tokens, checkpoints every step (synthetic states are tiny, and each
// checkpoint lets the edge streams drop the step's frames), activations shrunk 64× from bf16 at the boundaries.
const training = { seed: 1, maxGradNorm: 1, tokenizer: 'byte' as const, cpuThreads: 1, lz4: false, nonFinite: 'stop' as const, steps: 3, batchSize: 2, seqLen: 4096, checkpointEvery: 1 };
const frameBytes = (dModel: number) => (2 * 4096 * dModel * 2) / 64;

/** A preset of `model` in `stages` × `replicas` on A100s at efficiency 0.5. */
function preset(description: string, datacenters: number, model: RunConfig['model'], shape: { stages: number; replicas: number; microbatches: number; timeScale: number }): SimulatePreset {
  const { timeScale, ...split } = shape;
  return {
    description, datacenters,
    config: { model, optim, training: { ...training, ...split, synthetic: { ...DEVICES.a100, efficiency: 0.5, timeScale, frameBytes: frameBytes(model.dModel) } } },
  };
}

const llama7b = { vocabSize: 32000, dModel: 4096, nLayers: 32, nHeads: 32, nKvHeads: 32, ffnHidden: 11008, maxSeqLen: 4096, ropeTheta: 10000, normEps: 1e-5, tiedEmbeddings: false };

export const SIMULATE_PRESETS: Readonly<Record<string, SimulatePreset>> = {
  // The Bridge every step: a simulation is a few steps long, and each is then an outer step whose sync is measured.
  'orion-100b': {
    ...preset('100B Llama (90 layers, d=9216), 16 stages × 3 replicas joined by the Bridge every step, A100s, 5 datacenters, 2.36 MB frames', 5, llama100b,
      { stages: 16, replicas: 3, microbatches: 32, timeScale: 1 }),
    syncEvery: 1,
  },
  'llama-7b': preset('a 7B Llama (32 layers, d=4096) in 4 stages × 1 replica over 4 datacenters at the A100s\' own speed, 1 MiB frames: for WAN sweeps (--wan)', 4, llama7b,
    { stages: 4, replicas: 1, microbatches: 8, timeScale: 1 }),
  'mixed-7b': {
    ...preset('the 7B Llama in 4 stages × 1 replica on an H100, an A100, an RTX 4090 and an RTX 3090, 2 datacenters: for --split speed against even', 2, llama7b,
      { stages: 4, replicas: 1, microbatches: 8, timeScale: 4 }),
    mix: [DEVICES.h100, DEVICES.a100, DEVICES.rtx4090, DEVICES.rtx3090],
  },
  'orion-mini': preset('the same model in 4 stages × 1 replica over 2 datacenters, 8 microbatches: a quick check', 2, llama100b,
    { stages: 4, replicas: 1, microbatches: 8, timeScale: 20 }),
};
