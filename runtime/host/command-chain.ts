// How a slot's work is sequenced: the commands of its Stage actor run one at
// a time, in the order they were issued, each off the event that issued it
// (so NATS I/O and heartbeats go on between computations); its readers loop
// beside them. The first error of either stops the slot, and so does its
// holder; stopping closes what the slot opened, the last opened first, and
// settles `done`.
import type { Logger } from '../log.ts';
import { SlotRewoundError } from '../transport/slots.ts';

export class CommandChain {
  readonly done: Promise<void>;
  private chain = Promise.resolve();
  private stopped = false;
  private readonly closers: Array<() => void> = [];
  private resolveDone!: () => void;
  private rejectDone!: (e: Error) => void;

  constructor(private readonly log: Logger) {
    this.done = new Promise<void>((resolve, reject) => { this.resolveDone = resolve; this.rejectDone = reject; });
    // The slot can stop while it is still being started (a rewind read from the control log, say), before whoever
    // started it has taken `done`: that is no unhandled rejection. Whoever takes it later still sees the error.
    this.done.catch(() => {});
  }

  /** Whether the slot has stopped: nothing more runs. */
  get settled(): boolean {
    return this.stopped;
  }

  /** Runs `f` after everything queued before it, unless the slot stops first; its error stops the slot. */
  run(f: () => Promise<void> | void): void {
    this.chain = this.chain.then(() => (this.stopped ? undefined : f())).catch((err: Error) => this.stop(err));
  }

  /** Runs a reader's loop beside the chain; its error stops the slot, prefixed by `what`. */
  follow(what: string, loop: () => Promise<void>): void {
    loop().catch((err: Error) => { if (!this.stopped) this.stop(new Error(`${what}: ${err.message}`, { cause: err })); });
  }

  /** Something to close when the slot stops. */
  onStop(close: () => void): void {
    this.closers.push(close);
  }

  /** Ends the slot: cleanly with no argument, as a failure with one. Only the first call counts. */
  readonly stop = (err?: Error): void => {
    if (this.stopped) return;
    this.stopped = true;
    for (const close of [...this.closers].reverse()) close();
    if (err) {
      if (err instanceof SlotRewoundError) this.log.warn({ err: err.message }, 'stage stopped');
      else this.log.error({ err: err.message }, 'stage stopped');
      this.rejectDone(err);
    } else this.resolveDone();
  };
}
