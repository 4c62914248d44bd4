// The computations a slot's commands call for, on its compute stage: a
// microbatch's forward (its tokens from the run's data on the first stage,
// its activation from the inputs elsewhere; on the last, its loss, kept for
// the step's report) and its backward, each timed, traced and its output
// sent on; and the step's update, which for a step committed as skipped
// drops the gradients instead. Microbatches are backwarded into the
// gradients in the order the actor gives, and the update reports which.
import type { RunConfig } from '../../schemas/run-config.ts';
import type { ComputeStage, SlotCompute } from '../compute/compute-stage.ts';
import { loadTokens, TokenDataset, type Batch } from '../data/index.ts';
import type { Logger } from '../log.ts';
import type { ComputeAccounting } from './compute-accounting.ts';
import type { FaultPoints } from './fault-points.ts';
import type { IncomingFrames } from './incoming-frames.ts';
import { traceIds, type MicrobatchTraces } from './microbatch-traces.ts';
import type { OutgoingFrames } from './outgoing-frames.ts';

const NO_TOKENS = new Int32Array(0);

export interface StageComputeOptions {
  readonly config: RunConfig;
  readonly replica: number;
  readonly stage: number;
  readonly engine: ComputeStage;
  /** The run's tokens, where this stage reads them (see `slotData`). */
  readonly dataset: TokenDataset | undefined;
  readonly inputs: IncomingFrames;
  readonly outputs: OutgoingFrames;
  readonly accounting: ComputeAccounting;
  readonly traces: MicrobatchTraces;
  readonly faults: FaultPoints;
  readonly log: Logger;
}

/** The run's tokens, for a stage that reads them: the first (its inputs), the last (its targets), and any that needs tokens. */
export async function slotData(config: RunConfig, compute: SlotCompute): Promise<TokenDataset | undefined> {
  const { stage, synthetic } = compute;
  return !synthetic && (stage.isFirst || stage.isLast || stage.needsTokens) ? new TokenDataset(await loadTokens(config)) : undefined;
}

export class StageCompute {
  private readonly lossSums = new Map<number, number>();
  private accumulated: number[] = [];  // microbatches backwarded into the gradients since the last update
  private appliedMbs: number[] = [];

  constructor(private readonly o: StageComputeOptions) {}

  /** The microbatches the last update applied (or dropped). */
  get applied(): number[] {
    return this.appliedMbs;
  }

  async forward(step: number, mb: number): Promise<void> {
    const { engine, traces, log, config } = this.o;
    const { microbatches: M, batchSize: B, seqLen: T } = config.training;
    const data = this.o.dataset ? this.batch(step, mb) : undefined;
    const input = engine.isFirst ? data?.tokens ?? NO_TOKENS : this.o.inputs.take('act', step, mb)!;
    const span = traces.compute('forward', step, mb);
    const out = this.o.accounting.timed(() => engine.forwardTrain(step * M + mb, input, B, T, engine.isLast ? data?.targets : undefined, engine.needsTokens ? data?.tokens : undefined));
    traces.computed('forward', step, mb, span);
    if (log.isLevelEnabled('debug')) log.debug({ step, mb, ...traceIds(span) }, 'forward');
    await this.o.faults.reach('forward');
    if (typeof out === 'number') this.lossSums.set(step, (this.lossSums.get(step) ?? 0) + out);
    else await this.o.outputs.send('act', this.o.stage + 1, step, mb, out, span);
  }

  async backward(step: number, mb: number): Promise<void> {
    const { engine, traces, log, config } = this.o;
    const gradOut = this.o.inputs.take('grad', step, mb);
    const span = traces.compute('backward', step, mb);
    const gradIn = this.o.accounting.timed(() => engine.backward(step * config.training.microbatches + mb, engine.isLast ? null : gradOut!));
    traces.computed('backward', step, mb, span);
    if (log.isLevelEnabled('debug')) log.debug({ step, mb, ...traceIds(span) }, 'backward');
    this.accumulated.push(mb);
    await this.o.faults.reach('backward');
    if (gradIn) await this.o.outputs.send('grad', this.o.stage - 1, step, mb, gradIn, span);
  }

  /** The step's mean loss over its microbatches, on the last stage (undefined elsewhere); asked once, for its report. */
  takeLoss(step: number): number | undefined {
    const loss = this.o.engine.isLast ? (this.lossSums.get(step) ?? NaN) / this.o.config.training.microbatches : undefined;
    this.lossSums.delete(step);
    return loss;
  }

  /** Per-tensor sums of squares of the step's gradients, for the replica's global norm. */
  sumSquares(): number[] {
    return Array.from(this.o.engine.gradSumSquares());
  }

  /** The optimizer step with the replica's clip factor; a skipped step leaves weights, moments and the schedule as they were. */
  update(step: number, gradScale: number, skipped: boolean): void {
    if (skipped) {
      this.o.engine.zeroGrad();
      this.o.log.warn({ step }, 'step skipped: its gradients were not finite');
    } else this.o.engine.step(gradScale);
    this.appliedMbs = this.accumulated;
    this.accumulated = [];
  }

  private batch(step: number, mb: number): Batch {
    const t = this.o.config.training;
    return this.o.dataset!.batchAt({ seed: t.seed, replica: this.o.replica, shards: t.replicas, step, microbatch: mb, batchSize: t.batchSize, seqLen: t.seqLen, split: 'train' });
  }
}
