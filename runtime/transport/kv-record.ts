// One JSON record in the run's KV bucket: a key that was never written, was
// deleted or purged, or holds nothing reads as undefined; any other value
// goes through the record's decoder, which names the key when it is not what
// the protocol says. Records that several writers advance are changed by
// compare-and-set, read again when another writer came first.
import type { KV, KvEntry } from '@nats-io/kv';
import { encodeJson } from '../../schemas/json-message.ts';

type Decode<T> = (bytes: Uint8Array, what: string) => T;

/** An entry's record, or undefined where the key holds none. */
export function kvRecordOf<T>(e: KvEntry | null, decode: Decode<T>): T | undefined {
  return e && e.operation === 'PUT' && e.value.length ? decode(e.value, `KV ${e.key}`) : undefined;
}

export async function readKvRecord<T>(kv: KV, key: string, decode: Decode<T>): Promise<T | undefined> {
  return kvRecordOf(await kv.get(key), decode);
}

// How long compare-and-set keeps reading again after a conflict. A read can
// lag the write it must see for seconds: on a cluster, a server cut off from
// the others answers as the stream's leader until it notices (up to
// nats-server's 10 s lost-quorum interval). 21 attempts at once once failed
// the run so, after a server's routes healed.
const CONFLICT_PATIENCE_MS = 30_000;

/**
 * Writes `next(current)` by compare-and-set, reading again after another
 * writer's change (sooner, then up to a second apart, for CONFLICT_PATIENCE_MS);
 * `next` answers undefined where nothing is to change. Returns the record as it stands after.
 */
export async function changeKvRecord<T>(kv: KV, key: string, decode: Decode<T>, next: (current: T | undefined) => T | undefined): Promise<T | undefined> {
  const deadline = Date.now() + CONFLICT_PATIENCE_MS;
  for (let attempt = 0; ; attempt++) {
    const e = await kv.get(key);
    const current = kvRecordOf(e, decode);
    const record = next(current);
    if (record === undefined) return current;
    try {
      if (e) await kv.update(key, encodeJson(record), e.revision);
      else await kv.create(key, encodeJson(record));
      return record;
    } catch (err) {
      // Another writer came first, or the read missed a write: read again.
      if (Date.now() > deadline || !/wrong last sequence|key exists/i.test((err as Error).message)) throw err;
      await afterConflict(attempt);
    }
  }
}

/** The pause before compare-and-set's attempt after `attempt` failed on a conflict: none at first, then 50 ms doubling to 1 s. */
export function afterConflict(attempt: number): Promise<void> {
  return attempt > 0 ? new Promise((resolve) => setTimeout(resolve, Math.min(1_000, 25 * 2 ** attempt))) : Promise.resolve();
}
