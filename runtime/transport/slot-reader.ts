// How a slot's holder opens a durable reader of its own (an edge of its input
// stream, or its step control in the control log): under this holder's
// generation, from where its checkpoint resumes, pulling with expiring
// requests (PULL_EXPIRES_MS) so a lost server is noticed. A holder that finds
// a later generation's consumer there was replaced before it got this far:
// that is a SlotLostError, not a failure.
import type { ConsumerMessages, JsMsg } from '@nats-io/jetstream';
import { PULL_EXPIRES_MS, ReaderReplacedError, type RunResources } from './run-resources.ts';
import { readSlot, SlotLostError } from './slots.ts';

/** Who reads: the slot (replica, stage), and the generation and host that hold it. */
export interface SlotHolder {
  readonly replica: number;
  readonly stage: number;
  readonly generation: number;
  readonly host: string;
}

/**
 * The messages of the consumer `open` creates on `stream` (it returns the consumer's name), pulled in batches of at
 * most `maxBytes` when given.
 */
export async function openSlotReader(res: RunResources, holder: SlotHolder, stream: string, open: () => Promise<string>, maxBytes?: number): Promise<SlotReader> {
  const name = await fenced(res, holder, open);
  const consumer = await res.js.consumers.get(stream, name);
  const messages = await consumer.consume(maxBytes ? { max_bytes: maxBytes, expires: PULL_EXPIRES_MS } : { expires: PULL_EXPIRES_MS });
  void remakeWhenDeleted(res, holder, open, messages);
  const reader = new SlotReader(messages);
  void remakeWhenDeliveriesLost(res, holder, stream, name, open, reader);
  return reader;
}

/** A slot reader's messages, with what it has taken so far and whether it is waiting for more. */
export class SlotReader implements AsyncIterable<JsMsg> {
  /** The consumer's sequence of the last delivery taken (deliveries and redeliveries count; a consumer made again starts at 1). */
  taken = 0;
  /** Since when the reader has waited for its next message, on the clock of performance.now(); undefined while it has one. */
  waitingSince: number | undefined;
  private closed = false;

  constructor(private readonly messages: ConsumerMessages) {}

  get isClosed(): boolean { return this.closed; }

  close(): Promise<void | Error> {
    this.closed = true;
    return this.messages.close();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<JsMsg> {
    const it = this.messages[Symbol.asyncIterator]();
    try {
      for (;;) {
        this.waitingSince = performance.now();
        const next = await it.next();
        this.waitingSince = undefined;
        if (next.done) return;
        this.taken = next.value.info.deliverySequence;
        yield next.value;
      }
    } finally {
      // As a for-await loop would: the messages' own iterator ends too, which is what their close() waits for.
      this.closed = true;
      await it.return?.();
    }
  }
}

// How long a reader waits with nothing to take before it asks the server
// whether deliveries went missing, and how often it asks again.
const LOST_DELIVERY_CHECK_MS = 3_000;

/**
 * Deliveries in flight when the connection dropped (a NATS server killed,
 * the client moved to another) are gone, while the consumer counts them as
 * delivered: it would send them again only after ack_wait (minutes), and the
 * pipeline would wait that long for them. A reader that has waited a while
 * with nothing to take asks the consumer how far it delivered; if that is
 * past what the reader took, the consumer is made again as it was, delivers
 * again from the holder's checkpoint on, and the readers drop what they
 * already took as repeats.
 */
async function remakeWhenDeliveriesLost(res: RunResources, holder: SlotHolder, stream: string, name: string, open: () => Promise<string>, reader: SlotReader): Promise<void> {
  while (!reader.isClosed) {
    await new Promise((resolve) => setTimeout(resolve, LOST_DELIVERY_CHECK_MS));
    const since = reader.waitingSince;
    if (reader.isClosed || since === undefined || performance.now() - since < LOST_DELIVERY_CHECK_MS) continue;
    const taken = reader.taken;
    const info = await res.jsm.consumers.info(stream, name).catch(() => undefined);
    // Gone (remakeWhenDeleted makes it again), or the server is unreachable just now: asked again later.
    if (!info || reader.isClosed) continue;
    // Still waiting, and nothing arrived meanwhile: what the consumer counts past `taken` never reached this reader.
    if (reader.waitingSince !== since || reader.taken !== taken || info.delivered.consumer_seq <= taken) continue;
    await res.jsm.consumers.delete(stream, name).catch(() => {});
    reader.taken = 0;
    await fenced(res, holder, open).catch(() => {});
  }
}

/**
 * A peer of the run may delete this holder's consumer (permissions do not
 * follow the slot yet), and the client would then pull from nothing for good.
 * Made again as it was, it delivers again from the holder's checkpoint on, and
 * its readers drop what they already took as repeats. A holder replaced
 * meanwhile ends its reader with the SlotLostError instead.
 */
async function remakeWhenDeleted(res: RunResources, holder: SlotHolder, open: () => Promise<string>, messages: ConsumerMessages): Promise<void> {
  for await (const s of messages.status()) {
    if (s.type !== 'consumer_deleted' && s.type !== 'consumer_not_found') continue;
    await fenced(res, holder, open).catch((err: Error) => messages.stop(err));
  }
}

async function fenced(res: RunResources, holder: SlotHolder, open: () => Promise<string>): Promise<string> {
  try {
    return await open();
  } catch (err) {
    if (err instanceof ReaderReplacedError) throw new SlotLostError(holder.replica, holder.stage, holder.host, (await readSlot(res.kv, holder.replica, holder.stage))?.record);
    throw err;
  }
}
