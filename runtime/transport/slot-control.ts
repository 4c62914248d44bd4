// A slot's step control as its holder receives it: the coordinator's `open`
// and `commit` of each step of its replica, from the run's control log,
// through the holder's own durable consumer, from just after its checkpoint's
// commit on. Each is acked as it arrives (where a holder resumes is in its
// checkpoint, not in these acks) and decoded.
import { decodeStepControl, type StepControl } from '../../schemas/control-messages.ts';
import { openReaderConsumer, type RunResources } from './run-resources.ts';
import { openSlotReader, type SlotHolder } from './slot-reader.ts';

export interface ControlDelivery {
  /** Its sequence in the control log: a checkpoint after a commit resumes the log just past it. */
  readonly seq: number;
  readonly control: StepControl;
}

/** The slot's step control, in log order, until `close()`. */
export interface SlotControl extends AsyncIterable<ControlDelivery> {
  close(): Promise<void>;
}

/** Step control of the holder's replica, from sequence `startSeq` of the control log (or its beginning). */
export async function openSlotControl(res: RunResources, holder: SlotHolder, startSeq?: number): Promise<SlotControl> {
  const { names } = res;
  const { replica, stage, generation } = holder;
  const messages = await openSlotReader(res, holder, names.controlStream, () => openReaderConsumer(res, {
    stream: names.controlStream,
    name: names.controlConsumer(replica, stage, generation),
    prefix: names.controlConsumerPrefix(replica, stage),
    filter: names.stepControl(replica),
    startSeq,
  }));
  return {
    close: () => messages.close().then(() => {}),
    async *[Symbol.asyncIterator]() {
      for await (const m of messages) {
        m.ack();
        yield { seq: m.seq, control: decodeStepControl(m.data) };
      }
    },
  };
}
