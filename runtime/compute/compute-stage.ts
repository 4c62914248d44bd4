// What a slot's host computes with: a pipeline stage over a contiguous slice
// of layers, driven one microbatch at a time (forward, backward), one update
// per step, and saved and loaded whole for checkpoints and the Bridge. Two
// backends give it: the native engine (native/ EngineStage, which has these
// methods and knows nothing of this file) and the synthetic stage of a
// simulation (synthetic-stage.ts), which computes nothing and takes the
// simulated device's time. `createComputeStage` picks one from the run's
// config; the host above it is the same for both.
import { EngineStage, sgemmGflops, type CudaDeviceInfo } from '../../native/index.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import { SyntheticStage } from './synthetic-stage.ts';
import { stageDevice, stageRanges } from '../../schemas/stage-layers.ts';

/** What the host drives: the engine's surface (its computations off the event loop), which the synthetic stage implements too. */
export type ComputeStage = Pick<EngineStage, 'isFirst' | 'isLast' | 'inWidth' | 'outWidth' | 'needsTokens' | 'cuda' | 'paramCount'
  | 'forwardTrainAsync' | 'backwardAsync' | 'backwardInputAsync' | 'backwardWeightAsync' | 'stashed' | 'stashedBytes' | 'drop'
  | 'gradSumSquares' | 'step' | 'stepWithUndo' | 'undoStep' | 'dropUndo' | 'zeroGrad' | 'state' | 'loadState' | 'params' | 'setParams'>;

export type { DeviceResult } from '../../native/index.ts';

/** Where this host computes: the CPU, or one GPU it has already opened. */
export type HostDevice = { readonly kind: 'cpu' } | { readonly kind: 'cuda'; readonly gpu: CudaDeviceInfo };

export interface SlotCompute {
  readonly stage: ComputeStage;
  /** A synthetic stage reads no data: its inputs are stand-ins of the right size. */
  readonly synthetic: boolean;
  /**
   * The peak MFU is taken against, GFLOP/s: a GPU's dense bf16 peak from the
   * engine's table, the CPU's practical fp32 peak (a plain sgemm of a few
   * hundred ms at most, measured when called), or the simulated device's.
   */
  peakGflops(): number;
}

/** Pipeline stage `s` of the run's model (its layers as the run splits them), on `device`: synthetic where the run says so. */
export function createComputeStage(config: RunConfig, device: HostDevice, s: number): SlotCompute {
  const { model, optim, training: t } = config;
  const [layerBegin, layerEnd] = stageRanges(config)[s];
  if (t.synthetic) {
    const stage = new SyntheticStage({ model, layerBegin, layerEnd, batchSize: t.batchSize, seqLen: t.seqLen, synthetic: stageDevice(t.synthetic, s) });
    return { stage, synthetic: true, peakGflops: () => stage.peakGflops };
  }
  const onGpu = device.kind === 'cuda' ? { device: 'cuda' as const, gpu: device.gpu.index } : {};
  const stage: ComputeStage = new EngineStage({ model, optim, layerBegin, layerEnd, seed: t.seed, threads: t.cpuThreads, ...onGpu });
  return { stage, synthetic: false, peakGflops: () => (stage.cuda ? stage.cuda.peakBf16Tflops * 1000 : sgemmGflops(512, 512, 512, 8)) };
}
