// What the coordinator does when an audit catches a slot's holder computing
// wrongly: the run goes on, and ends with the weights an honest run gives.
//
//   1. The holder's key is banned: it may not register again, its heartbeats
//      no longer count, and the Coordinator actor declares it lost at its
//      next tick and hands its slot to a standby, as for any lost host.
//   2. Once the slot has a new holder, the replica is rewound to its start:
//      its Replica actor stops; a signed `rewind` record goes into the
//      control log (the next epoch, the generation each slot takes, and
//      where each input stream ends now); then every slot of the replica
//      gets that generation, kept by its holder, with no checkpoint and
//      `rewound` saying where its inputs and step control start. Frames the
//      old generations stored after that point are stale (`until`), and the
//      frames stored before it are purged.
//   3. Holders start their slot again from the seed's initial weights (the
//      host drops the old stage on the rewind record or the slot record,
//      whichever it sees first), and a new Replica actor opens step 0 again:
//      its step control carries the epoch in its Nats-Msg-Id, so nothing is
//      taken for a duplicate, and only reports of the new generations count.
//
// Why the start, not the last checkpoint before the first bad step: the
// other slots' checkpoints at that point are not kept (each slot keeps its
// latest), and with an audit rate below 1 a slot's chain of audited
// intervals is broken anyway. The start is the one state every slot is known
// to hold honestly; the cost is recomputing the replica's steps so far.
//
// A rewind is in the log before any slot record says so, so a coordinator
// restarted in between finds it and completes it (the slot writes are
// idempotent).
import type { RewindControl } from '../../schemas/control-messages.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import type { AuditSummary } from '../../schemas/run-records.ts';
import type { Logger } from '../log.ts';
import type { ControlLog } from '../transport/control-log.ts';
import type { SlotStore } from '../transport/slot-store.ts';
import type { Membership } from './membership.ts';
import type { OrderedWrites } from './ordered-writes.ts';
import type { Replicas } from './replicas.ts';

/** An audit's catch: the slot at fault, the first step it computed wrongly, and its holder then. */
export interface Catch {
  readonly replica: number;
  readonly stage: number;
  readonly step: number;
  readonly host: string;
}

type Rewind = NonNullable<AuditSummary['rewinds']>[number];

const POLL_MS = 200;

export class Rewinds {
  /** `${replica}.${stage}` → the generation from which the slot's reports count (the rewind's). */
  private readonly countsFrom = new Map<string, number>();
  private readonly underway = new Set<number>();
  private readonly orphans = new Map<string, string[]>();  // `${replica}/${stage}` → the old epoch's checkpoint objects still stored
  readonly done: Rewind[] = [];

  constructor(private readonly o: {
    readonly config: RunConfig; readonly controlLog: ControlLog; readonly slots: SlotStore; readonly membership: Membership;
    readonly replicas: Replicas; readonly writes: OrderedWrites; readonly log: Logger;
    /** The caught host is lost now (the Coordinator actor's HOST_EVICTED). */
    readonly evict: (host: string) => void;
    /** The replica is being rewound: it is not finished, and nothing of its old epoch counts. */
    readonly unfinished: (replica: number) => void;
    /** The replica's new epoch began. */
    readonly restarted: (replica: number) => void;
    /** A rewind cannot be carried out: the run fails with this. */
    readonly failed: (err: Error) => void;
    /** A rewind is done: for the run's live state. */
    readonly changed: () => void;
  }) {}

  /** Whether any replica is being rewound: the run cannot finish meanwhile. */
  get busy(): boolean {
    return this.underway.size > 0;
  }

  /** Whether a report of the slot under `generation` counts: not one of an epoch a rewind voided. */
  counts(replica: number, stage: number, generation: number): boolean {
    return generation >= (this.countsFrom.get(`${replica}.${stage}`) ?? 0);
  }

  /** A checkpoint of a rewound epoch, still stored: it goes once the slot has one of the new epoch. */
  orphaned(replica: number, stage: number, object: string): void {
    const key = `${replica}/${stage}`;
    this.orphans.set(key, [...(this.orphans.get(key) ?? []), object]);
  }

  /** A checkpoint of the slot was recorded: the old epoch's ones a rewind left may go now (returned). */
  checkpointed(replica: number, stage: number): string[] {
    const objects = this.orphans.get(`${replica}/${stage}`) ?? [];
    this.orphans.delete(`${replica}/${stage}`);
    return objects;
  }

  /** An audit caught a holder: it is banned, and its replica rewound once its slot has a new holder. */
  caught(c: Catch): void {
    const { log } = this.o;
    if (this.underway.has(c.replica)) {
      log.warn({ ...c }, 'another catch in a replica being rewound: its holder is banned; the rewind under way voids its work too');
      this.o.membership.ban(c.host);
      this.o.evict(c.host);
      return;
    }
    this.underway.add(c.replica);
    // Nothing more of this epoch is decided (and the replica cannot finish on it); what was decided is written before the rewind.
    this.o.replicas.halt(c.replica);
    this.o.unfinished(c.replica);
    this.o.membership.ban(c.host);
    this.o.evict(c.host);
    log.warn({ ...c }, 'audit caught a holder: its key is banned; the replica starts over from its initial weights once a standby holds the slot');
    void this.rewindWhenReplaced(c).then(() => {
      this.underway.delete(c.replica);
      this.o.restarted(c.replica);
      this.o.changed();
    }, (err: Error) => this.o.failed(new Error(`rewinding replica ${c.replica} after the audit's catch: ${err.message}`)));
  }

  /** A rewind found in the control log by a restarted coordinator: its epoch holds, its ban too, and what it had not written yet is written. */
  async replayed(replica: number, control: RewindControl, seq: number): Promise<void> {
    this.o.replicas.setEpoch(replica, control.epoch);
    this.o.membership.ban(control.culprit.host);
    await this.applyToSlots(replica, control, seq);
    this.done.push({ replica, epoch: control.epoch, discarded_steps: control.discarded_steps, banned: control.culprit.host });
  }

  /**
   * After a restart's replay of the log: catches the run's state recorded (the coordinator before had them) that no
   * rewind in the log answers were cut short by the restart, and are taken up again.
   */
  resume(recorded: ReadonlyArray<{ replica: number; stage: number; step: number; host: string | null }>): void {
    for (const f of recorded) {
      if (f.host && !this.done.some((d) => d.replica === f.replica && d.banned === f.host)) this.caught({ replica: f.replica, stage: f.stage, step: f.step, host: f.host });
    }
  }

  private async rewindWhenReplaced(c: Catch): Promise<void> {
    const { slots, log } = this.o;
    for (let waited = 0; (await slots.read(c.replica, c.stage))?.host === c.host; waited += POLL_MS) {
      if (waited === 10_000) log.warn({ ...c }, 'the caught holder still holds its slot: waiting for a standby to take it (a host to join, if none is left)');
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
    await this.rewind(c);
  }

  private async rewind(c: Catch): Promise<void> {
    const { config, slots, replicas, log } = this.o;
    const S = config.training.stages;
    const stages = Array.from({ length: S }, (_, s) => s);
    const discarded = replicas.losses[c.replica].length;
    const epoch = replicas.epoch(c.replica) + 1;
    const records = await Promise.all(stages.map((s) => slots.read(c.replica, s)));
    const ends = await Promise.all(stages.map((s) => slots.lastInputSeq(c.replica, s)));
    const control: RewindControl = {
      type: 'rewind', step: 0, epoch,
      generations: records.map((r, s) => {
        if (!r) throw new Error(`slot ${c.replica}.${s} has no record`);
        return r.generation + 1;
      }),
      // Each input stream from its end now: what the new epoch's senders store comes after.
      resume: stages.map((s) => ({ ...(s > 0 ? { act: ends[s] + 1 } : {}), ...(s < S - 1 ? { grad: ends[s] + 1 } : {}) })),
      culprit: { stage: c.stage, step: c.step, host: c.host },
      discarded_steps: discarded,
    };
    const seq = await new Promise<number>((resolve) => {
      this.o.writes.write(`rewind of replica ${c.replica}`, async () => resolve(await this.o.controlLog.writeStepControl(c.replica, control, epoch)));
    });
    await this.applyToSlots(c.replica, control, seq);
    // The old epoch's checkpoints go once the slot has one of the new epoch: a standby may still be reading its own.
    records.forEach((r, s) => { if (r?.checkpoint) this.orphaned(c.replica, s, r.checkpoint.object); });
    replicas.restart(c.replica, epoch);
    this.done.push({ replica: c.replica, epoch, discarded_steps: discarded, banned: c.host });
    log.warn({ replica: c.replica, epoch, discarded_steps: discarded, banned: c.host }, 'replica rewound: it trains again from step 0');
  }

  /** Every slot of the replica under the rewind's generation, from the stream ends it names; the old epoch's frames purged. */
  private async applyToSlots(replica: number, control: RewindControl, seq: number): Promise<void> {
    const { slots } = this.o;
    const S = this.o.config.training.stages;
    for (let s = 0; s < S; s++) {
      this.countsFrom.set(`${replica}.${s}`, control.generations[s]);
      const resume = control.resume[s];
      // The old generation sent activations into stage s+1's stream and gradients into stage s-1's: from their ends on, stale.
      const until = {
        ...(s + 1 < S && control.resume[s + 1]?.act ? { act: control.resume[s + 1].act! - 1 } : {}),
        ...(s > 0 && control.resume[s - 1]?.grad ? { grad: control.resume[s - 1].grad! - 1 } : {}),
      };
      const record = await slots.rewind(replica, s, control.generations[s], { epoch: control.epoch, resume: { ...resume, control: seq + 1 } }, until);
      slots.signers.update(record);
      for (const kind of ['act', 'grad'] as const) if (resume[kind]) await slots.purgeInputs(replica, s, kind, resume[kind]!);
    }
  }
}
