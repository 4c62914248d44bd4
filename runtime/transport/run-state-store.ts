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
  // Every read and write is tried again while the servers are in transition (a leader election, a server that was cut
  // off and is catching up): the coordinator fails the run on the first that fails for good.
  const read = <T>(key: string, decode: (bytes: Uint8Array, what: string) => T) => retryTransient(`KV ${key}`, () => readKvRecord(kv, key, decode));
  // A put says the whole record, so one tried again after a lost answer writes the same bytes.
  const put = (key: string, value: unknown) => retryTransient(`KV ${key}`, async () => { await kv.put(key, encodeJson(value)); });
  return {
    readConfig: () => read(names.configKey, decodeRunConfig),
    writeConfig: (config) => put(names.configKey, config),
    readState: () => read(names.stateKey, decodeRunState),
    writeState: (state) => put(names.stateKey, state),
    readSummary: () => read(names.summaryKey, decodeRunSummary),
    writeSummary: (summary) => put(names.summaryKey, summary),
    readHost: (host) => read(names.hostKey(host), decodeHostEntry),
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
