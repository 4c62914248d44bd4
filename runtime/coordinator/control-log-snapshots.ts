// Snapshots of the control log, so that a restarted coordinator's replay does
// not grow with the run's length: once the log has grown by `every` entries
// since the latest snapshot (whichever coordinator took it), the coordinator
// waits until what it decided so far is written, then stores each
// replica's commits in short and the entries a replay still needs
// (schemas/control-snapshot.ts). A replay reads the snapshot, those entries,
// and the log after the snapshot's sequence.
//
// An entry is kept when the replay must see it again: step control and
// reports of a step at or after its replica's first_step (the step it last
// committed, decided again), every rewind, and every final or failed report.
// The log itself is not purged: hosts and `caravan chaos` still read it.
//
// With audits, a replica's first_step goes back to the first step an audit
// may still replay (after each stage's latest checkpoint, and where each held
// interval starts): an audit replays a whole checkpoint interval from the
// commits and reports the coordinator collected from the log.
import { decodeStepControl, decodeStageReport } from '../../schemas/control-messages.ts';
import type { ControlSnapshot, ReplicaSnapshot } from '../../schemas/control-snapshot.ts';
import { CONTROL_SNAPSHOT_VERSION } from '../../schemas/control-snapshot.ts';
import type { Logger } from '../log.ts';
import type { ControlLog, ControlLogEntry } from '../transport/control-log.ts';

/** What a replay read: the snapshot it started from (if any), the entries it replayed, and the log's end then. */
export interface ReplayRead {
  readonly snapshot_seq: number | null;
  readonly entries: number;
  readonly log_seq: number;
}

export class ControlLogSnapshots {
  /** The entries since the last snapshot, and those it kept: candidates for the next. */
  private window: ControlLogEntry[] = [];
  /** The log sequence the latest snapshot covers (0: none yet): the next is due `every` entries after it. */
  private base: number;

  constructor(private readonly o: {
    readonly controlLog: ControlLog; readonly log: Logger;
    /** Entries followed live between snapshots; 0: none are taken. */
    readonly every: number;
    /** Every decision made so far is written (the coordinator's ordered writes drained). */
    readonly settled: () => Promise<void>;
    /** Each replica's commits in short, as of now. */
    readonly replicas: () => ReplicaSnapshot[];
    /** No snapshot now: a rewind is under way. */
    readonly busy: () => boolean;
    /** The snapshot the replay started from (its sequence), if any. */
    readonly startedFrom?: number;
  }) {
    // Counted in the log, not in what this process followed: coordinators restarted often still take snapshots.
    this.base = o.startedFrom ?? 0;
  }

  /** The replay's entries: those a snapshot kept, then the log's (the window starts with them all). */
  seen(e: ControlLogEntry): void {
    if (this.o.every > 0) this.window.push(e);
  }

  /** A live entry was dispatched: takes a snapshot as of it when one is due. */
  async followed(e: ControlLogEntry): Promise<void> {
    if (this.o.every <= 0) return;  // none taken: nothing kept for one
    this.window.push(e);
    if (e.seq - this.base < this.o.every || this.o.busy()) return;
    this.base = e.seq;
    try {
      await this.o.settled();
      const replicas = this.o.replicas();
      const kept = this.window.filter((x) => keeps(x, replicas));
      const pointer = await this.o.controlLog.writeSnapshot({
        version: CONTROL_SNAPSHOT_VERSION, seq: e.seq, replicas, entries: kept.map((x) => this.o.controlLog.toSnapshotEntry(x)),
      } satisfies ControlSnapshot);
      this.window = kept;
      this.o.log.info({ seq: e.seq, kept: kept.length, bytes: pointer.bytes, first_steps: replicas.map((r) => r.first_step) }, 'control log snapshot written');
    } catch (err) {
      // A replay still works from the snapshot before (or the log's start): the run goes on.
      this.o.log.warn({ seq: e.seq, err: (err as Error).message }, 'control log snapshot not written');
    }
  }
}

/** Whether a replay from this snapshot must see the entry again (the rule at the top). */
function keeps(e: ControlLogEntry, replicas: readonly ReplicaSnapshot[]): boolean {
  const from = (replica: number) => replicas[replica]?.first_step ?? 0;
  try {
    if (e.source.kind === 'step') {
      const control = decodeStepControl(e.data);
      return control.type === 'rewind' || control.step >= from(e.source.replica);
    }
    if (e.source.kind !== 'report') return false;
    const report = decodeStageReport(e.data, `stage report (control log seq ${e.seq})`);
    return report.type === 'final' || report.type === 'failed' || report.step >= from(e.source.replica);
  } catch {
    return false;  // unreadable: a replay skips it too
  }
}

/** Reads the snapshot a replay starts from; one that cannot be used is said, and the replay reads the whole log. */
export async function startingSnapshot(controlLog: ControlLog, log: Logger): Promise<ControlSnapshot | undefined> {
  try {
    return await controlLog.readSnapshot();
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'control log snapshot unusable: replaying the whole log');
    return undefined;
  }
}
