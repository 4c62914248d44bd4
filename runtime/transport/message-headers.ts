// The headers a NATS message carries (Nats-Msg-Id, Caravan-Sig, the W3C
// traceparent, a dead letter's reasons), for code outside the seam that reads
// or writes them without speaking NATS itself: telemetry/tracing.ts puts the
// trace context in them, bench/transport.ts signs frames in them.
import { headers, type MsgHdrs } from '@nats-io/transport-node';

/** A message's headers: `get` answers "" for a header it does not have. */
export type MessageHeaders = MsgHdrs;

export function newMessageHeaders(): MessageHeaders {
  return headers();
}
