// Slot records in the run's KV bucket: who holds (replica, stage), under which
// generation and key, and the holder's last checkpoint. Only the coordinator
// writes them (hosts may not write run state): it hands a slot to a new host
// by bumping its generation, and records a checkpoint a holder reports only
// while that holder's generation is the slot's, by a compare-and-set on the
// record's revision. That is the fence: two hosts never both advance one slot.
import type { KV } from '@nats-io/kv';
import { retryTransient } from './durable-publish.ts';
import { runStateKeys } from './subjects.ts';
import { encodeJson } from '../../schemas/json-message.ts';
import type { CheckpointPointer } from '../../schemas/control-messages.ts';
import { decodeSlotRecord, decodeSlotSigner, type SentUntil, type SlotRecord, type SlotSigner } from '../../schemas/run-records.ts';
import { afterConflict, readKvRecord } from './kv-record.ts';

const MAX_SIGNERS = 16;

export interface SlotEntry {
  readonly record: SlotRecord;
  readonly revision: number;
}

/** The slot's holder changed: this host was replaced and must stop. */
export class SlotLostError extends Error {
  constructor(readonly replica: number, readonly stage: number, readonly host: string, readonly holder: SlotRecord | undefined) {
    super(holder
      ? `replaced: replica ${replica} stage ${stage} now belongs to host ${holder.host} (generation ${holder.generation}); host ${host} stops`
      : `replaced: replica ${replica} stage ${stage} is no longer held by host ${host}; it stops`);
    this.name = 'SlotLostError';
  }
}

/** The slot's replica was rewound (an audit's catch): its holder stops, and starts again from the new slot record. */
export class SlotRewoundError extends Error {
  constructor(readonly replica: number, readonly epoch: number) {
    super(`replica ${replica} was rewound to its start (epoch ${epoch}): the slot starts again`);
    this.name = 'SlotRewoundError';
  }
}

const slotKey = runStateKeys.slot;

export function decodeSlot(bytes: Uint8Array, key: string): SlotRecord {
  return decodeSlotRecord(bytes, `slot record ${key}`);
}

export async function readSlot(kv: KV, replica: number, stage: number): Promise<SlotEntry | undefined> {
  const e = await kv.get(slotKey(replica, stage));
  if (!e || e.operation !== 'PUT' || e.value.length === 0) return undefined;
  return { record: decodeSlot(e.value, e.key), revision: e.revision };
}

/**
 * Gives the slot to `host` with the next generation, keeping the last
 * checkpoint and binding the generation to the host's public key. `until`
 * holds the last sequences of the streams the previous holder sent to, as
 * the coordinator found them: its frames after those are stale. Retries when another write got in first.
 */
export async function assignSlot(kv: KV, replica: number, stage: number, host: string, signer?: { key: string; until: SentUntil }): Promise<SlotEntry> {
  for (let attempt = 0; ; attempt++) {
    await afterConflict(attempt);
    const current = await readSlot(kv, replica, stage);
    // Already this host's (an earlier attempt landed before its reply was lost): assigning twice must not bump the generation.
    if (current?.record.host === host) return current;
    const generation = (current?.record.generation ?? 0) + 1;
    const signers = signer ? await handOver(kv, current?.record, generation, host, signer) : current?.record.signers;
    const record: SlotRecord = {
      replica, stage, host, generation, checkpoint: current?.record.checkpoint, ...(signers ? { signers } : {}), ...(current?.record.rewound ? { rewound: current.record.rewound } : {}),
    };
    try {
      const revision = current
        ? await kv.update(slotKey(replica, stage), encodeJson(record), current.revision)
        : await kv.create(slotKey(replica, stage), encodeJson(record));
      return { record, revision };
    } catch (err) {
      if (!/wrong last sequence|key exists/i.test((err as Error).message)) throw err;
    }
  }
}

/**
 * The slot's first record, before any host holds it: generation 0, no host, and the checkpoint the run starts from
 * (a run started from given states). A slot that has a record already is left as it is.
 */
export async function seedSlot(kv: KV, replica: number, stage: number, checkpoint: CheckpointPointer): Promise<void> {
  const record: SlotRecord = { replica, stage, host: '', generation: 0, checkpoint };
  try {
    await kv.create(slotKey(replica, stage), encodeJson(record));
  } catch (err) {
    if (!/key exists|wrong last sequence/i.test((err as Error).message)) throw err;
  }
}

/** Records a new checkpoint if `held` is still the slot's latest record; otherwise the holder was replaced. */
export async function recordCheckpoint(kv: KV, held: SlotEntry, checkpoint: CheckpointPointer): Promise<SlotEntry> {
  const { replica, stage, host, generation } = held.record;
  const record: SlotRecord = { ...held.record, checkpoint };
  try {
    const revision = await retryTransient(`checkpoint record of slot ${replica}.${stage}`, () => kv.update(slotKey(replica, stage), encodeJson(record), held.revision));
    return { record, revision };
  } catch (err) {
    if (!/wrong last sequence/i.test((err as Error).message)) throw err;
    // An earlier attempt that timed out may have landed: then the record is ours, with this checkpoint.
    const now = await readSlot(kv, replica, stage);
    if (now && now.record.host === host && now.record.generation === generation && now.record.checkpoint?.object === checkpoint.object) return now;
    throw new SlotLostError(replica, stage, host, now?.record);
  }
}

/**
 * Records the checkpoint a slot's holder of `generation` reported, if that
 * generation still holds the slot and the checkpoint is newer than the one
 * recorded (reports are replayed after a coordinator restart). Returns the
 * checkpoint it replaced, or why nothing was recorded.
 */
export async function recordReportedCheckpoint(
  kv: KV, replica: number, stage: number, generation: number, checkpoint: CheckpointPointer,
  /** Runs once the checkpoint is known to be new for its holder, before it is written: what must be saved first. */
  beforeWrite?: (previous: CheckpointPointer | undefined) => Promise<void>,
): Promise<{ recorded: true; previous?: CheckpointPointer } | { recorded: false; why: string }> {
  const current = await retryTransient(`slot ${replica}.${stage}`, () => readSlot(kv, replica, stage));
  if (!current) return { recorded: false, why: 'the slot has no record' };
  if (current.record.generation !== generation) return { recorded: false, why: `generation ${generation} no longer holds the slot (now ${current.record.generation})` };
  const previous = current.record.checkpoint;
  if (previous && previous.step >= checkpoint.step) return { recorded: false, why: `step ${previous.step} is recorded already` };
  await beforeWrite?.(previous);
  try {
    await recordCheckpoint(kv, current, checkpoint);
    return { recorded: true, ...(previous ? { previous } : {}) };
  } catch (err) {
    if (err instanceof SlotLostError) return { recorded: false, why: err.message };
    throw err;
  }
}

/**
 * Rewinds the slot (an audit's catch, RewindControl): its holder now keeps it
 * under `generation`, with no checkpoint, starting from the initial weights and
 * reading from `rewound.resume`; the generation before keeps `until`, so its
 * frames stored after the rewind was decided are stale. Idempotent: a slot at
 * `generation` or later is left as it is (a restarted coordinator completes a
 * rewind it had begun).
 */
export async function rewindSlot(kv: KV, replica: number, stage: number, generation: number, rewound: NonNullable<SlotRecord['rewound']>, until: SentUntil): Promise<SlotEntry> {
  for (let attempt = 0; ; attempt++) {
    await afterConflict(attempt);
    const current = await readSlot(kv, replica, stage);
    if (!current) throw new Error(`slot ${replica}.${stage} has no record to rewind`);
    if (current.record.generation >= generation) return current;
    const { host, generation: was } = current.record;
    const key = current.record.signers?.find((x) => x.generation === was)?.key;
    if (!key) throw new Error(`slot ${replica}.${stage}: generation ${was} has no signer to carry over`);
    const record: SlotRecord = { replica, stage, host, generation, signers: await handOver(kv, current.record, generation, host, { key, until }), rewound };
    try {
      return { record, revision: await kv.update(slotKey(replica, stage), encodeJson(record), current.revision) };
    } catch (err) {
      if (!/wrong last sequence/i.test((err as Error).message)) throw err;
    }
  }
}

/**
 * The slot's signers once `generation` takes it: the one before keeps `until` (its later frames are stale), the newest
 * last. Those beyond MAX_SIGNERS leave the list, written first to records of their own (`signer.<r>.<s>.<generation>`):
 * a coordinator replaying the control log from its start checks their reports against them.
 */
async function handOver(kv: KV, current: SlotRecord | undefined, generation: number, host: string, signer: { key: string; until: SentUntil }): Promise<SlotSigner[]> {
  const before = (current?.signers ?? []).map((x) => (x.generation === current!.generation && x.until === undefined ? { ...x, until: signer.until } : x));
  const all = [...before, { generation, host, key: signer.key }];
  for (const retired of all.slice(0, -MAX_SIGNERS)) {
    await retryTransient(`retired signer ${retired.generation} of slot ${current!.replica}.${current!.stage}`, () => kv.put(runStateKeys.retiredSigner(current!.replica, current!.stage, retired.generation), encodeJson(retired)));
  }
  return all.slice(-MAX_SIGNERS);
}

/** A signer of the slot that its record no longer lists (handOver), if there was one of that generation. */
export function readRetiredSigner(kv: KV, replica: number, stage: number, generation: number): Promise<SlotSigner | undefined> {
  return retryTransient(`retired signer ${generation} of slot ${replica}.${stage}`, () => readKvRecord(kv, runStateKeys.retiredSigner(replica, stage, generation), decodeSlotSigner));
}
