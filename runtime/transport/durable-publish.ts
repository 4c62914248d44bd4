// A JetStream publish that rides out a NATS server going away: while a
// cluster elects a new stream leader, or the client reconnects to another
// server, publishes time out or find no responders. Retrying under the same
// Nats-Msg-Id is safe: if the first attempt was stored after all, the retry is
// reported as a duplicate and stored once.
import type { JetStreamClient, PubAck } from '@nats-io/jetstream';
import type { MsgHdrs } from '@nats-io/transport-node';

export interface DurablePublishOptions {
  readonly msgID: string;
  readonly headers?: MsgHdrs;
  /** Give up after this long (default 60 s): longer than any leader election. */
  readonly deadlineMs?: number;
}

export function publishDurable(js: JetStreamClient, subject: string, data: Uint8Array, o: DurablePublishOptions): Promise<PubAck> {
  return retryTransient(`publish to ${subject} (${o.msgID})`, () => js.publish(subject, data, { msgID: o.msgID, headers: o.headers, timeout: 5000 }), o.deadlineMs);
}

/**
 * Errors of a server or leader in transition, as opposed to a refused message. "Duplicate message id is in process"
 * is one: an earlier attempt under the same Nats-Msg-Id (one whose answer was lost in a partition, say) is still being
 * stored, and the next attempt is answered as its duplicate. "Error creating store for consumer" is another: a
 * consumer made again under the name of one still being deleted (a peer deleted it; a reader remade it).
 */
export function isTransient(err: unknown): boolean {
  const text = `${(err as Error)?.name ?? ''} ${(err as Error)?.message ?? ''} ${(err as { code?: string })?.code ?? ''}`.toLowerCase();
  if (/max_payload|maximum payload|exceeds|wrong last|permission/.test(text)) return false;
  return /timeout|no responders|503|connection|closed|disconnect|reconnect|leader|unavailable|no suitable peers|insufficient resources|jetstream (is )?not enabled|stream not found|temporarily|message id is in process|error creating store for consumer/.test(text);
}

/** Runs a JetStream operation (an Object Store put, a KV write), retrying it while the servers are in transition. */
export async function retryTransient<T>(what: string, f: () => Promise<T>, deadlineMs = 60_000): Promise<T> {
  const deadline = Date.now() + deadlineMs;
  for (let attempt = 0; ; attempt++) {
    try {
      return await f();
    } catch (err) {
      if (!isTransient(err)) throw err;  // not ours to retry: the caller sees the error as it was
      if (Date.now() > deadline) throw new Error(`${what} failed after ${attempt + 1} attempt(s): ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, Math.min(1000, 50 * 2 ** attempt)));
    }
  }
}
