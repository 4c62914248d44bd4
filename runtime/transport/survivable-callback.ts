// A subscription callback that survives what it is sent. nats.js calls a
// subscription's callback without catching what it throws, and a throw there
// stops that client reading for good: one junk heartbeat once left a
// coordinator deaf to every host, which it then declared lost. Anyone allowed
// to publish on a subject can send junk, so every core-NATS callback of a run
// is wrapped here: a message that does not decode, or whose handling throws or
// rejects, is handed to `refused` (to count and log) and the next message is
// read as usual.

/** Where a message that could not be taken goes: its subject and why. */
export type OnRefused = (subject: string, err: Error) => void;

export function survivable<M extends { readonly subject: string }>(refused: OnRefused, handle: (m: M) => void | Promise<void>): (err: Error | null, m: M) => void {
  const report = (subject: string, err: unknown) => {
    try {
      refused(subject, err instanceof Error ? err : new Error(String(err)));
    } catch { /* the refusal's own handler must not stop the reading either */ }
  };
  return (_err, m) => {
    try {
      const pending = handle(m);
      if (pending) pending.catch((err: unknown) => report(m.subject, err));
    } catch (err) {
      report(m.subject, err);
    }
  };
}

/** Counts refusals and keeps the latest reason: what a process without a logger at hand reports. */
export class RefusalCount {
  count = 0;
  last: string | undefined;
  readonly refused: OnRefused = (subject, err) => {
    this.count++;
    this.last = `${subject}: ${err.message}`;
  };
}
