// A slot's inputs as its holder receives them: one edge (activations or
// gradients) of the slot's input stream, read through the holder's own
// durable consumer from where its checkpoint resumes, as deliveries. A
// delivery is acked only when its holder says so: inputs stay in the stream
// until their effect is durable, so a replacement replays what is not.
import type { JsMsg } from '@nats-io/jetstream';
import type { Context } from '@opentelemetry/api';
import { traceContext } from '../telemetry/tracing.ts';
import { openEdgeConsumer, type RunResources } from './run-resources.ts';
import { openSlotReader, type SlotHolder } from './slot-reader.ts';
import type { EdgeKind } from './subjects.ts';

// Pulls are bounded by bytes, not messages: see DEPENDENCIES.md. A host reads
// two edges, and while a computation holds its thread nothing drains the
// socket, so what both pulls may have in flight (each up to its bound, and a
// refill) has to stay under the server's per-client max_pending (64 MiB by
// default; our configs raise it to 256 MB): past it the server drops messages
// as a slow consumer's, and a dropped frame comes back only after ack_wait
// (minutes). 32 MiB a pull against the default stalled orion-100b's shape
// under zb-h2, whose stages hold more frames ahead.
const CONSUME_MAX_BYTES = 16 * 1024 * 1024;

export interface EdgeDelivery {
  readonly subject: string;
  readonly data: Uint8Array;
  /** The stream it is in, and its sequence there. */
  readonly stream: string;
  readonly seq: number;
  /** Messages left in the stream for this consumer, as of this delivery. */
  readonly pending: number;
  /** A header's value: '' where the message has headers but not this one, undefined where it has none. */
  header(name: string): string | undefined;
  /** The trace context it carries (the sender's W3C traceparent), if any. */
  traceContext(): Context | undefined;
  ack(): void;
}

/** The deliveries of an edge, in stream order, until `close()`. */
export interface EdgeInput extends AsyncIterable<EdgeDelivery> {
  close(): Promise<void>;
}

/** The `kind` edge into the holder's slot, from sequence `startSeq` (or the beginning); `replaced` hears of a consumer of another config replaced. */
export async function openEdgeInput(res: RunResources, holder: SlotHolder, kind: EdgeKind, startSeq?: number, replaced?: (why: string) => void): Promise<EdgeInput> {
  const { replica, stage, generation } = holder;
  const messages = await openSlotReader(res, holder, res.names.inputStream(replica, stage),
    () => openEdgeConsumer(res, kind, replica, stage, generation, startSeq, replaced), CONSUME_MAX_BYTES);
  return {
    close: () => messages.close().then(() => {}),
    async *[Symbol.asyncIterator]() {
      for await (const m of messages) yield new JsDelivery(m);
    },
  };
}

class JsDelivery implements EdgeDelivery {
  constructor(private readonly m: JsMsg) {}
  get subject(): string { return this.m.subject; }
  get data(): Uint8Array { return this.m.data; }
  get stream(): string { return this.m.info.stream; }
  get seq(): number { return this.m.seq; }
  get pending(): number { return this.m.info.pending; }
  header(name: string): string | undefined { return this.m.headers?.get(name); }
  traceContext(): Context | undefined { return traceContext(this.m.headers); }
  ack(): void { this.m.ack(); }
}
