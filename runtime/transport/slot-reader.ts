// How a slot's holder opens a durable reader of its own (an edge of its input
// stream, or its step control in the control log): under this holder's
// generation, from where its checkpoint resumes, pulling with expiring
// requests (PULL_EXPIRES_MS) so a lost server is noticed. A holder that finds
// a later generation's consumer there was replaced before it got this far:
// that is a SlotLostError, not a failure.
import type { ConsumeOptions, ConsumerMessages, JsMsg } from '@nats-io/jetstream';
import { isTransient, retryTransient } from './durable-publish.ts';
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
  const consume = async (): Promise<Reading> => {
    const name = await fenced(res, holder, open);
    const messages = await pullFrom(res, stream, name, maxBytes ? { max_bytes: maxBytes, expires: PULL_EXPIRES_MS } : { expires: PULL_EXPIRES_MS });
    void remakeWhenDeleted(res, holder, open, messages);
    return { name, messages };
  };
  return openRemakingReader(res, stream, consume);
}

/**
 * A reader of `stream` through the consumer `consume` makes, made again (the lost one deleted first) whenever a
 * delivery is found lost: by a gap in the delivery sequence, or by remakeWhenDeliveriesLost. Slot readers and the
 * coordinator's reading of the control log (control-log.ts) both read so.
 */
export async function openRemakingReader(res: RunResources, stream: string, consume: () => Promise<Reading>): Promise<SlotReader> {
  const reader = new SlotReader(await consume(), async (lost) => {
    await res.jsm.consumers.delete(stream, lost.name).catch(() => {});
    return consume();
  });
  void remakeWhenDeliveriesLost(res, stream, reader);
  return reader;
}

/**
 * Pulls from the consumer `name` of `stream`, retried while the servers are in transition: a reader made again
 * because a server was killed under it asks a cluster that may be electing leaders for seconds (a bare `timeout`
 * here once failed a slot, and with it a chaos run on a 3-node cluster).
 */
export function pullFrom(res: RunResources, stream: string, name: string, options: ConsumeOptions): Promise<ConsumerMessages> {
  return retryTransient(`reader consumer ${name} on ${stream}`, async () => (await res.js.consumers.get(stream, name)).consume(options));
}

/** A consumer being read: its name, and the messages pulled from it. */
export interface Reading {
  readonly name: string;
  readonly messages: ConsumerMessages;
}

/**
 * A slot reader's messages, with what it has taken so far and whether it is
 * waiting for more. Deliveries in flight when a connection dropped are gone
 * (see remakeWhenDeliveriesLost); a lost one followed by others shows as a
 * gap in the consumer's delivery sequence. The message after the gap is not
 * handed on (its readers take step control and frames in log order, and drop
 * what comes after what they took as a repeat): the consumer is made again,
 * delivers again from the holder's checkpoint on, and the readers drop what
 * they already took.
 */
export class SlotReader implements AsyncIterable<JsMsg> {
  /** The consumer's sequence of the last delivery taken (deliveries and redeliveries count; a consumer made again starts at 1). */
  taken = 0;
  /** Since when the reader has waited for its next message, on the clock of performance.now(); undefined while it has one. */
  waitingSince: number | undefined;
  private closed = false;
  private failure: Error | undefined;

  constructor(private current: Reading, private readonly makeAgain: (lost: Reading) => Promise<Reading>) {}

  get isClosed(): boolean { return this.closed; }

  get consumerName(): string { return this.current.name; }

  close(): Promise<void | Error> {
    this.closed = true;
    return this.current.messages.close();
  }

  /**
   * Drops the consumer being read and reads through one made again, from the holder's checkpoint on. One at a time:
   * the watch and the iterator may both find a loss.
   */
  remake(): Promise<void> {
    return this.remaking ??= this.makeAgainNow().finally(() => { this.remaking = undefined; });
  }

  private remaking: Promise<void> | undefined;

  private async makeAgainNow(): Promise<void> {
    const lost = this.current;
    try {
      this.current = await this.makeAgain(lost);
      this.taken = 0;
    } catch (err) {
      this.failure = err as Error;  // replaced meanwhile (a SlotLostError): the reader ends with it
    }
    void lost.messages.close().catch(() => {});
  }

  async *[Symbol.asyncIterator](): AsyncIterator<JsMsg> {
    let reading = this.current;
    let it = reading.messages[Symbol.asyncIterator]();
    try {
      for (;;) {
        this.waitingSince = performance.now();
        let next: IteratorResult<JsMsg>;
        try {
          next = await it.next();
        } catch (err) {
          // The client gave up on this consumer while the servers were in transition: read on through one made again.
          if (this.closed || this.failure || !isTransient(err)) throw err;
          await this.remake();
          if (this.failure) throw this.failure;
          reading = this.current;
          it = reading.messages[Symbol.asyncIterator]();
          continue;
        } finally {
          this.waitingSince = undefined;
        }
        if (this.failure) throw this.failure;
        if (next.done || reading !== this.current) {
          // Ended by close(), or by a consumer made again: then read on through that one.
          if (this.closed || reading === this.current) return;
          reading = this.current;
          it = reading.messages[Symbol.asyncIterator]();
          continue;
        }
        const delivered = next.value.info.deliverySequence;
        if (delivered > this.taken + 1) {
          await this.remake();
          continue;
        }
        this.taken = delivered;
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
 * pipeline would wait that long for them. A lost delivery with nothing after
 * it shows no gap: a reader that has waited a while with nothing to take asks
 * the consumer how far it delivered; if that is past what the reader took,
 * the consumer is made again, delivers again from the holder's checkpoint
 * on, and the readers drop what they already took as repeats.
 */
async function remakeWhenDeliveriesLost(res: RunResources, stream: string, reader: SlotReader): Promise<void> {
  while (!reader.isClosed) {
    await new Promise((resolve) => setTimeout(resolve, LOST_DELIVERY_CHECK_MS));
    const since = reader.waitingSince;
    if (reader.isClosed || since === undefined || performance.now() - since < LOST_DELIVERY_CHECK_MS) continue;
    const taken = reader.taken;
    const info = await res.jsm.consumers.info(stream, reader.consumerName).catch(() => undefined);
    // Gone (remakeWhenDeleted makes it again), or the server is unreachable just now: asked again later.
    if (!info || reader.isClosed) continue;
    // Still waiting, and nothing arrived meanwhile: what the consumer counts past `taken` never reached this reader.
    if (reader.waitingSince !== since || reader.taken !== taken || info.delivered.consumer_seq <= taken) continue;
    await reader.remake();
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
