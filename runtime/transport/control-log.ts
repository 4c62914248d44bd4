// The coordinator's side of the control log (the run's JetStream stream of
// step control and stage reports): it writes each replica's step control
// durably, once (its Nats-Msg-Id names the replica, the kind and the step,
// so a write repeated after a restart or a server failover is stored once)
// and signed with the coordinator's key (security/coordinator-keys.ts: the
// stages act on step control only when it is), and reads the log from its start (or from where its snapshot ends)
// through a durable consumer of its own, each entry typed by what its subject names and acked as it is taken. The
// snapshot's body is an object, vouched for by the SHA-256 in a KV record only the coordinator writes.
import { randomBytes } from 'node:crypto';
import type { JsMsg } from '@nats-io/jetstream';
import { headers } from '@nats-io/transport-node';
import { encodeJson } from '../../schemas/json-message.ts';
import { decodeControlSnapshot, decodeControlSnapshotPointer, type ControlSnapshot, type ControlSnapshotPointer, type SnapshotEntry } from '../../schemas/control-snapshot.ts';
import { sha256Hex } from '../security/message-signature.ts';
import { readKvRecord } from './kv-record.ts';
import type { StepControl } from '../../schemas/control-messages.ts';
import { controlSignature, CoordinatorKeys, type ControlSigner, type ControlVerdict } from '../security/coordinator-keys.ts';
import { SIGNATURE_HEADER } from '../security/message-signature.ts';
import { publishDurable, retryTransient } from './durable-publish.ts';
import { openReaderConsumer, PULL_EXPIRES_MS, type RunResources } from './run-resources.ts';
import { openRemakingReader, pullFrom } from './slot-reader.ts';
import { readObject } from './object-reads.ts';

/** One message of the control log, as the coordinator reads it. */
export interface ControlLogEntry {
  readonly seq: number;
  readonly subject: string;
  readonly data: Uint8Array;
  /** The sender's signature header (message-signature.ts), if it sent one. */
  readonly signature: string | undefined;
  /** What the subject names: a slot's report, or a replica's step control. */
  readonly source: { kind: 'report'; replica: number; stage: number } | { kind: 'step'; replica: number } | { kind: 'other' };
}

/** The log from its start, entry by entry, until closed. */
export interface ControlLogReader extends AsyncIterable<ControlLogEntry> {
  close(): void;
}

export interface ControlLog {
  /**
   * Writes a replica's step control of `epoch` (0 until an audit's catch rewinds the replica); a second write of the
   * same (stepControlId) is dropped by the server. Resolves to its sequence in the log (the first write's, for a second).
   */
  writeStepControl(replica: number, control: StepControl, epoch?: number): Promise<number>;
  /** The sequence of the log's last message now: 0 when it is empty. */
  lastSeq(): Promise<number>;
  /** Opens a consumer of the log from `fromSeq` (its start by default), deleting any an earlier coordinator left. */
  read(fromSeq?: number): Promise<ControlLogReader>;
  /** The latest snapshot, checked against its record's digest; undefined if none was written. Throws naming what is wrong. */
  readSnapshot(): Promise<ControlSnapshot | undefined>;
  /** Stores a snapshot, points the record at it, then drops the one before. */
  writeSnapshot(snapshot: ControlSnapshot): Promise<ControlSnapshotPointer>;
  /** A log entry as a snapshot keeps it, and back. */
  toSnapshotEntry(e: ControlLogEntry): SnapshotEntry;
  fromSnapshotEntry(e: SnapshotEntry): ControlLogEntry;
  /** Whether a step-control entry is a coordinator's of this run, on the subject it names (a replay trusts no other). */
  checkStepControl(e: ControlLogEntry): Promise<ControlVerdict>;
}

/**
 * What makes a step control unique in the log, and its Nats-Msg-Id: `open-<replica>-<step>`, `commit-<replica>-<step>`;
 * after a rewind the step is done again, so its control carries the epoch: `open-<replica>-<step>-e<epoch>`.
 */
export function stepControlId(replica: number, control: Pick<StepControl, 'type' | 'step'>, epoch = 0): string {
  return `${control.type}-${replica}-${control.step}${epoch ? `-e${epoch}` : ''}`;
}

/**
 * The log from `fromSeq` on, through a consumer of the coordinator's own
 * (any an earlier coordinator left is deleted). Deliveries in flight when a
 * NATS server died are gone while the consumer counts them as delivered, and
 * would come again only after ack_wait (minutes): a report lost so would
 * leave its step undecided and the run standing still, with nothing logged.
 * The reader finds such a loss as the stages' readers do (slot-reader.ts: a
 * gap in the delivery sequence, or a wait while the consumer counts more
 * delivered than was taken) and makes its consumer again from the entry after
 * the last one taken, so entries are taken in log order, each once.
 */
async function readLog(res: RunResources, fromSeq: number, entry: (m: JsMsg) => ControlLogEntry): Promise<ControlLogReader> {
  const n = res.names;
  let taken = fromSeq - 1;  // the stream sequence of the last entry yielded
  const reader = await openRemakingReader(res, n.controlStream, async () => {
    const name = await openReaderConsumer(res, {
      stream: n.controlStream,
      name: n.coordinatorConsumer(randomBytes(4).toString('hex')),
      prefix: n.coordinatorConsumerPrefix,
      filter: n.all,
      ...(taken + 1 > 1 ? { startSeq: taken + 1 } : {}),
    });
    const messages = await pullFrom(res, n.controlStream, name, { expires: PULL_EXPIRES_MS });
    return { name, messages };
  });
  return {
    close: () => void reader.close().catch(() => {}),
    async *[Symbol.asyncIterator]() {
      for await (const m of reader) {
        m.ack();
        if (m.seq <= taken) continue;  // delivered again by a consumer made after a loss
        taken = m.seq;
        yield entry(m);
      }
    },
  };
}

/** The control log of the run, its step control signed by `signer` (the coordinator's key, in the run's `coordinator` record). */
export function controlLog(res: RunResources, signer: ControlSigner): ControlLog {
  const n = res.names;
  const keys = new CoordinatorKeys(res.kv);
  const typed = (seq: number, subject: string, data: Uint8Array, signature: string | undefined): ControlLogEntry => ({
    seq, subject, data, signature,
    source: n.isReport(subject) ? { kind: 'report', ...n.reportSlot(subject) }
      : n.isStepControl(subject) ? { kind: 'step', replica: n.stepControlReplica(subject) }
      : { kind: 'other' },
  });
  const entry = (m: JsMsg): ControlLogEntry => typed(m.seq, m.subject, m.data, m.headers?.get(SIGNATURE_HEADER) || undefined);
  const snapshotPointer = () => retryTransient('control snapshot record', () => readKvRecord(res.kv, n.controlSnapshotKey, decodeControlSnapshotPointer));
  return {
    writeStepControl: async (replica, control, epoch = 0) => {
      const subject = n.stepControl(replica);
      const body = encodeJson(control);
      const h = headers();
      h.set(SIGNATURE_HEADER, controlSignature(signer, subject, body));
      return (await publishDurable(res.js, subject, body, { msgID: stepControlId(replica, control, epoch), headers: h })).seq;
    },
    checkStepControl: (e) => keys.check({
      subject: e.subject, body: e.data, header: e.signature, expected: e.source.kind === 'step' ? n.stepControl(e.source.replica) : '',
    }),
    lastSeq: async () => (await retryTransient('control log info', () => res.jsm.streams.info(n.controlStream))).state.last_seq,
    read: (fromSeq) => readLog(res, fromSeq ?? 1, entry),
    readSnapshot: async () => {
      const pointer = await snapshotPointer();
      if (!pointer) return undefined;
      const body = await retryTransient(`control snapshot ${pointer.object}`, () => readObject(res.objects, pointer.object));
      if (!body) throw new Error(`control snapshot ${pointer.object} (log sequence ${pointer.seq}) is missing from the object store`);
      const sha = sha256Hex(body);
      if (sha !== pointer.sha256) throw new Error(`control snapshot ${pointer.object}: its sha256 is ${sha.slice(0, 16)}…, its record says ${pointer.sha256.slice(0, 16)}…: it was overwritten in the object store`);
      const snapshot = decodeControlSnapshot(body, `control snapshot ${pointer.object}`);
      if (snapshot.seq !== pointer.seq) throw new Error(`control snapshot ${pointer.object} covers the log up to ${snapshot.seq}, its record says ${pointer.seq}`);
      return snapshot;
    },
    writeSnapshot: async (snapshot) => {
      const body = encodeJson(snapshot);
      const pointer: ControlSnapshotPointer = { seq: snapshot.seq, object: n.controlSnapshot(snapshot.seq), sha256: sha256Hex(body), bytes: body.byteLength };
      const before = await snapshotPointer();
      await retryTransient(`control snapshot ${pointer.object}`, () => res.objects.putBlob({ name: pointer.object }, body));
      await retryTransient('control snapshot record', () => res.kv.put(n.controlSnapshotKey, encodeJson(pointer)));
      if (before && before.object !== pointer.object) await res.objects.delete(before.object).catch(() => {});
      return pointer;
    },
    toSnapshotEntry: (e) => ({ seq: e.seq, subject: e.subject, data: Buffer.from(e.data).toString('base64'), ...(e.signature ? { signature: e.signature } : {}) }),
    fromSnapshotEntry: (e) => typed(e.seq, e.subject, new Uint8Array(Buffer.from(e.data, 'base64')), e.signature),
  };
}
