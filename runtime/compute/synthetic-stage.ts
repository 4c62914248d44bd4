// The synthetic compute backend: a pipeline stage that does no math and
// takes the time the simulated device would, so 48 stages of a 100B model
// fit on a laptop. A forward sleeps for the stage's model FLOPs on the
// microbatch ÷ (peak · efficiency) ÷ timeScale, a backward twice that; the
// outputs are frames of the real size (their values are a constant). It
// stands in for EngineStage behind the same interface (compute-stage.ts),
// so the hosts run the same actors, transport, checkpoints and recovery as
// for a real model.
//
// The sleep blocks the thread (Atomics.wait), as an engine call does: the
// host's I/O waits for it exactly as it waits for real compute.
import { decodeSafeTensors, encodeSafeTensors } from '../../native/index.ts';
import type { LlamaConfig } from '../../schemas/model-config.ts';
import { stageForwardFlopsPerToken } from '../../schemas/model-flops.ts';
import type { SyntheticCompute } from '../../schemas/run-config.ts';
import type { ComputeStage } from './compute-stage.ts';

const sleeper = new Int32Array(new SharedArrayBuffer(4));

function sleepMs(ms: number): void {
  if (ms > 0) Atomics.wait(sleeper, 0, 0, ms);
}

export interface SyntheticStageSpec {
  readonly model: LlamaConfig;
  readonly layerBegin: number;
  readonly layerEnd: number;
  readonly batchSize: number;
  readonly seqLen: number;
  readonly synthetic: SyntheticCompute;
}

export class SyntheticStage implements ComputeStage {
  readonly isFirst: boolean;
  readonly isLast: boolean;
  readonly inWidth: number;
  readonly outWidth: number;
  readonly needsTokens = false;
  readonly cuda = undefined;
  readonly paramCount = 16;
  /** Wall ms of one forward of one microbatch (a backward takes twice as long). */
  readonly forwardMs: number;
  /** The device's peak as this run's clock sees it (peak · timeScale), GFLOP/s: what MFU is taken against. */
  readonly peakGflops: number;
  private readonly frameWidth: number;
  private readonly weights = new Float32Array(16);
  private steps = 0;

  constructor(private readonly spec: SyntheticStageSpec) {
    const { model, layerBegin, layerEnd, batchSize: B, seqLen: T, synthetic: s } = spec;
    this.isFirst = layerBegin === 0;
    this.isLast = layerEnd === model.nLayers;
    // [B, T, width] float32 of frameBytes: the payload the real boundary would carry.
    this.frameWidth = Math.max(1, Math.round(s.frameBytes / (B * T * 4)));
    this.inWidth = this.isFirst ? 0 : this.frameWidth;
    this.outWidth = this.isLast ? 0 : this.frameWidth;
    const flops = stageForwardFlopsPerToken(model, T, layerBegin, layerEnd) * B * T;
    this.forwardMs = (flops / (s.peakTflops * 1e12 * s.efficiency)) * 1000 / s.timeScale;
    this.peakGflops = s.peakTflops * 1000 * s.timeScale;
  }

  forwardTrain(mb: number, _input: Int32Array | Float32Array, B: number, T: number): Float32Array | number {
    sleepMs(this.forwardMs);
    // A loss that falls with the microbatch index: something finite and deterministic for the replica to report.
    if (this.isLast) return Math.log(this.spec.model.vocabSize) * Math.exp(-mb / 10_000);
    return new Float32Array(B * T * this.frameWidth).fill(0.5);
  }

  backward(_mb: number, _gradOut: Float32Array | null): Float32Array | null {
    sleepMs(2 * this.forwardMs);
    if (this.isFirst) return null;
    return new Float32Array(this.spec.batchSize * this.spec.seqLen * this.frameWidth).fill(0.25);
  }

  gradSumSquares(): Float64Array {
    return Float64Array.of(1);
  }

  step(_gradScale: number): number {
    this.steps++;
    this.weights[this.steps % 16] += 1;
    return 0;
  }

  zeroGrad(): void {}

  state(): Uint8Array {
    return encodeSafeTensors([{ name: 'synthetic.params', shape: [16], data: this.weights }, { name: 'optimizer.step', shape: [1], data: Float32Array.of(this.steps) }], { format: 'caravan-synthetic' });
  }

  loadState(bytes: Uint8Array, source: string): void {
    const file = decodeSafeTensors(bytes, source);
    const params = file.tensors.get('synthetic.params'), step = file.tensors.get('optimizer.step');
    if (file.metadata.format !== 'caravan-synthetic' || !params || params.data.length !== 16 || !step) throw new Error(`${source}: not a synthetic stage's state`);
    this.weights.set(params.data);
    this.steps = step.data[0];
  }

  /** A stand-in parameter vector (16 values that count the steps), so the Bridge has something to synchronise. */
  params(): Float32Array {
    return this.weights;
  }

  setParams(values: Float32Array): void {
    if (values.length !== 16) throw new Error(`a synthetic stage has 16 parameters, not ${values.length}`);
    this.weights.set(values);
  }
}
