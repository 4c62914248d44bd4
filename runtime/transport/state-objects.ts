// The run's Object Store as a slot's holder uses it: whole blobs by name
// (checkpoints, final states, Bridge contributions, results and residuals),
// each get and put retried while the servers are in transition. `what` names
// the operation in the error of one that gives up.
import { retryTransient } from './durable-publish.ts';
import { readObject } from './object-reads.ts';
import type { RunResources } from './run-resources.ts';

export interface StateObjects {
  /** The blob, or null where there is none of that name. */
  get(name: string, what: string): Promise<Uint8Array | null>;
  put(name: string, bytes: Uint8Array, what: string): Promise<void>;
}

export function stateObjects(res: RunResources): StateObjects {
  return {
    get: (name, what) => retryTransient(`${what} ${name}`, () => readObject(res.objects, name)),
    put: async (name, bytes, what) => { await retryTransient(`${what} ${name}`, () => res.objects.putBlob({ name }, bytes)); },
  };
}
