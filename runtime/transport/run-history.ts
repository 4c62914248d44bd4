// A run's history as a reader that changes nothing can have it
// (`caravan dashboard`): every record of its KV bucket from the oldest
// revision the bucket keeps, then each change as it happens; and every
// replica's step control from the control log's first message, then each new
// one, only as the coordinator signed it. Both decoded; a record that does
// not decode, or step control nobody signed, is passed to `refused` and
// reading goes on. An observer's credentials allow both (permissions.ts).
import { decodeStepControl, type StepControl } from '../../schemas/control-messages.ts';
import { decodeRunConfig, type RunConfig } from '../../schemas/run-config.ts';
import {
  decodeBridgeRecord, decodeHostEntry, decodeRunState, decodeRunSummary,
  type BridgeRecord, type HostEntry, type RunState, type RunSummary, type SlotRecord,
} from '../../schemas/run-records.ts';
import { CoordinatorKeys } from '../security/coordinator-keys.ts';
import { SIGNATURE_HEADER } from '../security/message-signature.ts';
import type { RunResources } from './run-resources.ts';
import { decodeSlot } from './slots.ts';
import { KV_WATCH_ALL_HISTORY, runStateKeys } from './subjects.ts';

/** A record of the run's bucket, with the epoch ms it was written. */
export type RunRecord = { readonly t: number } & (
  | { readonly kind: 'config'; readonly config: RunConfig }
  | { readonly kind: 'state'; readonly state: RunState }
  | { readonly kind: 'summary'; readonly summary: RunSummary }
  | { readonly kind: 'slot'; readonly slot: SlotRecord }
  | { readonly kind: 'host'; readonly host: HostEntry }
  | { readonly kind: 'bridge'; readonly bridge: BridgeRecord }
);

/** A replica's step control as the coordinator signed it, with its place in the log and the epoch ms it was written. */
export interface StepControlEntry {
  readonly replica: number;
  readonly control: StepControl;
  readonly seq: number;
  readonly t: number;
}

export interface HistoryFeed<T> extends AsyncIterable<T> {
  stop(): void;
}

export type Refused = (where: string, reason: string) => void;

export async function runRecords(res: RunResources, refused: Refused): Promise<HistoryFeed<RunRecord>> {
  const watch = await res.kv.watch({ include: KV_WATCH_ALL_HISTORY });
  return {
    stop: () => watch.stop(),
    async *[Symbol.asyncIterator]() {
      for await (const e of watch) {
        if (e.operation !== 'PUT' || e.value.length === 0) continue;
        try {
          const record = decodeRecord(e.key, e.value, e.created.getTime());
          if (record) yield record;
        } catch (err) {
          refused(`KV ${e.key}`, (err as Error).message);
        }
      }
    },
  };
}

function decodeRecord(key: string, value: Uint8Array, t: number): RunRecord | undefined {
  const what = `KV ${key}`;
  switch (runStateKeys.kindOf(key)) {
    case 'config': return { t, kind: 'config', config: decodeRunConfig(value, what) };
    case 'state': return { t, kind: 'state', state: decodeRunState(value, what) };
    case 'summary': return { t, kind: 'summary', summary: decodeRunSummary(value, what) };
    case 'slot': return { t, kind: 'slot', slot: decodeSlot(value, key) };
    case 'host': return { t, kind: 'host', host: decodeHostEntry(value, what) };
    case 'bridge': return { t, kind: 'bridge', bridge: decodeBridgeRecord(value, what) };
    default: return undefined;
  }
}

export async function stepControls(res: RunResources, refused: Refused): Promise<HistoryFeed<StepControlEntry>> {
  const keys = new CoordinatorKeys(res.kv);
  // One filter subject, named in the consumer's create subject, where an observer's permissions can check it.
  const consumer = await res.js.consumers.get(res.names.controlStream, { filter_subjects: res.names.stepControls });
  const messages = await consumer.consume();
  return {
    stop: () => void messages.close().catch(() => {}),
    async *[Symbol.asyncIterator]() {
      for await (const m of messages) {
        const replica = res.names.stepControlReplica(m.subject);
        const where = `step control ${m.subject} (seq ${m.seq})`;
        const verdict = await keys.check({ subject: m.subject, body: m.data, header: m.headers?.get(SIGNATURE_HEADER), expected: res.names.stepControl(replica) });
        if (!verdict.ok) { refused(where, verdict.reason); continue; }
        try {
          yield { replica, control: decodeStepControl(m.data, where), seq: m.seq, t: Math.round(m.info.timestampNanos / 1e6) };
        } catch (err) {
          refused(where, (err as Error).message);
        }
      }
    },
  };
}
