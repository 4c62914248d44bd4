// What a host reads of its run's state in the KV bucket, which the
// coordinator alone writes: the run's config, and a watch of the run's status
// and of the slot records (who holds which (replica, stage), under which
// generation and key). Deleted and purged entries are passed over.
import { decodeRunConfig, type RunConfig } from '../../schemas/run-config.ts';
import { decodeRunState, type RunState } from '../../schemas/run-records.ts';
import { retryTransient } from './durable-publish.ts';
import type { RunResources } from './run-resources.ts';
import { decodeSlot, type SlotEntry } from './slots.ts';

export type RunStateChange =
  // successor: with status 'resplit', the run that trains on (its hosts move there).
  | { readonly type: 'status'; readonly status: RunState['status'] | undefined; readonly successor?: string }
  | { readonly type: 'slot'; readonly entry: SlotEntry };

/** The changes in order, from the current values on; `stop()` ends the iteration. */
export interface RunStateWatch extends AsyncIterable<RunStateChange> {
  stop(): void;
}

export async function watchRunState(res: RunResources): Promise<RunStateWatch> {
  const { stateKey, slotKeys } = res.names;
  // Opening the watch makes a consumer: during a server's transition that request can time out, and is made again.
  const watch = await retryTransient('watch of the run state', () => res.kv.watch({ key: [stateKey, slotKeys] }));
  return {
    stop: () => watch.stop(),
    async *[Symbol.asyncIterator]() {
      for await (const e of watch) {
        const put = e.operation === 'PUT' && e.value.length > 0;
        if (e.key === stateKey) {
          const state = put ? decodeRunState(e.value) : undefined;
          yield { type: 'status', status: state?.status, ...(state?.status === 'resplit' && state.resplit ? { successor: state.resplit.run } : {}) };
        }
        else if (put) yield { type: 'slot', entry: { record: decodeSlot(e.value, e.key), revision: e.revision } };
      }
    },
  };
}

export async function readRunConfig(res: RunResources): Promise<RunConfig> {
  const entry = await retryTransient('run config', () => res.kv.get(res.names.configKey));
  return decodeRunConfig(entry?.value ?? new Uint8Array(), 'run config in KV');
}
