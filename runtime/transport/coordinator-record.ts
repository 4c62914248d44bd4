// The run's `coordinator` record in KV: the public keys its coordinators sign
// step control with. Only the coordinator writes it (hosts may not write KV),
// so a key found here is one a coordinator of this run held. A coordinator
// adds its key once, by compare-and-set, and signs with the key's index; keys
// are never removed, because the control log still holds what each signed.
import type { KV } from '@nats-io/kv';
import { decodeCoordinatorRecord, type CoordinatorRecord } from '../../schemas/run-records.ts';
import { retryTransient } from './durable-publish.ts';
import { changeKvRecord, readKvRecord } from './kv-record.ts';
import { runStateKeys } from './subjects.ts';

const key = runStateKeys.coordinator;

export function readCoordinatorRecord(kv: KV): Promise<CoordinatorRecord | undefined> {
  return retryTransient('coordinator record', () => readKvRecord(kv, key, decodeCoordinatorRecord));
}

/** Adds `publicKey` to the record where it is not there yet; returns its index, what its signatures name. */
export async function addCoordinatorKey(kv: KV, publicKey: string): Promise<number> {
  const record = await retryTransient('coordinator record', () => changeKvRecord(kv, key, decodeCoordinatorRecord, (current) =>
    current?.keys.includes(publicKey) ? undefined : { keys: [...(current?.keys ?? []), publicKey] }));
  return record!.keys.indexOf(publicKey);
}
