// The stages' reports in the control log. A report counts only if the holder
// of the slot its subject names signed it, under the generation the report
// claims. Step reports go to their replica's actor, contributions to the
// Bridge, final reports are collected for the summary, a holder's 'failed'
// report fails the run with its reason, and checkpoints are
// recorded in the slot table (fenced by generation), after which what they
// make unnecessary is dropped: the previous checkpoint and the slot's inputs
// before it.
import { decodeStageReport, type CheckpointPointer, type StageCounters, type StageReport } from '../../schemas/control-messages.ts';
import type { Bridges } from '../bridge/bridge-runtime.ts';
import type { Logger } from '../log.ts';
import type { ControlLogEntry } from '../transport/control-log.ts';
import type { SlotStore } from '../transport/slot-store.ts';
import type { OrderedWrites } from './ordered-writes.ts';
import type { Audits } from './audits.ts';
import type { Replicas } from './replicas.ts';
import type { Rewinds } from './rewinds.ts';

export class Reports {
  /** `${replica}.${stage}` whose final state is uploaded (its counters are the last) → its sha256. */
  readonly finals = new Map<string, string>();

  constructor(private readonly o: {
    readonly slots: SlotStore; readonly writes: OrderedWrites; readonly log: Logger; readonly replicas: Replicas; readonly bridges: Bridges | undefined; readonly audits: Audits | undefined;
    readonly rewinds: Pick<Rewinds, 'counts' | 'checkpointed'>;
    /** Where the latest counters of every slot's holder go, `${replica}.${stage}`. */
    readonly counters: Map<string, StageCounters>;
    readonly finalReported: () => void;
    /** The slot's holder cannot go on (its signed 'failed' report): the run fails with this. */
    readonly failed: (err: Error) => void;
  }) {}

  async dispatch(e: ControlLogEntry): Promise<void> {
    if (e.source.kind !== 'report') return;
    const { log, counters } = this.o;
    let msg: StageReport;
    try {
      msg = decodeStageReport(e.data, `stage report (control log seq ${e.seq})`);
    } catch (err) {
      log.warn({ seq: e.seq, err: (err as Error).message }, 'unreadable report skipped');
      return;
    }
    const replica = this.o.replicas.actor(msg.replica);
    if (!replica) return;
    // A report counts only if the holder of the slot its subject names signed it, under the generation it claims.
    const { replica: sr, stage: ss } = e.source;
    const signed = await this.o.slots.signers.check({ kind: 'report', subject: e.subject, body: e.data, header: e.signature, replica: sr, stage: ss });
    if (!signed.ok || msg.replica !== sr || msg.stage !== ss || msg.generation !== signed.generation) {
      log.warn({ seq: e.seq, subject: e.subject, reason: signed.ok ? `the report names replica ${msg.replica} stage ${msg.stage} generation ${msg.generation}` : signed.reason }, 'report refused');
      return;
    }
    // A rewind voided everything the slot's earlier generations did (rewinds.ts).
    if (!this.o.rewinds.counts(sr, ss, msg.generation)) { log.debug({ seq: e.seq, replica: sr, stage: ss, generation: msg.generation }, 'report of an epoch a rewind voided: ignored'); return; }
    if (msg.type === 'failed') { this.o.failed(new Error(msg.reason)); return; }
    if (msg.type === 'checkpoint') { this.recordCheckpoint(msg.replica, msg.stage, msg.generation, msg.checkpoint); return; }
    if (msg.type === 'done' || msg.type === 'final') counters.set(`${msg.replica}.${msg.stage}`, msg.counters);
    if (msg.type === 'done') {
      this.o.audits?.reported(msg);
      replica.send({ type: 'STAGE_DONE', stage: msg.stage, step: msg.step, sumSquares: msg.sumSquares, loss: msg.loss ?? undefined });
    } else if (msg.type === 'stepped') replica.send({ type: 'STAGE_STEPPED', stage: msg.stage, step: msg.step });
    else if (msg.type === 'contribution') this.o.bridges?.contributed(msg);
    else if (msg.type === 'final') {
      this.finals.set(`${msg.replica}.${msg.stage}`, msg.sha256);
      this.o.audits?.finalState(msg.replica, msg.stage, msg.sha256);
      this.o.finalReported();
    }
  }

  /** The replica was rewound: its final states so far are void. */
  forgetFinals(replica: number): void {
    for (const k of this.finals.keys()) if (k.startsWith(`${replica}.`)) this.finals.delete(k);
  }

  /** Records a checkpoint a holder reported, then drops what it makes unnecessary: the previous state and the inputs before it. */
  private recordCheckpoint(replica: number, stage: number, generation: number, pointer: CheckpointPointer): void {
    const { slots, log } = this.o;
    this.o.writes.write(`checkpoint of slot ${replica}.${stage}`, async () => {
      // An audit of the interval this closes is saved before the checkpoint is recorded, and holds what it replays from (audits.ts).
      const { audits } = this.o;
      let drawn: Awaited<ReturnType<Audits['drawn']>>;
      const done = await slots.recordCheckpoint(replica, stage, generation, pointer, audits && (async (previous) => { drawn = await audits.drawn(replica, stage, previous, pointer); }));
      if (!done.recorded) {
        if (drawn) audits?.cancel(drawn);
        log.debug({ replica, stage, step: pointer.step, why: done.why }, 'checkpoint not recorded');
        return;
      }
      log.debug({ replica, stage, step: pointer.step, object: pointer.object }, 'checkpoint recorded');
      const kept = audits?.checkpointed(replica, stage, done.previous, pointer, drawn) ?? { dropPrevious: true, purgeBelow: pointer.resume };
      if (done.previous && done.previous.object !== pointer.object && kept.dropPrevious) await slots.dropCheckpoint(done.previous.object);
      for (const voided of this.o.rewinds.checkpointed(replica, stage)) if (voided !== pointer.object) await slots.dropCheckpoint(voided);
      for (const kind of ['act', 'grad'] as const) {
        const seq = kept.purgeBelow[kind];
        if (seq) await slots.purgeInputs(replica, stage, kind, seq);
      }
    });
  }
}
