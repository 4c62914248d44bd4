// Run state in the run's KV bucket, written by the coordinator alone: the
// run's status and live metrics (`state`), its summary at the end
// (`summary`), the keys its coordinators sign step control with
// (`coordinator`), every host (`hosts.<id>`), every slot (`slot.<r>.<s>`), the
// Bridge's records of outer steps (`bridge.<s>.<o>`) and its counters
// (`bridge-outer.<s>`). Each record has a decoder that checks it field by
// field (the field readers of json-fields.ts) and throws a ControlMessageError
// naming the field; fields a decoder does not list are left as they are,
// unchecked, so a newer coordinator may add some. JSON has no NaN: a loss that
// was not finite (a skipped step's) is stored as null, and the types say so.
import {
  arrayOf, count, jsonDecoder, nullable, object, oneOf, optional, pair, real, sha256Digest, text, type FieldList, type FieldReader,
} from './json-fields.ts';
import { checkpointPointerReader, WIRE_COUNT_FIELDS, wireCountReader, type CheckpointPointer, type WireCount } from './control-messages.ts';

/** Recovery events the coordinator saw, over the run's life (kept across coordinator restarts). */
export interface RecoveryCounts {
  hosts_lost: number;
  slots_reassigned: number;
  coordinator_restarts: number;
}

/** Replica 0's stages over the window from the first engine call of any stage to the last. */
export interface PipelineUse {
  /** The fraction of the window each stage spent in engine calls (hosts' clocks are compared, so they must agree). */
  readonly utilization_by_stage: number[];
  /** What the stages together did not compute, beside the least bubble the run's schedule allows (runtime/config/run-schedule.ts). */
  readonly bubble: number;
  readonly bubble_bound: number;
  /** The run's pipeline schedule ('1f1b', 'zb-h1', 'zb-h2'). */
  readonly schedule?: string;
  /** The most bytes of activations each stage held stashed at once. */
  readonly peak_stash_bytes_by_stage?: number[];
}

/** The boundary between stages s and s+1 of replica 0: activations s → s+1, gradients s+1 → s. */
export interface EdgeTraffic {
  readonly edge: string;  // "s-(s+1)"
  readonly act: WireCount;
  readonly grad: WireCount;
}

export interface LiveMetrics extends PipelineUse {
  /** The step these numbers were taken after (replica 0). */
  readonly step: number;
  readonly tokens_per_s: number;
  readonly mfu_pct: number;
  readonly devices_by_stage: string[];
  /** Replica 0's edges; a replacement's counts start from its restore. */
  readonly edges: EdgeTraffic[];
  /** Replica 0: frames each stage has received or has waiting in its edge stream, not yet computed on. */
  readonly queued_by_stage: number[];
  readonly recoveries: RecoveryCounts;
}

/** `state`: where the run is. */
export interface RunState {
  /** resplit: the run goes on as `resplit.run` (its hosts move there); finished once that run has. */
  status: 'gathering' | 'running' | 'finishing' | 'resplit' | 'finished' | 'failed';
  step: number;
  loss: number | null;
  tokens_per_s: number | null;
  started_at: number | null;                 // epoch ms of the first START_RUN: survives coordinator restarts
  reason?: string;
  updated: string;
  /** Hosts lost, slots handed to standbys, coordinator restarts: over the run's life. */
  recoveries?: RecoveryCounts;
  /** As of the last step of replica 0 (live-metrics.ts): what `caravan status` shows while the run goes on. */
  metrics?: LiveMetrics;
  /** With training.audit: the audits so far, and the difference one found (which fails the run). */
  audits?: AuditSummary;
  /**
   * What each restarted coordinator replayed of the control log (the last 20): the snapshot it started from (null: the
   * log's start), the entries it replayed, and the log's last sequence then.
   */
  replays?: Array<{ snapshot_seq: number | null; entries: number; log_seq: number }>;
  /** A run started from given stage states (--from-states): the first step it trained; the steps before were not this run's. */
  from_step?: number;
  /**
   * With the Bridge, replicas that joined after the start (training.bridge.startReplicas): each from the parameters
   * of outer step `outer`, training from step `step` on, since `at` (epoch ms). A restarted coordinator reads them.
   */
  joined?: MembershipChange[];
  /** Replicas told to leave (`caravan leave`): each contributes last to outer step `outer`, after its step `step`. */
  left?: MembershipChange[];
  /** A re-split decided (`caravan repartition --live`): this run ends before `step`, and `run` trains on from there. */
  resplit?: Resplit;
}

/** A running run re-split at a step: the run that trains on from `step` with `stage_layers`, decided at `at` (epoch ms). */
export interface Resplit {
  readonly from_run: string;
  readonly run: string;
  readonly step: number;
  readonly from_stage_layers: number[];
  readonly stage_layers: number[];
  readonly at: number;
  /**
   * Re-split for the holders' measured speeds (training.resplitGain): the holders slot by slot (replica 0's stages in
   * order, then replica 1's …), whom the successor gives the same slots.
   */
  readonly hosts_by_slot?: string[];
}

/** A replica joining (from outer step `outer`'s parameters, training from `step`) or leaving (after contributing to `outer`, its last step `step`), decided at `at` (epoch ms). */
export interface MembershipChange {
  readonly replica: number;
  readonly outer: number;
  readonly step: number;
  readonly at: number;
  /**
   * Left because this stage's slot stayed vacant (training.bridge.retireVacantMs): its last step is the last it
   * committed, and it has no final weights.
   */
  readonly vacant?: { readonly stage: number };
}

/** `bridge.<stage>.<outer>`: one stage's outer step, created once. */
export interface BridgeRecord {
  readonly stage: number;
  readonly outer: number;
  /** The replicas whose contributions were combined. */
  readonly replicas: number[];
  /** Replicas that contributed but whose object was not the one they reported (overwritten in the store): left out. */
  readonly refused?: number[];
  /** The objects of the new parameters and momentum, and their SHA-256 (hex): anyone may write the store, so readers check. */
  readonly theta: string;
  readonly theta_sha256: string;
  readonly momentum?: string;
  readonly momentum_sha256?: string;
  /** Epoch ms of the first contribution and of the record: the sync's span. */
  readonly first_ms: number;
  readonly finished_ms: number;
  /** What the contributions held as fp32, and their size in the Object Store. */
  readonly bytes_raw: number;
  readonly bytes_wire: number;
  /** Written by a live re-split: the run whose outer step this is, its θ and momentum re-sharded for this run's split. */
  readonly resharded_from?: string;
}

/** `bridge-outer.<stage>`: a distributed variable that only moves forward (compare-and-set). */
export interface CounterRecord {
  readonly value: number;
}

/** `summary`, and the message on `ctl.finished`: the run's outcome. */
/**
 * Audits by exact replay: the rate drawn at, the intervals replayed and
 * passed, those that could not be (a holder on another backend, evidence
 * gone), the steps replayed and the replays' time, and each difference found
 * (the slot at fault, the step, its holder then, what differed).
 */
export interface AuditSummary {
  readonly rate: number;
  readonly audited: number;
  readonly skipped: number;
  readonly steps_replayed: number;
  readonly replay_ms: number;
  readonly failed: Array<{ replica: number; stage: number; step: number; host: string | null; what: string }>;
  /** Each catch's rewind: the replica started over from its initial weights (epoch), the steps it had committed and recomputes, the host banned. */
  readonly rewinds?: Array<{ replica: number; epoch: number; discarded_steps: number; banned: string }>;
  /** Intervals drawn and not yet replayed, saved before the checkpoint that closes one is recorded: a restarted coordinator replays them. */
  readonly pending?: PendingAudit[];
}

/** An audit drawn and not yet done: the slot, its replica's epoch, the checkpoint it replays from (none: the start), and the state it must reach. */
export interface PendingAudit {
  readonly replica: number;
  readonly stage: number;
  readonly epoch: number;
  readonly from?: CheckpointPointer;
  readonly to: { readonly step: number; readonly sha256: string };
}

export interface RunSummary {
  readonly run: string;
  readonly steps: number;
  readonly stages: number;
  readonly replicas: number;
  /** Replica 0's loss at each step; null where it was not finite (a skipped step, after JSON). */
  readonly losses: Array<number | null>;
  readonly final_loss: number | null;
  readonly tokens_per_s: number;
  readonly params_sha256: string;            // replica 0's parameters, in model order
  /** null for a replica that never joined the run (training.bridge.startReplicas). */
  readonly params_sha256_by_replica: Array<string | null>;
  readonly losses_by_replica: Array<Array<number | null>>;
  readonly wall_seconds: number;
  readonly dead_letters: number;
  /** Frames between stages, summed over the slot holders that finished (a replacement counts from its restore, re-sent frames included). */
  readonly wire: WireCount & { ratio_vs_f32: number };
  /**
   * Replica 0's stages: the fraction of the window from the first engine call
   * of any stage to the last that each stage spent in engine calls; the
   * bubble is what the stages together did not (hosts' clocks are compared,
   * so they must agree), beside the least bubble the run's schedule allows
   * (runtime/config/run-schedule.ts), its name, and each stage's peak
   * activation stash.
   */
  readonly utilization_by_stage: number[];
  readonly bubble: number;
  readonly bubble_bound: number;
  readonly schedule?: string;
  readonly peak_stash_bytes_by_stage?: number[];
  /** Replica 0's stages' devices: 'cpu', or the GPU's name. */
  readonly devices_by_stage: string[];
  /** Model FLOPs per second over the sum of the hosts' peaks: a GPU's dense bf16 peak, a CPU's measured fp32 sgemm at start-up. */
  readonly mfu_pct: number;
  readonly recoveries: RecoveryCounts;
  /** Steps committed as skipped because their gradients or loss were not finite (training.nonFinite = skip-step). */
  readonly skipped_steps: Array<{ replica: number; step: number }>;
  /** Post-validated schedules: steps whose provisional update was rolled back (clipped or skipped), and the next step redone. */
  readonly rolled_back_steps?: Array<{ replica: number; step: number }>;
  /** With training.audit: the checkpoint intervals replayed and what they cost (runtime/coordinator/audits.ts). */
  readonly audits?: AuditSummary;
  /** With a Bridge: outer steps every stage completed, and each sync (stage, outer step, replicas, span, bytes). */
  readonly outer_steps?: number;
  readonly bridge_syncs?: BridgeRecord[];
  /** Replicas that joined after the start (training.bridge.startReplicas), and that left before the end: where and when. */
  readonly replicas_joined?: MembershipChange[];
  readonly replicas_left?: MembershipChange[];
  /** Re-splits on the way, in order: the run went on as another run from each one's step (its final states are that run's). */
  readonly resplits?: Resplit[];
}

/**
 * `coordinator`: every public nkey ('U…') a coordinator of the run has signed
 * step control with, oldest first. A step control's signature header names
 * its key by its index here; a coordinator restarted without a seed has a new
 * key, and the log still holds what the old one signed, so none is dropped.
 */
export interface CoordinatorRecord {
  readonly keys: string[];
}

/** `hosts.<id>`: a host the coordinator admitted, and what became of it. */
export interface HostEntry {
  readonly host: string;
  readonly datacenter: string;
  readonly status: 'joined' | 'standby' | 'assigned' | 'lost';
  readonly joined: string;
  /** The public nkey the host proved it holds when it registered. */
  readonly key?: string;
  /** While it holds a slot: which, and its layers [begin, end). */
  readonly replica?: number;
  readonly stage?: number;
  readonly layers?: [number, number];
  /** When lost holding a slot: that slot. */
  readonly slot?: { replica: number; stage: number } | null;
  /** The training TFLOP/s it measured for the run's model when it registered, if it did. */
  readonly tflops?: number;
}

/** The last input-stream sequences a holder's frames count up to: `act` in the next stage's stream, `grad` in the previous stage's. */
export interface SentUntil {
  readonly act?: number;
  readonly grad?: number;
}

export interface SlotSigner {
  readonly generation: number;
  readonly host: string;
  /** The holder's public nkey ('U…'). */
  readonly key: string;
  readonly until?: SentUntil;
}

/** `slot.<replica>.<stage>`: who holds the slot, under which generation and key, and the holder's last checkpoint. */
export interface SlotRecord {
  readonly replica: number;
  readonly stage: number;
  readonly host: string;
  readonly generation: number;
  readonly checkpoint?: CheckpointPointer;
  /**
   * Who signed for this slot, newest last (the last MAX_SIGNERS generations; older ones move to
   * `signer.<r>.<s>.<generation>` records, so a replay of the control log can still check their reports):
   * receivers check a frame's signature against the key of the generation it
   * claims. A generation that lost the slot keeps `until`: the last
   * sequences, when it was replaced, of the input streams it sent to (its
   * activations to the next stage's, its gradients to the previous one's).
   * Its frames stored up to then are good (a replacement replays them),
   * later ones are stale.
   */
  readonly signers?: readonly SlotSigner[];
  /**
   * Set when an audit's catch rewound the slot's replica (RewindControl):
   * with no checkpoint since, the holder starts from the initial weights and
   * reads from these sequences, not from the streams' starts.
   */
  readonly rewound?: { readonly epoch: number; readonly resume: { readonly act?: number; readonly grad?: number; readonly control: number } };
}

// The records' fields, in the order of the types above.
const RECOVERY_COUNTS: FieldReader<RecoveryCounts> = object({ hosts_lost: count, slots_reassigned: count, coordinator_restarts: count });
const PIPELINE_USE = { utilization_by_stage: arrayOf(real), bubble: real, bubble_bound: real, schedule: optional(text), peak_stash_bytes_by_stage: optional(arrayOf(count)) } as const satisfies FieldList;

const LIVE_METRICS: FieldReader<LiveMetrics> = object({
  ...PIPELINE_USE,
  step: count,
  tokens_per_s: real,
  mfu_pct: real,
  devices_by_stage: arrayOf(text),
  edges: arrayOf(object({ edge: text, act: wireCountReader, grad: wireCountReader })),
  queued_by_stage: arrayOf(count),
  recoveries: RECOVERY_COUNTS,
});

const AUDIT_SUMMARY: FieldReader<AuditSummary> = object({
  rate: real, audited: count, skipped: count, steps_replayed: count, replay_ms: real,
  failed: arrayOf(object({ replica: count, stage: count, step: count, host: nullable(text), what: text })),
  rewinds: optional(arrayOf(object({ replica: count, epoch: count, discarded_steps: count, banned: text }))),
  pending: optional(arrayOf(object({ replica: count, stage: count, epoch: count, from: optional(checkpointPointerReader), to: object({ step: count, sha256: text }) }))),
});

const RESPLIT = object({ from_run: text, run: text, step: count, from_stage_layers: arrayOf(count), stage_layers: arrayOf(count), at: real, hosts_by_slot: optional(arrayOf(text)) });
const MEMBERSHIP_CHANGE = object({ replica: count, outer: count, step: count, at: real, vacant: optional(object({ stage: count })) });

const RUN_STATE = object({
  status: oneOf(['gathering', 'running', 'finishing', 'resplit', 'finished', 'failed']),
  resplit: optional(RESPLIT),
  step: count,
  loss: nullable(real),
  tokens_per_s: nullable(real),
  started_at: nullable(real),
  reason: optional(text),
  updated: text,
  recoveries: optional(RECOVERY_COUNTS),
  metrics: optional(LIVE_METRICS),
  audits: optional(AUDIT_SUMMARY),
  replays: optional(arrayOf(object({ snapshot_seq: nullable(count), entries: count, log_seq: count }))),
  from_step: optional(count),
  joined: optional(arrayOf(MEMBERSHIP_CHANGE)),
  left: optional(arrayOf(MEMBERSHIP_CHANGE)),
});

const BRIDGE_RECORD: FieldReader<BridgeRecord> = object({
  stage: count,
  outer: count,
  replicas: arrayOf(count),
  refused: optional(arrayOf(count)),
  theta: text,
  theta_sha256: sha256Digest,
  momentum: optional(text),
  momentum_sha256: optional(sha256Digest),
  first_ms: real,
  finished_ms: real,
  bytes_raw: count,
  bytes_wire: count,
  resharded_from: optional(text),
});

const COUNTER_RECORD = object({ value: count });

const LOSSES = arrayOf(nullable(real));
const RUN_SUMMARY = object({
  run: text,
  steps: count,
  stages: count,
  replicas: count,
  losses: LOSSES,
  final_loss: nullable(real),
  tokens_per_s: real,
  params_sha256: text,
  params_sha256_by_replica: arrayOf(nullable(text)),
  losses_by_replica: arrayOf(LOSSES),
  wall_seconds: real,
  dead_letters: count,
  wire: object({ ...WIRE_COUNT_FIELDS, ratio_vs_f32: real }),
  ...PIPELINE_USE,
  devices_by_stage: arrayOf(text),
  mfu_pct: real,
  recoveries: RECOVERY_COUNTS,
  skipped_steps: arrayOf(object({ replica: count, step: count })),
  rolled_back_steps: optional(arrayOf(object({ replica: count, step: count }))),
  audits: optional(AUDIT_SUMMARY),
  outer_steps: optional(count),
  bridge_syncs: optional(arrayOf(BRIDGE_RECORD)),
  replicas_joined: optional(arrayOf(MEMBERSHIP_CHANGE)),
  replicas_left: optional(arrayOf(MEMBERSHIP_CHANGE)),
  resplits: optional(arrayOf(RESPLIT)),
});

const COORDINATOR_RECORD = object({ keys: arrayOf(text) });

const SLOT = object({ replica: count, stage: count });
const HOST_ENTRY = object({
  host: text,
  datacenter: text,
  status: oneOf(['joined', 'standby', 'assigned', 'lost']),
  joined: text,
  key: optional(text),
  replica: optional(count),
  stage: optional(count),
  layers: optional(pair(count, count)),
  slot: optional(nullable(SLOT)),
  tflops: optional(real),
});

const SLOT_SIGNER = object({ generation: count, host: text, key: text, until: optional(object({ act: optional(count), grad: optional(count) })) });
const SLOT_RECORD = object({
  replica: count,
  stage: count,
  host: text,
  generation: count,
  checkpoint: optional(checkpointPointerReader),
  signers: optional(arrayOf(SLOT_SIGNER)),
  rewound: optional(object({ epoch: count, resume: object({ act: optional(count), grad: optional(count), control: count }) })),
});

export const decodeRunState = jsonDecoder<RunState>('run state', RUN_STATE);
export const decodeRunSummary = jsonDecoder<RunSummary>('run summary', RUN_SUMMARY);
export const decodeHostEntry = jsonDecoder<HostEntry>('host record', HOST_ENTRY);
export const decodeSlotRecord = jsonDecoder<SlotRecord>('slot record', SLOT_RECORD);
export const decodeSlotSigner = jsonDecoder<SlotSigner>('retired signer', SLOT_SIGNER);
export const decodeBridgeRecord = jsonDecoder<BridgeRecord>('bridge record', BRIDGE_RECORD);
export const decodeCounterRecord = jsonDecoder<CounterRecord>('counter record', COUNTER_RECORD);
export const decodeCoordinatorRecord = jsonDecoder<CoordinatorRecord>('coordinator record', COORDINATOR_RECORD);
