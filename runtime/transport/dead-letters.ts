// The run's dead-letter stream: frames a slot's holder refused (a bad
// signature, a frame that does not decode or has the wrong shape) and step
// control it refused (not the coordinator's, or not its replica's), each kept
// as it came, with headers naming the fault, the reason, the subject it came
// on and the host that refused it, on a subject that ends with the writer's
// key (which its credentials allow it alone). The holder acks a frame once it
// is there: moved, not lost. When the stream is full (its limits refuse new
// letters, so nobody can flush the old ones) the frame is acked and dropped,
// and the writer says so. `caravan status` shows the latest.
import { headers } from '@nats-io/transport-node';
import { publishDurable } from './durable-publish.ts';
import type { MessageHeaders } from './message-headers.ts';
import type { RunResources } from './run-resources.ts';
import type { SlotHolder } from './slot-reader.ts';
import type { EdgeDelivery } from './slot-inputs.ts';

export interface DeadLetter {
  readonly fault: string;
  readonly reason: string;
  readonly subject: string;
  readonly host: string;
  /** The key of the host that wrote it, from its subject (the headers are the writer's word). */
  readonly writer?: string;
}

/** The header each part of a dead letter travels in. */
export const DEAD_LETTER_HEADERS: { readonly [K in Exclude<keyof DeadLetter, 'writer'>]: string } = {
  fault: 'Caravan-Fault',
  reason: 'Caravan-Reason',
  subject: 'Caravan-Subject',
  host: 'Caravan-Host',
};

export function deadLetterOf(h: MessageHeaders): DeadLetter {
  return { fault: h.get(DEAD_LETTER_HEADERS.fault), reason: h.get(DEAD_LETTER_HEADERS.reason), subject: h.get(DEAD_LETTER_HEADERS.subject), host: h.get(DEAD_LETTER_HEADERS.host) };
}

/** What is moved: a frame of an input stream, or a message of the control log. */
export type Refused = Pick<EdgeDelivery, 'subject' | 'data' | 'stream' | 'seq' | 'ack'>;

/** Moves a refused message to the dead letters under the writer's key; false where the stream was full and it was dropped. */
export async function moveToDeadLetters(res: RunResources, holder: SlotHolder, writer: string, d: Refused, fault: string, reason: string): Promise<boolean> {
  const h = headers();
  h.set(DEAD_LETTER_HEADERS.fault, fault);
  h.set(DEAD_LETTER_HEADERS.reason, reason.slice(0, 1000));
  h.set(DEAD_LETTER_HEADERS.subject, d.subject);
  h.set(DEAD_LETTER_HEADERS.host, holder.host);
  const kept = await publishDurable(res.js, res.names.dead(holder.replica, holder.stage, writer), d.data, { msgID: `dead-${d.stream}-${d.seq}`, headers: h })
    .then(() => true, (err: Error) => { if (/maximum (messages|bytes)/.test(err.message)) return false; throw err; });
  d.ack();
  return kept;
}

/** How many frames the stream holds, and the latest `recent` of them, newest first. */
export async function readDeadLetters(res: RunResources, recent: number): Promise<{ count: number; recent: DeadLetter[] }> {
  const stream = res.names.deadStream;
  const info = await res.jsm.streams.info(stream);
  const latest: DeadLetter[] = [];
  for (let seq = info.state.last_seq; seq >= info.state.first_seq && seq > 0 && latest.length < recent; seq--) {
    const m = await res.jsm.streams.getMessage(stream, { seq }).catch(() => null);
    if (m) latest.push({ ...deadLetterOf(m.header), writer: res.names.deadLetterWriter(m.subject) });
  }
  return { count: info.state.messages, recent: latest };
}
