// Reading one JSON record from the run's KV bucket: a key that was never
// written, was deleted or purged, or holds nothing reads as undefined; any
// other value goes through the record's decoder, which names the key when it
// is not what the protocol says.
import type { KV } from '@nats-io/kv';

export async function readKvRecord<T>(kv: KV, key: string, decode: (bytes: Uint8Array, what: string) => T): Promise<T | undefined> {
  const e = await kv.get(key);
  return e && e.operation === 'PUT' && e.value.length ? decode(e.value, `KV ${key}`) : undefined;
}
