// The run's `coordinator` record in KV: the public keys its coordinators sign
// step control with. Only the coordinator writes it (hosts may not write KV),
// so a key found here is one a coordinator of this run held. A coordinator
// adds its key once, by compare-and-set, and signs with the key's index; keys
// are never removed, because the control log still holds what each signed.
import type { KV } from '@nats-io/kv';
import { encodeJson } from '../../schemas/json-message.ts';
import { decodeCoordinatorRecord, type CoordinatorRecord } from '../../schemas/run-records.ts';
import { retryTransient } from './durable-publish.ts';
import { readKvRecord } from './kv-record.ts';
import { runStateKeys } from './subjects.ts';

const key = runStateKeys.coordinator;

export function readCoordinatorRecord(kv: KV): Promise<CoordinatorRecord | undefined> {
  return retryTransient('coordinator record', () => readKvRecord(kv, key, decodeCoordinatorRecord));
}

/** Adds `publicKey` to the record where it is not there yet; returns its index, what its signatures name. */
export async function addCoordinatorKey(kv: KV, publicKey: string): Promise<number> {
  for (;;) {
    const e = await retryTransient('coordinator record', () => kv.get(key));
    const current = e && e.operation === 'PUT' && e.value.length ? decodeCoordinatorRecord(e.value, `KV ${key}`) : undefined;
    const known = current?.keys.indexOf(publicKey) ?? -1;
    if (known >= 0) return known;
    const record: CoordinatorRecord = { keys: [...(current?.keys ?? []), publicKey] };
    try {
      if (e && current) await kv.update(key, encodeJson(record), e.revision);
      else await kv.create(key, encodeJson(record));
      return record.keys.length - 1;
    } catch (err) {
      if (!/wrong last sequence|key exists/i.test((err as Error).message)) throw err;  // another coordinator wrote first: read again
    }
  }
}
