// What an audit of a slot reads back from NATS (runtime/coordinator/audits.ts):
// the frames stored in the slot's input stream from where a checkpoint's
// inputs started, with their signatures, and the checkpoint's state. Frames
// stay in the stream while an audit holds them (the coordinator purges past
// them only once it is done).
import { DeliverPolicy } from '@nats-io/jetstream';
import { SIGNATURE_HEADER } from '../security/message-signature.ts';
import { retryTransient } from './durable-publish.ts';
import { readObject } from './object-reads.ts';
import type { RunResources } from './run-resources.ts';
import type { EdgeKind } from './subjects.ts';

/** A frame as stored: where, its bytes, and the signature its sender put on it. */
export interface StoredFrame {
  readonly kind: EdgeKind;
  readonly subject: string;
  readonly seq: number;
  readonly bytes: Uint8Array;
  readonly signature: string | undefined;
}

export interface SlotEvidence {
  /** The frames of `kind` in the slot's input stream from `fromSeq` on, up to the last stored when called. */
  storedInputs(replica: number, stage: number, kind: EdgeKind, fromSeq: number): Promise<StoredFrame[]>;
  /** A checkpoint's state, or null where the object is gone. */
  checkpointState(object: string): Promise<Uint8Array | null>;
}

export function slotEvidence(res: RunResources): SlotEvidence {
  const n = res.names;
  return {
    storedInputs: (replica, stage, kind, fromSeq) => retryTransient(`inputs of slot ${replica}.${stage}`, async () => {
      const stream = n.inputStream(replica, stage);
      const last = (await res.jsm.streams.info(stream)).state.last_seq;
      const frames: StoredFrame[] = [];
      if (last < fromSeq) return frames;
      const consumer = await res.js.consumers.get(stream, { filter_subjects: [n.edgeIn(kind, replica, stage)], deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: Math.max(1, fromSeq) });
      // Fetches until one brings nothing (none of the edge is left, or there was none from fromSeq) or the last is in.
      for (;;) {
        let got = 0, done = false;
        for await (const m of await consumer.fetch({ max_bytes: 16 * 1024 * 1024, expires: 1000 })) {
          got++;
          frames.push({ kind, subject: m.subject, seq: m.seq, bytes: m.data, signature: m.headers?.get(SIGNATURE_HEADER) });
          // A fetch runs until its bytes are in or it expires: it is left as soon as the last message is.
          if (m.seq >= last || m.info.pending === 0) { done = true; break; }
        }
        if (done || got === 0) break;
      }
      return frames;
    }),
    checkpointState: (object) => retryTransient(`checkpoint ${object}`, () => readObject(res.objects, object)),
  };
}
