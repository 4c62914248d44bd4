// The stage reports the control log holds, read from its start: for audits
// after (or during) a run. `caravan chaos` counts from them how often each
// microbatch went into each stage's update, replays included.
import { decodeStageReport, type StageReport } from '../../schemas/control-messages.ts';
import type { RunResources } from './run-resources.ts';

/** Every stage report stored so far, oldest first, up to the last message in the log when called. */
export async function* storedStageReports(res: RunResources): AsyncGenerator<StageReport> {
  const last = (await res.jsm.streams.info(res.names.controlStream)).state.last_seq;
  if (last === 0) return;
  const consumer = await res.js.consumers.get(res.names.controlStream, { filter_subjects: [res.names.reports] });
  const messages = await consumer.consume();
  try {
    for await (const m of messages) {
      yield decodeStageReport(m.data);
      if (m.seq >= last || m.info.pending === 0) break;
    }
  } finally {
    await messages.close();
  }
}
