// The coordinator's handle on the slot table and what hangs off a slot: the
// slot's record in KV (slots.ts: generations, signers, the fenced checkpoint
// record), its input stream (created where the holder's datacenter is, read
// for how far each sender got), the checkpoints in the Object Store and the
// inputs a checkpoint makes unnecessary. Operations that a server or leader
// in transition can fail are retried here, so callers see only real failures.
import type { CheckpointPointer } from '../../schemas/control-messages.ts';
import type { SentUntil, SlotRecord } from '../../schemas/run-records.ts';
import { SlotSigners } from '../security/slot-signers.ts';
import { retryTransient } from './durable-publish.ts';
import { ensureInputStream, type RunResources } from './run-resources.ts';
import { assignSlot, readSlot, recordReportedCheckpoint, rewindSlot, seedSlot } from './slots.ts';
import { sha256Hex } from '../security/message-signature.ts';
import type { EdgeKind } from './subjects.ts';

export interface SlotStore {
  /** Whose signatures count for each slot, kept current as slots are assigned. */
  readonly signers: SlotSigners;
  read(replica: number, stage: number): Promise<SlotRecord | undefined>;
  /** Creates the slot's input stream if missing, in the datacenter given where it can; returns the cluster it lives on. */
  ensureInputStream(replica: number, stage: number, datacenter: string): Promise<string | undefined>;
  /** The last sequence stored in the slot's input stream: 0 when there is none yet. */
  lastInputSeq(replica: number, stage: number): Promise<number>;
  /** Gives the slot to `host` under the next generation, bound to its key (slots.ts assignSlot). */
  assign(replica: number, stage: number, host: string, signer: { key: string; until: SentUntil }): Promise<SlotRecord>;
  /** Rewinds the slot to the run's start under `generation` (slots.ts rewindSlot). */
  rewind(replica: number, stage: number, generation: number, rewound: NonNullable<SlotRecord['rewound']>, until: SentUntil): Promise<SlotRecord>;
  /** Records a checkpoint its holder reported (slots.ts recordReportedCheckpoint). */
  recordCheckpoint(replica: number, stage: number, generation: number, checkpoint: CheckpointPointer, beforeWrite?: Parameters<typeof recordReportedCheckpoint>[5]): ReturnType<typeof recordReportedCheckpoint>;
  /** Deletes a checkpoint object no record names any more; a failure only leaves it behind. */
  dropCheckpoint(object: string): Promise<void>;
  /** Purges the slot's inputs on one edge below `seq`; a failure only leaves them behind. */
  purgeInputs(replica: number, stage: number, kind: EdgeKind, seq: number): Promise<void>;
  /**
   * Before the run's first start: the slot's state to start from, stored as a checkpoint after `step` and named by a
   * record of generation 0 that no host holds; the first host given the slot starts from it (slots.ts seedSlot).
   */
  seed(replica: number, stage: number, layers: readonly [number, number], step: number, state: Uint8Array): Promise<CheckpointPointer>;
}

export function slotStore(res: RunResources): SlotStore {
  const n = res.names;
  const slot = (replica: number, stage: number) => `slot ${replica}.${stage}`;
  return {
    signers: new SlotSigners(res.kv),
    read: async (replica, stage) => (await retryTransient(slot(replica, stage), () => readSlot(res.kv, replica, stage)))?.record,
    ensureInputStream: (replica, stage, datacenter) =>
      retryTransient(`input stream of ${slot(replica, stage)}`, () => ensureInputStream(res, replica, stage, datacenter)),
    lastInputSeq: (replica, stage) => retryTransient(`input stream of ${slot(replica, stage)}`, () =>
      res.jsm.streams.info(n.inputStream(replica, stage)).then((i) => i.state.last_seq, (err: Error) => { if (/not found/i.test(err.message)) return 0; throw err; })),
    assign: async (replica, stage, host, signer) =>
      (await retryTransient(slot(replica, stage), () => assignSlot(res.kv, replica, stage, host, signer))).record,
    rewind: async (replica, stage, generation, rewound, until) =>
      (await retryTransient(slot(replica, stage), () => rewindSlot(res.kv, replica, stage, generation, rewound, until))).record,
    recordCheckpoint: (replica, stage, generation, checkpoint, beforeWrite) => recordReportedCheckpoint(res.kv, replica, stage, generation, checkpoint, beforeWrite),
    dropCheckpoint: async (object) => { await res.objects.delete(object).catch(() => {}); },
    purgeInputs: async (replica, stage, kind, seq) => {
      // Nothing lies below 1; and nats-server (2.10.27) takes a filtered purge up to 1 as one of every message on the subject.
      if (seq <= 1) return;
      await res.jsm.streams.purge(n.inputStream(replica, stage), { filter: n.edgeIn(kind, replica, stage), seq }).catch(() => {});
    },
    seed: async (replica, stage, [begin, end], step, state) => {
      const object = n.checkpoint(replica, begin, end, step, 0);
      await retryTransient(`seed state ${object}`, () => res.objects.putBlob({ name: object }, state));
      // Nothing to resume from in the streams yet: each reader starts at its stream's start.
      const pointer: CheckpointPointer = { step, object, resume: { control: 0 }, sha256: sha256Hex(state) };
      await retryTransient(slot(replica, stage), () => seedSlot(res.kv, replica, stage, pointer));
      return pointer;
    },
  };
}
