// The control log from its start. What is there already is the history to
// rebuild: the step control in it was decided before a restart and is not
// written again, and once every Replica actor has started, its reports are
// dispatched in log order, so each replica re-decides every commit exactly as
// before. Only step control the coordinator signed counts as already
// written: anything else on a step subject is skipped, and the replica writes
// its own. A rewind in the log (an audit's catch) starts its replica's next
// epoch: it is completed if the coordinator before stopped half-way, and the
// replica starts in the latest epoch, counting only that epoch's reports. After that, live: each new report as it comes. On a fresh run the
// log is empty and it is live from the start.
//
// With a snapshot of the log (control-log-snapshots.ts), the history is the
// snapshot's replicas in short, the entries it kept, and the log after it:
// what is replayed no longer grows with the number of steps.
import { decodeStepControl, type StepControl } from '../../schemas/control-messages.ts';
import type { Logger } from '../log.ts';
import type { ControlLog, ControlLogEntry } from '../transport/control-log.ts';
import { ControlLogSnapshots, startingSnapshot, type ReplayRead } from './control-log-snapshots.ts';
import type { Replicas } from './replicas.ts';
import type { Reports } from './reports.ts';
import type { Rewinds } from './rewinds.ts';

export async function followControlLog(o: {
  readonly controlLog: ControlLog; readonly replicas: Replicas; readonly reports: Reports; readonly rewinds: Rewinds; readonly log: Logger;
  /** Told how to stop reading, once the history is replayed. */
  readonly reading: (stop: () => void) => void;
  /** The history is replayed and the replicas have started: what it read. */
  readonly replayed?: (read: ReplayRead) => void;
  /** Snapshots taken while following live (none with `every` 0), and how a snapshot's wait for settled writes is told. */
  readonly snapshots: {
    readonly every: number; readonly settled: () => Promise<void>;
    /** The first step of each replica another reader of the log still needs decided again on a replay (audits). */
    readonly needed?: (replica: number) => number;
  };
}): Promise<void> {
  const snapshot = await startingSnapshot(o.controlLog, o.log);
  if (snapshot) o.replicas.restore(snapshot.replicas);
  const snapshots = new ControlLogSnapshots({
    controlLog: o.controlLog, log: o.log, every: o.snapshots.every, settled: o.snapshots.settled, replicas: () => o.replicas.snapshot(o.snapshots.needed), busy: () => o.rewinds.busy, startedFrom: snapshot?.seq,
  });
  const backlog: ControlLogEntry[] = (snapshot?.entries ?? []).map((e) => o.controlLog.fromSnapshotEntry(e));
  for (const e of backlog) snapshots.seen(e);
  const from = snapshot ? snapshot.seq + 1 : 1;
  const last = await o.controlLog.lastSeq();
  const reader = await o.controlLog.read(from);
  const goLive = async () => {
    for (const e of backlog) {
      if (e.source.kind !== 'step') continue;
      const signed = await o.controlLog.checkStepControl(e);
      if (!signed.ok) {
        o.log.warn({ seq: e.seq, subject: e.subject, fault: signed.fault, reason: signed.reason }, 'step control in the log not signed by a coordinator of the run: skipped');
        continue;
      }
      let control: StepControl;
      try {
        control = decodeStepControl(e.data);
      } catch { continue; /* unreadable: the replica writes it again */ }
      // A rewind starts the replica's next epoch: what follows it in the log is that epoch's step control.
      if (control.type === 'rewind') await o.rewinds.replayed(e.source.replica, control, e.seq);
      o.replicas.alreadyInLog(e.source.replica, control, o.replicas.epoch(e.source.replica));
    }
    o.replicas.start();
    for (const e of backlog) await o.reports.dispatch(e);
    const read: ReplayRead = { snapshot_seq: snapshot?.seq ?? null, entries: backlog.length, log_seq: last };
    if (backlog.length) o.log.info({ replayed: backlog.length, snapshot_seq: read.snapshot_seq, log_seq: last, steps: o.replicas.losses.map((l) => l.length) }, 'control log replayed');
    o.replayed?.(read);
  };
  let live = last < from;
  if (live) await goLive();
  o.reading(() => reader.close());
  for await (const e of reader) {
    if (!live) {
      backlog.push(e);
      snapshots.seen(e);
      if (e.seq >= last) { live = true; await goLive(); }
      continue;
    }
    await o.reports.dispatch(e);
    await snapshots.followed(e);
  }
}
