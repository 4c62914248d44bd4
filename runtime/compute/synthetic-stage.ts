// The synthetic compute backend: a pipeline stage that does no math and
// takes the time the simulated device would, so 48 stages of a 100B model
// fit on a laptop. A forward sleeps for the stage's model FLOPs on the
// microbatch ÷ (peak · efficiency) ÷ timeScale, a backward twice that, split
// for zero-bubble schedules into its input half (backwardInput, B) and its
// weight half (backwardWeight, W) by their own FLOPs
// (stageBackwardFlopsPerToken); the outputs are frames of the real size
// (their values are a constant). It
// stands in for EngineStage behind the same interface (compute-stage.ts),
// so the hosts run the same actors, transport, checkpoints and recovery as
// for a real model.
//
// Its computations are the engine's off-loop calls (…Async): the device's
// time passes on a timer while the event loop goes on with the host's I/O,
// as it does beside the engine's, which run on a pool thread (native/index.ts).
import { decodeSafeTensors, encodeSafeTensors } from '../../native/index.ts';
import type { LlamaConfig } from '../../schemas/model-config.ts';
import { stageBackwardFlopsPerToken, stageForwardFlopsPerToken } from '../../schemas/model-flops.ts';
import type { SyntheticCompute } from '../../schemas/run-config.ts';
import type { ComputeStage, DeviceResult } from './compute-stage.ts';

/** The device busy for `ms` while the event loop goes on. */
const deviceTime = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

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
  /** Wall ms of the input-gradient half of a backward (B) and of the weight-gradient half (W); together 2 · forwardMs. */
  readonly backwardInputMs: number;
  readonly backwardWeightMs: number;
  /**
   * Bytes a microbatch keeps on the stage from its forward to its weight
   * gradient: 34 · B·T·d bytes per layer, Korthikanti et al. 2022's bf16
   * activations of a layer with the attention scores not kept (flash
   * attention). What a schedule's stash limit costs in memory.
   */
  readonly stashBytesPerMicrobatch: number;
  /** The device's peak as this run's clock sees it (peak · timeScale), GFLOP/s: what MFU is taken against. */
  readonly peakGflops: number;
  private readonly frameWidth: number;
  private readonly weights = new Float32Array(16);
  private steps = 0;
  /** Microbatches forwarded whose weight gradient (or fused backward) has not run. */
  private readonly stash = new Set<number>();
  private undo: { weights: Float32Array; steps: number } | null = null;

  constructor(private readonly spec: SyntheticStageSpec) {
    const { model, layerBegin, layerEnd, batchSize: B, seqLen: T, synthetic: s } = spec;
    this.isFirst = layerBegin === 0;
    this.isLast = layerEnd === model.nLayers;
    // [B, T, width] float32 of frameBytes: the payload the real boundary would carry.
    this.frameWidth = Math.max(1, Math.round(s.frameBytes / (B * T * 4)));
    this.inWidth = this.isFirst ? 0 : this.frameWidth;
    this.outWidth = this.isLast ? 0 : this.frameWidth;
    const flops = stageForwardFlopsPerToken(model, T, layerBegin, layerEnd) * B * T;
    const ms = (perToken: number) => ((perToken * B * T) / (s.peakTflops * 1e12 * s.efficiency)) * 1000 / s.timeScale;
    this.forwardMs = (flops / (s.peakTflops * 1e12 * s.efficiency)) * 1000 / s.timeScale;
    const backward = stageBackwardFlopsPerToken(model, T, layerBegin, layerEnd);
    this.backwardInputMs = ms(backward.input);
    this.backwardWeightMs = ms(backward.weight);
    this.stashBytesPerMicrobatch = 34 * B * T * model.dModel * (layerEnd - layerBegin);
    this.peakGflops = s.peakTflops * 1000 * s.timeScale;
  }

  async forwardTrainAsync(mb: number, _input: Int32Array | Float32Array, B: number, T: number): Promise<DeviceResult<Float32Array | number>> {
    await deviceTime(this.forwardMs);
    this.stash.add(mb);
    // A loss that falls with the microbatch index: something finite and deterministic for the replica to report.
    const value = this.isLast ? Math.log(this.spec.model.vocabSize) * Math.exp(-mb / 10_000) : new Float32Array(B * T * this.frameWidth).fill(0.5);
    return { value, deviceMs: this.forwardMs };
  }

  /** The fused backward (1F1B): B then W, 2 · forwardMs in all. */
  async backwardAsync(mb: number, gradOut: Float32Array | null): Promise<DeviceResult<Float32Array | null>> {
    const b = await this.backwardInputAsync(mb, gradOut);
    const w = await this.backwardWeightAsync(mb);
    return { value: b.value, deviceMs: b.deviceMs + w.deviceMs };
  }

  /** B: the gradient for the previous stage (null on stage 0); the microbatch stays stashed for its W. */
  async backwardInputAsync(_mb: number, _gradOut: Float32Array | null): Promise<DeviceResult<Float32Array | null>> {
    await deviceTime(this.backwardInputMs);
    const value = this.isFirst ? null : new Float32Array(this.spec.batchSize * this.spec.seqLen * this.frameWidth).fill(0.25);
    return { value, deviceMs: this.backwardInputMs };
  }

  /** W: the weight gradient of microbatch mb, accumulated; frees its stash. */
  async backwardWeightAsync(mb: number): Promise<DeviceResult<void>> {
    await deviceTime(this.backwardWeightMs);
    this.stash.delete(mb);
    return { value: undefined, deviceMs: this.backwardWeightMs };
  }

  /** Activation bytes the stage holds now for microbatches between their forward and their W. */
  stashedBytes(): number {
    return this.stash.size * this.stashBytesPerMicrobatch;
  }

  stashed(): number[] {
    return [...this.stash];
  }

  drop(mb: number): boolean {
    return this.stash.delete(mb);
  }

  gradSumSquares(): Float64Array {
    return Float64Array.of(1);
  }

  step(_gradScale: number): number {
    this.steps++;
    this.weights[this.steps % 16] += 1;
    return 0;
  }

  /** A post-validated update (stage-machine.ts): the step, with what undoes it. */
  stepWithUndo(gradScale: number): number {
    this.undo = { weights: this.weights.slice(), steps: this.steps };
    return this.step(gradScale);
  }

  undoStep(): void {
    if (!this.undo) throw new Error('synthetic stage: no update to undo');
    this.weights.set(this.undo.weights);
    this.steps = this.undo.steps;
    this.undo = null;
  }

  dropUndo(): void {
    this.undo = null;
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
