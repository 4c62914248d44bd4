// How a slot's holder opens a durable reader of its own (an edge of its input
// stream, or its step control in the control log): under this holder's
// generation, from where its checkpoint resumes, pulling with expiring
// requests (PULL_EXPIRES_MS) so a lost server is noticed. A holder that finds
// a later generation's consumer there was replaced before it got this far:
// that is a SlotLostError, not a failure.
import type { ConsumerMessages } from '@nats-io/jetstream';
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
export async function openSlotReader(res: RunResources, holder: SlotHolder, stream: string, open: () => Promise<string>, maxBytes?: number): Promise<ConsumerMessages> {
  const consumer = await res.js.consumers.get(stream, await fenced(res, holder, open));
  const messages = await consumer.consume(maxBytes ? { max_bytes: maxBytes, expires: PULL_EXPIRES_MS } : { expires: PULL_EXPIRES_MS });
  void remakeWhenDeleted(res, holder, open, messages);
  return messages;
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
