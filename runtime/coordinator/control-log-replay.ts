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
import { decodeStepControl, type StepControl } from '../../schemas/control-messages.ts';
import type { Logger } from '../log.ts';
import type { ControlLog, ControlLogEntry } from '../transport/control-log.ts';
import type { Replicas } from './replicas.ts';
import type { Reports } from './reports.ts';
import type { Rewinds } from './rewinds.ts';

export async function followControlLog(o: {
  readonly controlLog: ControlLog; readonly replicas: Replicas; readonly reports: Reports; readonly rewinds: Rewinds; readonly log: Logger;
  /** Told how to stop reading, once the history is replayed. */
  readonly reading: (stop: () => void) => void;
  /** The history is replayed and the replicas have started. */
  readonly replayed?: () => void;
}): Promise<void> {
  const last = await o.controlLog.lastSeq();
  const backlog: ControlLogEntry[] = [];
  const reader = await o.controlLog.read();
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
    if (backlog.length) o.log.info({ replayed: backlog.length, steps: o.replicas.losses.map((l) => l.length) }, 'control log replayed');
    o.replayed?.();
  };
  if (last === 0) await goLive();
  let live = last === 0;
  o.reading(() => reader.close());
  for await (const e of reader) {
    if (!live) {
      backlog.push(e);
      if (e.seq >= last) { live = true; await goLive(); }
      continue;
    }
    await o.reports.dispatch(e);
  }
}
