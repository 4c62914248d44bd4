// The coordinator's writes to run state (KV records, the control log) go out
// one at a time, in the order they were decided: a slot's input stream before
// its record, a host's record after the slot it got, a commit after the step's
// open. The first write that fails fails the run, naming what it was writing.
export class OrderedWrites {
  private last: Promise<void> = Promise.resolve();

  constructor(private readonly failed: (err: Error) => void) {}

  write(what: string, f: () => Promise<unknown>): void {
    this.last = this.last.then(f).then(() => undefined, (err: Error) => this.failed(new Error(`${what}: ${err.message}`)));
  }

  /** Resolves once every write decided so far is done (or failed). */
  drained(): Promise<void> {
    return this.last;
  }
}
