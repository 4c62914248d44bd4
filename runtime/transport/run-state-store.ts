// The run's own records in its KV bucket, typed: its config (`config`), where
// it is (`state`), its outcome (`summary`) and every host the coordinator
// admitted (`hosts.<id>`). The coordinator is their only writer; each read
// goes through the record's decoder (schemas/run-records.ts). Slots have
// their own store (slot-store.ts), the Bridge's records theirs (bridge-store.ts).
import type { KV } from '@nats-io/kv';
import { encodeJson } from '../../schemas/json-message.ts';
import { decodeRunConfig, type RunConfig } from '../../schemas/run-config.ts';
import { decodeHostEntry, decodeRunState, decodeRunSummary, type HostEntry, type RunState, type RunSummary } from '../../schemas/run-records.ts';
import { retryTransient } from './durable-publish.ts';
import { changeKvRecord, readKvRecord } from './kv-record.ts';
import type { RunNames } from './subjects.ts';

export interface RunStateStore {
  readConfig(): Promise<RunConfig | undefined>;
  writeConfig(config: RunConfig): Promise<void>;
  readState(): Promise<RunState | undefined>;
  writeState(state: RunState): Promise<void>;
  readSummary(): Promise<RunSummary | undefined>;
  writeSummary(summary: RunSummary): Promise<void>;
  readHost(host: string): Promise<HostEntry | undefined>;
  /** Reads a host's record and writes what `change` makes of it (fields set to undefined are left out), retried while the servers are in transition. */
  updateHost(host: string, change: (before: HostEntry | undefined) => HostEntry): Promise<void>;
  /** Every host record there is, in key order. */
  hosts(): Promise<HostEntry[]>;
}

export function runStateStore(kv: KV, names: RunNames): RunStateStore {
  // A put says the whole record, so one tried again after a lost answer writes the same bytes.
  const put = (key: string, value: unknown) => retryTransient(`KV ${key}`, async () => { await kv.put(key, encodeJson(value)); });
  return {
    readConfig: () => readKvRecord(kv, names.configKey, decodeRunConfig),
    writeConfig: (config) => put(names.configKey, config),
    readState: () => readKvRecord(kv, names.stateKey, decodeRunState),
    writeState: (state) => put(names.stateKey, state),
    readSummary: () => readKvRecord(kv, names.summaryKey, decodeRunSummary),
    writeSummary: (summary) => put(names.summaryKey, summary),
    readHost: (host) => readKvRecord(kv, names.hostKey(host), decodeHostEntry),
    // By compare-and-set, so a write is never based on a read that missed the latest one.
    updateHost: (host, change) => retryTransient(`host record ${host}`, async () => {
      await changeKvRecord(kv, names.hostKey(host), decodeHostEntry, change);
    }),
    hosts: () => retryTransient('host records', async () => {
      const entries: HostEntry[] = [];
      for await (const key of await kv.keys(names.hostKeys)) {
        const h = await readKvRecord(kv, key, decodeHostEntry);
        if (h) entries.push(h);
      }
      return entries;
    }),
  };
}
