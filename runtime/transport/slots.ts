// Slot records in the run's KV bucket: who holds (replica, stage), under which
// generation, and the holder's last checkpoint. Every write is a
// compare-and-set on the record's revision, which is the fence: the
// coordinator hands a slot to a new host by bumping its generation, and from
// then on the old holder's checkpoint writes fail, so two hosts never both
// advance one slot.
import type { KV } from '@nats-io/kv';
import { retryTransient } from './durable-publish.ts';
import { decodeJson, encodeJson } from './json.ts';

export interface CheckpointPointer {
  readonly step: number;                 // the last step whose update the checkpoint holds
  readonly object: string;               // Object Store name of the stage state (safetensors)
  /** Where the holder's inputs start after that step: edge stream sequences, and the control log's. */
  readonly resume: { readonly act?: number; readonly grad?: number; readonly control: number };
}

export interface SlotRecord {
  readonly replica: number;
  readonly stage: number;
  readonly host: string;
  readonly generation: number;
  readonly checkpoint?: CheckpointPointer;
}

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

export const slotKey = (replica: number, stage: number) => `slot.${replica}.${stage}`;

export function decodeSlot(bytes: Uint8Array, key: string): SlotRecord {
  return decodeJson<SlotRecord>(bytes, `slot record ${key}`);
}

export async function readSlot(kv: KV, replica: number, stage: number): Promise<SlotEntry | undefined> {
  const e = await kv.get(slotKey(replica, stage));
  if (!e || e.operation !== 'PUT' || e.value.length === 0) return undefined;
  return { record: decodeSlot(e.value, e.key), revision: e.revision };
}

/** Gives the slot to `host` with the next generation, keeping the last checkpoint. Retries when another write got in first. */
export async function assignSlot(kv: KV, replica: number, stage: number, host: string): Promise<SlotEntry> {
  for (;;) {
    const current = await readSlot(kv, replica, stage);
    // Already this host's (an earlier attempt landed before its reply was lost): assigning twice must not bump the generation.
    if (current?.record.host === host) return current;
    const record: SlotRecord = { replica, stage, host, generation: (current?.record.generation ?? 0) + 1, checkpoint: current?.record.checkpoint };
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
