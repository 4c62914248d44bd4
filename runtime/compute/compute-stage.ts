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

export interface ComputeStage {
  readonly isFirst: boolean;
  readonly isLast: boolean;
  /** Channels of what comes in across layerBegin and goes out across layerEnd (0 where tokens come in, or a loss goes out). */
  readonly inWidth: number;
  readonly outWidth: number;
  /** Whether a forward of a middle stage needs its microbatch's tokens too. */
  readonly needsTokens: boolean;
  /** The GPU it runs on; absent on the CPU. */
  readonly cuda?: CudaDeviceInfo;
  readonly paramCount: number;
  /** A microbatch's forward, stashed for its backward: the output, or on the last stage the loss. */
  forwardTrain(mb: number, input: Int32Array | Float32Array, B: number, T: number, targets?: Int32Array, tokens?: Int32Array): Float32Array | number;
  /** Its backward, accumulated into the gradients: the gradient for the previous stage, or null on the first. */
  backward(mb: number, gradOut: Float32Array | null): Float32Array | null;
  /** Per-tensor sums of squares of the accumulated gradients, for global-norm clipping. */
  gradSumSquares(): Float64Array;
  step(gradScale: number): number;
  zeroGrad(): void;
  state(): Uint8Array;
  loadState(bytes: Uint8Array, source: string): void;
  params(): Float32Array;
  setParams(values: Float32Array): void;
}

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

/** The stage of layers [layerBegin, layerEnd) of the run's model, on `device`: synthetic where the run says so. */
export function createComputeStage(config: RunConfig, device: HostDevice, layerBegin: number, layerEnd: number): SlotCompute {
  const { model, optim, training: t } = config;
  if (t.synthetic) {
    const stage = new SyntheticStage({ model, layerBegin, layerEnd, batchSize: t.batchSize, seqLen: t.seqLen, synthetic: t.synthetic });
    return { stage, synthetic: true, peakGflops: () => stage.peakGflops };
  }
  const onGpu = device.kind === 'cuda' ? { device: 'cuda' as const, gpu: device.gpu.index } : {};
  const stage: ComputeStage = new EngineStage({ model, optim, layerBegin, layerEnd, seed: t.seed, threads: t.cpuThreads, ...onGpu });
  return { stage, synthetic: false, peakGflops: () => (stage.cuda ? stage.cuda.peakBf16Tflops * 1000 : sgemmGflops(512, 512, 512, 8)) };
}
