// A slot's step control, as its Stage actor sees it: each `open` and
// `commit` from the control log becomes the actor's event, in log order. A
// commit's sequence in the log is kept until its step is done, since a
// checkpoint after the step resumes the log just past it; a commit that
// skips its step (its gradients were not finite) is kept for the update,
// which then drops the gradients instead of applying them.
import type { StageEvent } from '../../actors/stage-machine.ts';
import type { ControlDelivery } from '../transport/slot-control.ts';

export class StepControl {
  private readonly commitSeq = new Map<number, number>();  // control-log sequence of each step's commit
  private readonly skipped = new Set<number>();            // steps committed as skipped

  /** `send` tells the Stage actor. */
  constructor(private readonly send: (event: StageEvent) => void) {}

  /** Reads the control log until it closes. */
  async read(log: AsyncIterable<ControlDelivery>): Promise<void> {
    for await (const { seq, control: msg } of log) {
      if (msg.type === 'open') this.send({ type: 'STEP_OPEN', step: msg.step });
      else if (msg.type === 'commit') {
        this.commitSeq.set(msg.step, seq);
        if (msg.skip) this.skipped.add(msg.step);
        this.send({ type: 'STEP_COMMIT', step: msg.step, gradScale: msg.gradScale });
      }
    }
  }

  /** The control-log sequence of the step's commit; throws where none was seen. */
  commitSeqOf(step: number): number {
    const seq = this.commitSeq.get(step);
    if (seq === undefined) throw new Error(`no commit recorded for step ${step}`);
    return seq;
  }

  /** The step is done: its commit's place in the log is no longer needed. */
  forget(step: number): void {
    this.commitSeq.delete(step);
  }

  /** Whether the step was committed as skipped (asked once, by its update). */
  takeSkip(step: number): boolean {
    return this.skipped.delete(step);
  }
}
