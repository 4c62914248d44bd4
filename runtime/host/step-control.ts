// A slot's step control, as its Stage actor sees it: each `open` and
// `commit` from the control log becomes the actor's event, in log order. A
// commit is kept until its step is done, since a checkpoint after the step
// resumes the log just past it (its sequence) and records the attempt of the
// step after it (which follows from its clip factor and skip).
//
// A commit's gradScale goes straight into the weights, so nothing is acted on
// unless the coordinator signed it for this replica's step-control subject
// (security/coordinator-keys.ts): whatever else the consumer delivers (its
// config changed under it by a peer, say) is moved to the dead-letter
// stream, counted and logged, and reading goes on. A message at or before
// the last one taken (a consumer re-created to replay the log) is dropped.
// A rewind (an audit's catch) ends the reading: this holder's state is void,
// and its slot starts again from the record the coordinator writes next.
import { attemptAfter, type StageEvent } from '../../actors/stage-machine.ts';
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
  /** The replica was rewound (an audit's catch): everything of this slot's holder is void. */
  readonly rewound: (epoch: number) => void;
  /** How the attempt after a commit follows from it (the Stage actor's rule). */
  readonly postValidate: boolean;
  readonly microbatches: number;
}

export class StepControl {
  private readonly commits = new Map<number, { seq: number; gradScale: number; skip: boolean; last: boolean }>();  // each step's commit, with its control-log sequence
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
        this.commits.set(msg.step, { seq: d.seq, gradScale: msg.gradScale, skip: msg.skip === true, last: msg.last === true });
        this.o.send({ type: 'STEP_COMMIT', step: msg.step, gradScale: msg.gradScale, skip: msg.skip === true });
      } else {
        // What follows in the log is the replica's next epoch, from step 0: not for this holder's state.
        this.o.rewound(msg.epoch);
        return;
      }
    }
  }

  /** The control-log sequence of the step's commit; throws where none was seen. */
  commitSeqOf(step: number): number {
    return this.commitOf(step).seq;
  }

  /** The attempt of the step after `step`: 1 where its commit rolls back a provisional update. */
  attemptAfter(step: number): number {
    const { gradScale, skip } = this.commitOf(step);
    return attemptAfter(this.o, { step, gradScale, skip });
  }

  /** Whether the step's commit says it is the replica's last (it leaves the run): its stages upload their final states. */
  isLast(step: number): boolean {
    return this.commitOf(step).last;
  }

  /** The step is done: its commit is no longer needed. */
  forget(step: number): void {
    this.commits.delete(step);
  }

  private commitOf(step: number) {
    const c = this.commits.get(step);
    if (c === undefined) throw new Error(`no commit recorded for step ${step}`);
    return c;
  }

  private async refuse(d: ControlDelivery, fault: string, reason: string): Promise<void> {
    this.o.deadLetters.count++;
    this.o.log.warn({ fault, reason, subject: d.subject, seq: d.seq }, 'step control refused: not acted on, dead-lettered');
    await this.o.moveToDeadLetters(d, fault, reason);
  }
}
