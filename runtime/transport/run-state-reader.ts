// A run's state as its KV bucket and store hold it, read and decoded: for
// readers that change nothing (`caravan status`, `caravan export`, the chaos
// and simulate drivers watching slot holders). The records are the
// coordinator's (schemas/run-records.ts); a record that is missing or deleted
// reads as undefined.
import { readObject } from './object-reads.ts';
import { decodeRunConfig, type RunConfig } from '../../schemas/run-config.ts';
import { decodeBridgeRecord, decodeCounterRecord, decodeHostEntry, decodeRunState, decodeRunSummary, type BridgeRecord, type HostEntry, type RunState, type RunSummary, type SlotRecord } from '../../schemas/run-records.ts';
import { readDeadLetters, type DeadLetter } from './dead-letters.ts';
import type { RunResources } from './run-resources.ts';
import { decodeSlot, readSlot, type SlotEntry } from './slots.ts';
import { kvRecordOf } from './kv-record.ts';
import { runStateKeys } from './subjects.ts';

/** A stage's last stored Bridge sync: the outer step its counter names, and that step's record. */
export interface BridgeSync {
  readonly stage: number;
  readonly outer: number;
  readonly record: BridgeRecord;
}

/** A consumer as JetStream reports it: stream sequences delivered and acknowledged, and what waits. */
export interface ConsumerStanding {
  readonly name: string;
  readonly pending: number;
  readonly ack_pending: number;
  readonly redelivered: number;
  readonly waiting: number;
  readonly delivered: number;
  readonly ack_floor: number;
  readonly leader: string | null;
}

/** A stream of the run: its sequences, its leader and copies (on a cluster), and its consumers. */
export interface StreamStanding {
  readonly name: string;
  readonly messages: number;
  readonly first_seq: number;
  readonly last_seq: number;
  readonly leader: string | null;
  readonly copies: string[];
  readonly consumers: ConsumerStanding[];
}

export class RunStateReader {
  constructor(private readonly res: RunResources) {}

  get run(): string {
    return this.res.names.run;
  }

  async config(): Promise<RunConfig | undefined> {
    const e = await this.res.kv.get(runStateKeys.config);
    return e && e.value.length ? decodeRunConfig(e.value, `run ${this.run} config`) : undefined;
  }

  state(): Promise<RunState | undefined> {
    return this.record(runStateKeys.state, decodeRunState);
  }

  summary(): Promise<RunSummary | undefined> {
    return this.record(runStateKeys.summary, decodeRunSummary);
  }

  host(host: string): Promise<HostEntry | undefined> {
    return this.record(runStateKeys.host(host), decodeHostEntry);
  }

  /** Every host the coordinator admitted, in key order. */
  async hosts(): Promise<HostEntry[]> {
    const hosts: HostEntry[] = [];
    for await (const key of await this.res.kv.keys(runStateKeys.hosts)) {
      const h = await this.record(key, decodeHostEntry);
      if (h) hosts.push(h);
    }
    return hosts;
  }

  /** A slot's record and its revision (what a compare-and-set would need). */
  slot(replica: number, stage: number): Promise<SlotEntry | undefined> {
    return readSlot(this.res.kv, replica, stage);
  }

  /** Every slot's record, replica by replica, stage by stage. */
  async slots(): Promise<SlotRecord[]> {
    const slots: SlotRecord[] = [];
    for await (const key of await this.res.kv.keys(runStateKeys.slots)) {
      const slot = kvRecordOf(await this.res.kv.get(key), (bytes) => decodeSlot(bytes, key));
      if (slot) slots.push(slot);
    }
    return slots.sort((a, b) => a.replica - b.replica || a.stage - b.stage);
  }

  /** With a Bridge: each stage's last stored sync, by stage. */
  async bridgeSyncs(): Promise<BridgeSync[]> {
    const syncs: BridgeSync[] = [];
    for await (const key of await this.res.kv.keys(runStateKeys.bridgeOuters)) {
      const stage = runStateKeys.bridgeOuterStage(key);
      const outer = (await this.record(key, decodeCounterRecord))?.value;
      const record = outer ? await this.record(runStateKeys.bridge(stage, outer), decodeBridgeRecord) : undefined;
      if (record) syncs.push({ stage, outer: outer!, record });
    }
    return syncs.sort((a, b) => a.stage - b.stage);
  }

  /** How many frames the dead-letter stream holds, and the latest `recent`, newest first. */
  deadLetters(recent: number): Promise<{ count: number; recent: DeadLetter[] }> {
    return readDeadLetters(this.res, recent);
  }

  /**
   * Where each of the run's streams and their consumers stand: what a stalled
   * run is waiting for shows as a consumer with nothing pending and a
   * delivery never acknowledged, or a stream whose leader or copies lag.
   */
  async streams(): Promise<StreamStanding[]> {
    const n = this.res.names;
    const ours = new Set([n.controlStream, n.deadStream, n.kvStream, n.objectStream]);
    const found: StreamStanding[] = [];
    for await (const s of this.res.jsm.streams.list()) {
      const name = s.config.name;
      if (!ours.has(name) && !name.startsWith(n.inputStreamPrefix)) continue;
      const consumers: ConsumerStanding[] = [];
      for await (const c of this.res.jsm.consumers.list(name)) {
        consumers.push({
          name: c.name, pending: c.num_pending, ack_pending: c.num_ack_pending, redelivered: c.num_redelivered, waiting: c.num_waiting,
          delivered: c.delivered.stream_seq, ack_floor: c.ack_floor.stream_seq, leader: c.cluster?.leader ?? null,
        });
      }
      found.push({
        name, messages: s.state.messages, first_seq: s.state.first_seq, last_seq: s.state.last_seq, leader: s.cluster?.leader ?? null,
        copies: (s.cluster?.replicas ?? []).map((r) => `${r.name}${r.current ? '' : ` (lag ${r.lag ?? '?'})`}${r.offline ? ' offline' : ''}`),
        consumers,
      });
    }
    return found;
  }

  /** A stage's final state in the object store (stage layers [begin, end) of `replica`), with its object name. */
  async finalState(replica: number, begin: number, end: number): Promise<{ name: string; bytes: Uint8Array | undefined }> {
    const name = this.res.names.finalState(replica, begin, end);
    return { name, bytes: (await readObject(this.res.objects, name)) ?? undefined };
  }

  private async record<T>(key: string, decode: (bytes: Uint8Array, what: string) => T): Promise<T | undefined> {
    const e = await this.res.kv.get(key);
    return e && e.value.length ? decode(e.value, `KV ${key}`) : undefined;
  }
}
