// Frames a stage refused, kept in the run's dead-letter stream with why: the
// message as it came, and headers naming the fault, the reason, the subject it
// came on and the host that refused it. `caravan status` shows the latest.
import type { MessageHeaders } from './message-headers.ts';
import type { RunResources } from './run-resources.ts';

export interface DeadLetter {
  readonly fault: string;
  readonly reason: string;
  readonly subject: string;
  readonly host: string;
}

/** The header each part of a dead letter travels in. */
export const DEAD_LETTER_HEADERS: { readonly [K in keyof DeadLetter]: string } = {
  fault: 'Caravan-Fault',
  reason: 'Caravan-Reason',
  subject: 'Caravan-Subject',
  host: 'Caravan-Host',
};

export function deadLetterOf(h: MessageHeaders): DeadLetter {
  return { fault: h.get(DEAD_LETTER_HEADERS.fault), reason: h.get(DEAD_LETTER_HEADERS.reason), subject: h.get(DEAD_LETTER_HEADERS.subject), host: h.get(DEAD_LETTER_HEADERS.host) };
}

/** How many frames the stream holds, and the latest `recent` of them, newest first. */
export async function readDeadLetters(res: RunResources, recent: number): Promise<{ count: number; recent: DeadLetter[] }> {
  const stream = res.names.deadStream;
  const info = await res.jsm.streams.info(stream);
  const latest: DeadLetter[] = [];
  for (let seq = info.state.last_seq; seq >= info.state.first_seq && seq > 0 && latest.length < recent; seq--) {
    const m = await res.jsm.streams.getMessage(stream, { seq }).catch(() => null);
    if (m) latest.push(deadLetterOf(m.header));
  }
  return { count: info.state.messages, recent: latest };
}
