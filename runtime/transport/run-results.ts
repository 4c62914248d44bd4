// What a run leaves for its summary besides the coordinator's own records:
// every slot's final state in the Object Store (uploaded by its holder, who
// reported its SHA-256), and how many frames went to dead letters.
import { retryTransient } from './durable-publish.ts';
import { readObject } from './object-reads.ts';
import type { RunResources } from './run-resources.ts';

export interface RunResults {
  /** The final state of a replica's layers [begin, end), if it is there. */
  finalState(replica: number, begin: number, end: number): Promise<Uint8Array | undefined>;
  deadLetters(): Promise<number>;
}

export function runResults(res: RunResources): RunResults {
  return {
    finalState: async (replica, begin, end) => {
      const name = res.names.finalState(replica, begin, end);
      return (await retryTransient(`final state ${name}`, () => readObject(res.objects, name))) ?? undefined;
    },
    deadLetters: async () => (await res.jsm.streams.info(res.names.deadStream)).state.messages,
  };
}
