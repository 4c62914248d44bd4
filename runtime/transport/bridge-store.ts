// Where the Bridge keeps what it decides: each stage's outer step as a KV
// record (`bridge.<s>.<o>`, created once: whoever creates it first decides
// the sync), a counter per stage of the last outer step completed
// (`bridge-outer.<s>`, a distributed variable that only moves forward, by
// compare-and-set), and the payloads in the Object Store: the replicas'
// contributions, the new parameters and the outer momentum.
import type { KV } from '@nats-io/kv';
import { encodeJson } from '../../schemas/json-message.ts';
import { decodeBridgeRecord, decodeCounterRecord, type BridgeRecord } from '../../schemas/run-records.ts';
import { retryTransient } from './durable-publish.ts';
import { readObject } from './object-reads.ts';
import { changeKvRecord, readKvRecord } from './kv-record.ts';
import type { RunResources } from './run-resources.ts';

export interface BridgeStore {
  readRecord(stage: number, outer: number): Promise<BridgeRecord | undefined>;
  /** Creates the record of its (stage, outer) unless one is there: returns the record that stands, and whether it is this one. */
  createRecord(record: BridgeRecord): Promise<{ record: BridgeRecord; created: boolean }>;
  /** Moves stage's counter of completed outer steps up to `outer` (never down). */
  advanceOuter(stage: number, outer: number): Promise<void>;
  /** Stage's counter of completed outer steps: 0 before the first. */
  readOuter(stage: number): Promise<number>;
  /** A replica's contribution to an outer step: its object's name, and its bytes if it is there. */
  readContribution(stage: number, outer: number, replica: number): Promise<{ name: string; blob: Uint8Array | undefined }>;
  /** An object a record names (parameters, momentum). */
  readObject(name: string): Promise<Uint8Array | undefined>;
  /** Stores an outer step's new parameters, or its momentum; returns the object's name. */
  writeTheta(stage: number, outer: number, bytes: Uint8Array): Promise<string>;
  writeMomentum(stage: number, outer: number, bytes: Uint8Array): Promise<string>;
}

export function readBridgeRecord(kv: KV, key: string): Promise<BridgeRecord | undefined> {
  return readKvRecord(kv, key, decodeBridgeRecord);
}

/** Advances a counter in KV by compare-and-set: it only moves forward, whoever writes it. */
async function advanceCounter(kv: KV, key: string, to: number): Promise<void> {
  await changeKvRecord(kv, key, decodeCounterRecord, (current) => (current !== undefined && current.value >= to ? undefined : { value: to }));
}

export function bridgeStore(res: RunResources): BridgeStore {
  const n = res.names;
  const put = async (what: string, name: string, bytes: Uint8Array) => {
    await retryTransient(`${what} ${name}`, () => res.objects.putBlob({ name }, bytes));
    return name;
  };
  return {
    readRecord: (stage, outer) => readBridgeRecord(res.kv, n.bridgeKey(stage, outer)),
    createRecord: async (record) => {
      const key = n.bridgeKey(record.stage, record.outer);
      try {
        await res.kv.create(key, encodeJson(record));
        return { record, created: true };
      } catch {
        const theirs = await readBridgeRecord(res.kv, key);  // decided by someone else first: theirs stands
        if (!theirs) throw new Error(`${key}: could neither create nor read the record`);
        return { record: theirs, created: false };
      }
    },
    advanceOuter: (stage, outer) => advanceCounter(res.kv, n.bridgeOuterKey(stage), outer),
    readOuter: async (stage) => (await retryTransient(`bridge counter of stage ${stage}`, () => readKvRecord(res.kv, n.bridgeOuterKey(stage), decodeCounterRecord)))?.value ?? 0,
    readContribution: async (stage, outer, replica) => {
      const name = n.bridgeContribution(stage, outer, replica);
      return { name, blob: await retryTransient(`bridge contribution ${name}`, () => readObject(res.objects, name)) ?? undefined };
    },
    readObject: async (name) => (await retryTransient(`bridge object ${name}`, () => readObject(res.objects, name))) ?? undefined,
    writeTheta: (stage, outer, bytes) => put('bridge result', n.bridgeTheta(stage, outer), bytes),
    writeMomentum: (stage, outer, bytes) => put('bridge momentum', n.bridgeMomentum(stage, outer), bytes),
  };
}
