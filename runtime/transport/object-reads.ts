// Reading a whole object from the run's Object Store, with a watchdog. The
// client reads an object's chunks through a push consumer of its own that
// lives on one server and sends idle heartbeats every 30 s: when that server
// dies mid-read, the read waits for those heartbeats to go missing before
// anything notices. A chaos run under load showed it: a replacement restoring
// its checkpoint just as a server was killed waited ~30 s, and the pipeline
// with it (the `nats-checkpoint` tails of 39–44 s). Here a read that brings
// no chunk for STALL_MS is abandoned with a transient `timeout` error, which
// the callers' retries (retryTransient) start again from the beginning.
import type { ObjectStore } from '@nats-io/obj';

const STALL_MS = 10_000;

/** The object's bytes, or null where there is none of that name. `progress` hears the bytes read so far, chunk by chunk. */
export async function readObject(objects: ObjectStore, name: string, o: { stallMs?: number; progress?: (bytes: number) => void } = {}): Promise<Uint8Array | null> {
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
