// Reading a whole object from the run's Object Store, with a watchdog. The
// client reads an object's chunks through a push consumer of its own that
// lives on one server and sends idle heartbeats every 30 s: when that server
// dies mid-read, the read waits for those heartbeats to go missing before
// anything notices. A chaos run under load showed it: a replacement restoring
// its checkpoint just as a server was killed waited ~30 s, and the pipeline
// with it (the `nats-checkpoint` tails of 39–44 s). Here a read that brings
// no chunk for STALL_MS is abandoned with a transient `timeout` error, which
// the callers' retries (retryTransient) start again from the beginning.
//
// The client checks the object's SHA-256 once the last chunk is in. A chaos
// run saw one read fail that check while a server of the cluster was being
// killed, and the object read again was whole: the chunk consumer had been
// moved between servers mid-read. So a mismatch is read again, DIGEST_READS
// times in all, before the object is called corrupt: what is stored wrong
// stays wrong, and no retry makes it right.
import type { ObjectStore } from '@nats-io/obj';

const STALL_MS = 10_000;
const DIGEST_READS = 3;

type ReadOptions = { stallMs?: number; progress?: (bytes: number) => void };

/** The object's bytes, or null where there is none of that name. `progress` hears the bytes read so far, chunk by chunk. */
export async function readObject(objects: ObjectStore, name: string, o: ReadOptions = {}): Promise<Uint8Array | null> {
  for (let read = 1; ; read++) {
    try {
      return await readOnce(objects, name, o);
    } catch (err) {
      if (!/digests do not match/.test((err as Error).message)) throw err;
      if (read === DIGEST_READS) throw new Error(`object ${name} is corrupt: its bytes did not match its SHA-256 digest in ${read} whole reads`);
    }
  }
}

async function readOnce(objects: ObjectStore, name: string, o: ReadOptions): Promise<Uint8Array | null> {
  const stallMs = o.stallMs ?? STALL_MS;
  const r = await objects.get(name);
  if (!r) return null;
  const reader = r.data.getReader();
  const chunks: Uint8Array[] = [];
  let length = 0;  // bytes read so far
  for (;;) {
    let timer: NodeJS.Timeout | undefined;
    const stalled = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timeout: no chunk of object ${name} for ${stallMs / 1000} s (its server lost?)`)), stallMs);
    });
    let next: ReadableStreamReadResult<Uint8Array>;
    try {
      next = await Promise.race([reader.read(), stalled]);
    } catch (err) {
      void reader.cancel().catch(() => {});
      throw err;
    } finally {
      clearTimeout(timer);
    }
    if (next.done) break;
    chunks.push(next.value);
    length += next.value.length;
    o.progress?.(length);
  }
  const failed = await r.error;  // a digest that does not match, say
  if (failed) throw failed;
  return Buffer.concat(chunks, length);
}
