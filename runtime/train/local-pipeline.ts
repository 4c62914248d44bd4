// All stages of one replica chained in one process, activations and gradients
// handed over as Float32Arrays: the reference the distributed pipeline must
// equal bit for bit.
import { clipDecision } from '../../actors/grad-clip.ts';
import { EngineStage, hashStages, splitLayers, type EngineModelConfig, type OptimizerConfig, type StageSpec } from '../../native/index.ts';

export interface MicroBatch {
  readonly tokens: Int32Array;   // [B,T]
  readonly targets: Int32Array;  // [B,T]
}

export interface StepResult {
  readonly loss: number;      // mean over the step's microbatches
  readonly gradNorm: number;
  readonly lr: number;
  readonly clipped: boolean;
  /** The gradients or the loss were not finite and nonFinite was 'skip-step': no weight changed. */
  readonly skipped?: true;
}

export class LocalPipeline {
  readonly stages: EngineStage[];

  /** `stages`: how many, split evenly, or each stage's [begin, end) layers; `on`: the device every stage runs on (default the CPU). */
  constructor(model: EngineModelConfig, optim: OptimizerConfig, stages: number | ReadonlyArray<readonly [number, number]>, seed: number, threads?: number, on: Pick<StageSpec, 'device' | 'gpu'> = {}) {
    this.stages = (typeof stages === 'number' ? splitLayers(model.nLayers, stages) : stages).map(
      ([layerBegin, layerEnd]) => new EngineStage({ model, optim, layerBegin, layerEnd, seed, threads, ...on }),
    );
  }

  /**
   * One optimizer step over the microbatches, each forward then backward, gradients accumulating in microbatch order.
   * Gradients or a loss that are not finite never reach the weights: 'stop' throws, 'skip-step' drops them (as the replica does).
   */
  trainStep(microbatches: readonly MicroBatch[], B: number, T: number, maxGradNorm: number, nonFinite: 'stop' | 'skip-step' = 'stop'): StepResult {
    let lossSum = 0;
    microbatches.forEach((mb, id) => {
      let x: Int32Array | Float32Array = mb.tokens;
      for (const stage of this.stages) {
        const out = stage.forwardTrain(id, x, B, T, stage.isLast ? mb.targets : undefined, mb.tokens);
        if (typeof out === 'number') lossSum += out;
        else x = out;
      }
      let grad: Float32Array | null = null;
      for (let s = this.stages.length - 1; s >= 0; s--) grad = this.stages[s].backward(id, grad);
    });
    const clip = clipDecision(this.stages.map((s) => s.gradSumSquares()), microbatches.length, maxGradNorm);
    const loss = lossSum / microbatches.length;
    if (!Number.isFinite(clip.gradNorm) || !Number.isFinite(loss)) {
      if (nonFinite === 'stop') throw new Error(`the gradient norm is ${clip.gradNorm} and the loss ${loss}, not finite: stopping before any weight is updated (training.nonFinite = stop)`);
      for (const stage of this.stages) stage.zeroGrad();
      return { loss, gradNorm: clip.gradNorm, lr: 0, clipped: false, skipped: true };
    }
    let lr = 0;
    for (const stage of this.stages) lr = stage.step(clip.gradScale);
    return { loss, gradNorm: clip.gradNorm, lr, clipped: clip.clipped };
  }

  /** Mean loss of a batch, nothing stashed. */
  evalLoss(batch: MicroBatch, B: number, T: number): number {
    let x: Int32Array | Float32Array = batch.tokens;
    for (const stage of this.stages.slice(0, -1)) x = stage.forwardInfer(x, B, T, batch.tokens);
    return this.stages[this.stages.length - 1].evalLoss(x, B, T, batch.targets, batch.tokens);
  }

  /** Logits [B,T,V] of a batch of token ids. */
  logits(tokens: Int32Array, B: number, T: number): Float32Array {
    let x: Int32Array | Float32Array = tokens;
    for (const stage of this.stages) x = stage.forwardInfer(x, B, T, tokens);
    return x as Float32Array;
  }

  paramHash(): string {
    return hashStages(this.stages);
  }
}
