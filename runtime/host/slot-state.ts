// A slot's state in the run's Object Store. A holder starts from its slot's
// last checkpoint, refused if its bytes are not the ones their holder
// reported (anyone may write the store); every K steps it uploads its state
// with where its inputs and the control log resume after that step, and
// reports it, so the coordinator records it in the slot (only while this
// holder's generation holds it) and drops the inputs it makes unnecessary.
// After the last step it uploads and reports the final state.
import type { CheckpointPointer, StageCounters } from '../../schemas/control-messages.ts';
import type { FrameKind } from '../../schemas/tensor-frame.ts';
import type { ComputeStage } from '../compute/compute-stage.ts';
import type { Logger } from '../log.ts';
import { sha256Hex } from '../security/message-signature.ts';
import type { Tracing } from '../telemetry/tracing.ts';
import type { StateObjects } from '../transport/state-objects.ts';
import type { SlotOutputs } from '../transport/slot-outputs.ts';
import type { RunNames } from '../transport/subjects.ts';
import type { StageSync } from './bridge-sync.ts';
import type { FaultPoints } from './fault-points.ts';

export interface SlotStateOptions {
  readonly names: RunNames;
  readonly objects: StateObjects;
  readonly outputs: SlotOutputs;
  readonly engine: ComputeStage;
  readonly replica: number;
  readonly stage: number;
  readonly layers: readonly [number, number];
  readonly generation: number;
  /** Where the holder's inputs of `kind` start after `step`, and the control-log sequence of the step's commit. */
  readonly resumeAfter: (kind: FrameKind, step: number) => number;
  readonly commitSeqOf: (step: number) => number;
  /** The attempt of the step after `step`, from its commit. */
  readonly attemptAfter: (step: number) => number;
  readonly faults: FaultPoints;
  readonly tracing: Tracing;
  readonly log: Logger;
}

export class SlotState {
  constructor(private readonly o: SlotStateOptions) {}

  /** Loads the checkpoint into the engine (and the Bridge's state at its step). */
  async restore(from: CheckpointPointer, bridge: StageSync | undefined): Promise<void> {
    const { replica, stage } = this.o;
    const blob = await this.o.objects.get(from.object, 'checkpoint download');
    if (!blob) throw new Error(`checkpoint ${from.object} of replica ${replica} stage ${stage} is missing from the object store`);
    const sha = sha256Hex(blob);
    if (from.sha256 && sha !== from.sha256) {
      throw new Error(`checkpoint ${from.object} of replica ${replica} stage ${stage} is not the one its holder recorded (sha256 ${sha.slice(0, 16)}…, recorded ${from.sha256.slice(0, 16)}…): it was overwritten in the object store`);
    }
    this.o.engine.loadState(blob, `checkpoint ${from.object}`);
    await bridge?.restored(from.step, from.residual_sha256);
    this.o.log.info({ step: from.step, object: from.object }, 'restored from checkpoint');
  }

  /** The state after `step` (and the digest of the Bridge's residual then), uploaded and reported for the coordinator to record. */
  async checkpoint(step: number, bridge: StageSync | undefined): Promise<void> {
    const { engine, names, replica, layers: [begin, end] } = this.o;
    const control = this.o.commitSeqOf(step);
    const resume = {
      ...(engine.isFirst ? {} : { act: this.o.resumeAfter('act', step) }),
      ...(engine.isLast ? {} : { grad: this.o.resumeAfter('grad', step) }),
      control: control + 1,
    };
    const name = names.checkpoint(replica, begin, end, step, this.o.generation);
    const started = performance.now();
    const state = engine.state();
    await this.o.objects.put(name, state, 'checkpoint upload');
    await this.o.faults.reach('checkpoint');
    // The coordinator records it (hosts may not write run state), then deletes the previous state and the inputs before it.
    const nextAttempt = this.o.attemptAfter(step);
    await this.o.outputs.report({ type: 'checkpoint', step, checkpoint: { step, object: name, resume, sha256: sha256Hex(state), residual_sha256: bridge?.residualSha256(), ...(nextAttempt ? { next_attempt: nextAttempt } : {}) } });
    this.o.log.debug({ step, object: name, ms: Math.round(performance.now() - started) }, 'checkpoint reported');
  }

  /** The state after the run's last step, uploaded and reported with the holder's counters as of then. */
  async final(counters: () => StageCounters): Promise<void> {
    const { engine, names, replica, layers: [begin, end] } = this.o;
    const name = names.finalState(replica, begin, end);
    const state = engine.state();
    await this.o.objects.put(name, state, 'final state upload');
    await this.o.tracing.flush();  // every span of this stage is exported before the run can end
    await this.o.outputs.report({ type: 'final', name, sha256: sha256Hex(state), counters: counters() });
    this.o.log.info({ object: name }, 'final state uploaded');
  }
}
