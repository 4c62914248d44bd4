// A slot's step control, as its Stage actor sees it: each `open` and
// `commit` from the control log becomes the actor's event, in log order. A
// commit's sequence in the log is kept until its step is done, since a
// checkpoint after the step resumes the log just past it; a commit that
// skips its step (its gradients were not finite) is kept for the update,
// which then drops the gradients instead of applying them.
//
// A commit's gradScale goes straight into the weights, so nothing is acted on
// unless the coordinator signed it for this replica's step-control subject
// (security/coordinator-keys.ts): whatever else the consumer delivers (its
// config changed under it by a peer, say) is moved to the dead-letter
// stream, counted and logged, and reading goes on. A message at or before
// the last one taken (a consumer re-created to replay the log) is dropped.
import type { StageEvent } from '../../actors/stage-machine.ts';
import { decodeStepControl } from '../../schemas/control-messages.ts';
import type { Logger } from '../log.ts';
import type { CoordinatorKeys } from '../security/coordinator-keys.ts';
import type { ControlDelivery } from '../transport/slot-control.ts';

export interface StepControlOptions {
  /** Tells the Stage actor. */
  readonly send: (event: StageEvent) => void;
  /** Whose signatures count, and the one subject step control of this slot's replica comes on. */
  readonly keys: CoordinatorKeys;
  readonly subject: string;
  /** Where refused messages go, and how many this host has refused. */
  readonly moveToDeadLetters: (d: ControlDelivery, fault: string, reason: string) => Promise<void>;
  readonly deadLetters: { count: number };
  readonly log: Logger;
}

export class StepControl {
  private readonly commitSeq = new Map<number, number>();  // control-log sequence of each step's commit
  private readonly skipped = new Set<number>();            // steps committed as skipped
  private lastSeq = 0;                                     // the last message taken

  constructor(private readonly o: StepControlOptions) {}

  /** Reads the control log until it closes. */
  async read(log: AsyncIterable<ControlDelivery>): Promise<void> {
    for await (const d of log) {
      if (d.seq <= this.lastSeq) {
        this.o.log.warn({ seq: d.seq, last: this.lastSeq, subject: d.subject }, 'step control delivered again (its consumer was re-created?): dropped');
        continue;
      }
      const signed = await this.o.keys.check({ subject: d.subject, body: d.data, header: d.signature, expected: this.o.subject });
      if (!signed.ok) {
        await this.refuse(d, signed.fault, signed.reason);
        continue;
      }
      this.lastSeq = d.seq;
      const msg = decodeStepControl(d.data, `step control (control log seq ${d.seq})`);
      if (msg.type === 'open') this.o.send({ type: 'STEP_OPEN', step: msg.step });
      else if (msg.type === 'commit') {
        this.commitSeq.set(msg.step, d.seq);
        if (msg.skip) this.skipped.add(msg.step);
        this.o.send({ type: 'STEP_COMMIT', step: msg.step, gradScale: msg.gradScale });
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

  private async refuse(d: ControlDelivery, fault: string, reason: string): Promise<void> {
    this.o.deadLetters.count++;
    this.o.log.warn({ fault, reason, subject: d.subject, seq: d.seq }, 'step control refused: not acted on, dead-lettered');
    await this.o.moveToDeadLetters(d, fault, reason);
  }
}
