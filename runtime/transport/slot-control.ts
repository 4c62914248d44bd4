// A slot's step control as its holder receives it: the coordinator's `open`
// and `commit` of each step of its replica, from the run's control log,
// through the holder's own durable consumer, from just after its checkpoint's
// commit on. Each is acked as it arrives (where a holder resumes is in its
// checkpoint, not in these acks) and handed on as it came, with its subject
// and signature: the holder checks that the coordinator signed it for this
// replica (host/step-control.ts) before it decodes or acts on it.
import { SIGNATURE_HEADER } from '../security/message-signature.ts';
import { openReaderConsumer, type RunResources } from './run-resources.ts';
import { openSlotReader, type SlotHolder } from './slot-reader.ts';

export interface ControlDelivery {
  /** Its sequence in the control log: a checkpoint after a commit resumes the log just past it. */
  readonly seq: number;
  readonly stream: string;
  readonly subject: string;
  readonly data: Uint8Array;
  /** The sender's signature header, if it sent one. */
  readonly signature: string | undefined;
  /** Already acked on arrival: a no-op, for the dead-letter path. */
  ack(): void;
}

/** The slot's step control, in log order, until `close()`. */
export interface SlotControl extends AsyncIterable<ControlDelivery> {
  close(): Promise<void>;
}

/** Step control of the holder's replica, from sequence `startSeq` of the control log (or its beginning); `replaced` hears of a consumer of another config replaced. */
export async function openSlotControl(res: RunResources, holder: SlotHolder, startSeq?: number, replaced?: (why: string) => void): Promise<SlotControl> {
  const { names } = res;
  const { replica, stage, generation } = holder;
  const messages = await openSlotReader(res, holder, names.controlStream, () => openReaderConsumer(res, {
    stream: names.controlStream,
    name: names.controlConsumer(replica, stage, generation),
    prefix: names.controlConsumerPrefix(replica, stage),
    filter: names.stepControl(replica),
    startSeq,
    replaced,
  }));
  return {
    close: () => messages.close().then(() => {}),
    async *[Symbol.asyncIterator]() {
      for await (const m of messages) {
        m.ack();
        yield { seq: m.seq, stream: names.controlStream, subject: m.subject, data: m.data, signature: m.headers?.get(SIGNATURE_HEADER), ack: () => {} };
      }
    },
  };
}
