// The computations a slot's commands call for, on its compute stage: a
// microbatch's forward (its tokens from the run's data on the first stage,
// its activation from the inputs elsewhere; on the last, its loss, kept for
// the step's report) and its backward, whole or in its two halves (the input
// gradient B, the weight gradients W), each timed, traced and its output sent
// on; and the step's update: final, which for a step committed as skipped
// drops the gradients instead, or provisional, then confirmed or rolled back
// (actors/stage-machine.ts). Microbatches' weight gradients go into the
// gradients in the order the actor gives, and the update reports which.
import type { PipelineOp } from '../../actors/pipeline-schedule.ts';
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
  /** The holder's generation of the slot. */
  readonly generation: number;
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
  private provisional = false;  // a provisional update is in the weights, with its undo
  private reportFinite = true;  // the last report's Σg² and loss were all finite
  private rollBacks = 0;
  private peakStash = 0;

  constructor(private readonly o: StageComputeOptions) {}

  /** The microbatches the last update applied (or dropped). */
  get applied(): number[] {
    return this.appliedMbs;
  }

  /** One computation of the actor's schedule: a forward, the backward whole (BW) or either half (B, then W). */
  async run(step: number, attempt: number, op: PipelineOp): Promise<void> {
    switch (op.kind) {
      case 'F': return this.forward(step, attempt, op.mb);
      case 'B': return this.backward(step, attempt, op.mb, 'input');
      case 'BW': return this.backward(step, attempt, op.mb, 'whole');
      case 'W': return this.weights(step, attempt, op.mb);
    }
  }

  private async forward(step: number, attempt: number, mb: number): Promise<void> {
    const { engine, traces, log, config } = this.o;
    const { microbatches: M, batchSize: B, seqLen: T } = config.training;
    if (mb === 0) this.o.faults.holdEventLoop(this.o.replica, this.o.stage, this.o.generation, step);
    const data = this.o.dataset ? this.batch(step, mb) : undefined;
    const input = engine.isFirst ? data?.tokens ?? NO_TOKENS : this.o.inputs.take('act', step, mb, attempt)!;
    const span = traces.compute('forward', step, mb, attempt);
    const out = await this.o.accounting.onDevice(engine.forwardTrainAsync(step * M + mb, input, B, T, engine.isLast ? data?.targets : undefined, engine.needsTokens ? data?.tokens : undefined));
    traces.computed('forward', step, mb, attempt, span);
    if (log.isLevelEnabled('debug')) log.debug({ step, mb, attempt, ...traceIds(span) }, 'forward');
    this.noteStash();
    await this.o.faults.reach('forward');
    if (typeof out === 'number') this.lossSums.set(step, (this.lossSums.get(step) ?? 0) + out);
    else await this.o.outputs.send('act', this.o.stage + 1, { step, mb, attempt }, out, span);
  }

  /** The input gradient, sent on; with `whole` the weight gradients too (the fused backward). */
  private async backward(step: number, attempt: number, mb: number, part: 'input' | 'whole'): Promise<void> {
    const { engine, traces, log, config } = this.o;
    const gradOut = engine.isLast ? null : this.o.inputs.take('grad', step, mb, attempt)!;
    const span = traces.compute(part === 'whole' ? 'backward' : 'backward-input', step, mb, attempt);
    const id = step * config.training.microbatches + mb;
    const gradIn = await this.o.accounting.onDevice(part === 'whole' ? engine.backwardAsync(id, gradOut) : engine.backwardInputAsync(id, gradOut));
    traces.computed(part === 'whole' ? 'backward' : 'backward-input', step, mb, attempt, span);
    if (log.isLevelEnabled('debug')) log.debug({ step, mb, attempt, part, ...traceIds(span) }, 'backward');
    if (part === 'whole') this.accumulated.push(mb);
    else this.noteStash();
    await this.o.faults.reach('backward');
    if (gradIn) await this.o.outputs.send('grad', this.o.stage - 1, { step, mb, attempt }, gradIn, span);
  }

  /** The weight gradients of a microbatch whose input gradient is done, into the step's gradients. */
  private async weights(step: number, attempt: number, mb: number): Promise<void> {
    const { engine, traces, config } = this.o;
    const span = traces.compute('backward-weight', step, mb, attempt);
    await this.o.accounting.onDevice(engine.backwardWeightAsync(step * config.training.microbatches + mb));
    traces.computed('backward-weight', step, mb, attempt, span);
    this.accumulated.push(mb);
    await this.o.faults.reach('backward');
  }

  /** The largest the activation stash has been, in bytes. */
  get peakStashBytes(): number {
    return this.peakStash;
  }

  private noteStash(): void {
    this.peakStash = Math.max(this.peakStash, this.o.engine.stashedBytes());
  }

  /**
   * What the step's report carries: Σg² per tensor of the step's gradients (for the replica's global norm) and, on the
   * last stage, the mean loss over its microbatches (undefined elsewhere). Asked once per step; whether both are finite
   * is kept for a provisional update that may follow.
   */
  takeReport(step: number): { sumSquares: number[]; loss: number | undefined } {
    const loss = this.o.engine.isLast ? (this.lossSums.get(step) ?? NaN) / this.o.config.training.microbatches : undefined;
    this.lossSums.delete(step);
    const sumSquares = Array.from(this.o.engine.gradSumSquares());
    this.reportFinite = sumSquares.every(Number.isFinite) && (loss === undefined || Number.isFinite(loss));
    return { sumSquares, loss };
  }

  /** The optimizer step with the replica's clip factor; a skipped step leaves weights, moments and the schedule as they were. */
  update(step: number, gradScale: number, skipped: boolean): void {
    if (skipped) {
      this.o.engine.zeroGrad();
      this.o.log.warn({ step }, 'step skipped: its gradients were not finite');
    } else if (this.o.faults.cheats(this.o.replica, this.o.stage, this.o.generation, step) === 'skip-update') this.o.engine.zeroGrad();
    else this.o.engine.step(gradScale);
    this.appliedMbs = this.accumulated;
    this.accumulated = [];
  }

  /**
   * The update the step is expected to commit, applied before the commit
   * comes, with an undo. Not where this stage's own gradients or loss are not
   * finite: that commit is sure to skip the step (or stop the run), so the
   * weights stay as they are and no non-finite frame goes out meanwhile.
   */
  applyProvisional(step: number, gradScale: number): void {
    this.provisional = this.reportFinite;
    if (this.provisional && this.o.faults.cheats(this.o.replica, this.o.stage, this.o.generation, step) === 'skip-update') {
      this.provisional = false;
      this.o.engine.zeroGrad();
    } else if (this.provisional) this.o.engine.stepWithUndo(gradScale);
    else this.o.log.warn({ step }, 'gradients not finite: no provisional update, waiting for the commit');
    this.appliedMbs = this.accumulated;
    this.accumulated = [];
  }

  /** The commit was the update applied: its undo is no longer needed. */
  confirm(): void {
    this.o.engine.dropUndo();
    this.provisional = false;
  }

  /**
   * The commit was not the update applied: put the weights, moments and
   * gradients back as they were before it, apply the committed one, and void
   * what the next step did meanwhile (its stashed forwards, its loss, its
   * weight gradients, which the undo took back too).
   */
  rollBack(step: number, gradScale: number, skipped: boolean): void {
    const { engine, config, log } = this.o;
    const M = config.training.microbatches;
    if (this.provisional) engine.undoStep();
    this.provisional = false;
    if (skipped) engine.zeroGrad();
    else engine.step(gradScale);
    for (const id of engine.stashed()) if (id >= (step + 1) * M && id < (step + 2) * M) engine.drop(id);
    this.lossSums.delete(step + 1);
    this.accumulated = [];
    this.o.traces.voided(step + 1, 0);
    this.rollBacks++;
    log.info({ step, gradScale, skipped }, 'provisional update rolled back: the committed one applied, the next step redone');
  }

  /** How many provisional updates were rolled back. */
  get rolledBack(): number {
    return this.rollBacks;
  }

  private batch(step: number, mb: number): Batch {
    const t = this.o.config.training;
    return this.o.dataset!.batchAt({ seed: t.seed, replica: this.o.replica, shards: t.replicas, step, microbatch: mb, batchSize: t.batchSize, seqLen: t.seqLen, split: 'train' });
  }
}
