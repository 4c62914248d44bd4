// A snapshot of the control log, so that a restarted coordinator reads it
// and the log's tail instead of the whole log (runtime/coordinator/
// control-log-snapshots.ts). It holds, as of log sequence `seq`: each
// replica's commits before `first_step` in short (loss, skipped, rolled
// back) and the log entries a replay still needs, verbatim with their
// signatures: every step control and report from each replica's
// `first_step` on, every rewind and every final report. A replay of those
// entries and the tail re-decides the steps from `first_step` on exactly as a
// replay of the whole log would.
//
// The body is an object in the run's Object Store; the `control-snapshot` KV
// record, which the coordinator alone writes, names it and vouches for it
// with its SHA-256.
import { arrayOf, count, jsonDecoder, nullable, object, oneOf, optional, real, sha256Digest, text } from './json-fields.ts';

export const CONTROL_SNAPSHOT_VERSION = 1 as const;

/** `control-snapshot`: where the latest snapshot is, and its digest. */
export interface ControlSnapshotPointer {
  readonly seq: number;
  readonly object: string;
  readonly sha256: string;
  readonly bytes: number;
}

/** A replica's epoch is not here: every rewind stays among the entries, and the replay sets it as a full one would. */
export interface ReplicaSnapshot {
  /** The first step the replay decides again; the commits before it are below. */
  readonly first_step: number;
  /** The loss of each step before first_step; null where it was not finite (a skipped step's). */
  readonly losses: Array<number | null>;
  /** Steps before first_step committed as skipped, and whose commit rolled back a provisional update. */
  readonly skipped: number[];
  readonly rolled_back: number[];
}

/** A log entry as stored: its data and signature header as they were written (base64). */
export interface SnapshotEntry {
  readonly seq: number;
  readonly subject: string;
  readonly data: string;
  readonly signature?: string;
}

export interface ControlSnapshot {
  readonly version: typeof CONTROL_SNAPSHOT_VERSION;
  /** The last log sequence it covers: the replay reads the log from seq + 1. */
  readonly seq: number;
  readonly replicas: ReplicaSnapshot[];
  /** In log order. */
  readonly entries: SnapshotEntry[];
}

const REPLICA = object({ first_step: count, losses: arrayOf(nullable(real)), skipped: arrayOf(count), rolled_back: arrayOf(count) });
const ENTRY = object({ seq: count, subject: text, data: text, signature: optional(text) });

export const decodeControlSnapshotPointer = jsonDecoder<ControlSnapshotPointer>('control snapshot record', object({ seq: count, object: text, sha256: sha256Digest, bytes: count }));
export const decodeControlSnapshot = jsonDecoder<ControlSnapshot>('control snapshot', object({
  version: oneOf([CONTROL_SNAPSHOT_VERSION] as const), seq: count, replicas: arrayOf(REPLICA), entries: arrayOf(ENTRY),
}));
