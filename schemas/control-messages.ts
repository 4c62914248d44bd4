// The control protocol: what the coordinator and the hosts say to each other
// besides tensor frames. Step control (`step.<r>`) and stage reports
// (`report.<r>.<s>`) are the run's control log in JetStream; registration,
// heartbeats, readiness, progress, the run's end and fault injection are core
// NATS. Each message has a decoder that checks it field by field (the field
// readers of json-fields.ts) and throws a ControlMessageError naming the
// field; fields a decoder does not list are left as they are, unchecked, so
// a newer peer may add some. JSON has no NaN: where a producer may send a
// value that is not finite (a skipped step's loss, a gradient's Σg²), it
// arrives as null and the type says `number | null`.
import {
  arrayOf, count, flag, jsonDecoder, nullable, object, oneOf, optional, real, sha256Digest, tagged, text, type FieldList, type FieldReader,
} from './json-fields.ts';
import type { FrameKind } from './tensor-frame.ts';

/** Step control on `step.<replica>`, written by the coordinator. A commit's gradNorm and loss are null when not finite (a step committed as skipped). */
export type StepControl =
  | { type: 'open'; step: number }
  // last: the replica's final step, before the run's (it leaves the run): its stages upload their final states.
  | { type: 'commit'; step: number; gradScale: number; gradNorm: number | null; loss: number | null; skip?: true; last?: true }
  | RewindControl;

/**
 * An audit caught a slot's holder computing wrongly: the replica starts over
 * from its initial weights under `epoch` (runtime/coordinator/rewinds.ts).
 * Every slot of the replica takes generation `generations[stage]` and reads
 * its inputs from `resume[stage]` (the end of its input stream when the
 * rewind was decided) and the control log from just after this record.
 */
export interface RewindControl {
  readonly type: 'rewind';
  readonly step: 0;
  readonly epoch: number;
  readonly generations: number[];
  readonly resume: Array<{ readonly act?: number; readonly grad?: number }>;
  /** The slot the audit blamed, the step it computed wrongly, and its holder (banned from the run). */
  readonly culprit: { readonly stage: number; readonly step: number; readonly host: string };
  /** The steps the replica had committed, done again. */
  readonly discarded_steps: number;
}

/** A stage's report that its contribution to an outer step is in the Object Store. */
export interface ContributionReport {
  readonly replica: number;
  readonly stage: number;
  readonly outer: number;
  readonly object: string;
  readonly bytes_raw: number;
  readonly bytes_wire: number;
  /** SHA-256 (hex) of the object as the replica uploaded it: anyone may write the object store, so the Bridge checks it. */
  readonly sha256: string;
}

/** Where a slot holder's inputs start again after a checkpoint's step, and the checkpoint itself. */
export interface CheckpointPointer {
  readonly step: number;                 // the last step whose update the checkpoint holds
  readonly object: string;               // Object Store name of the stage state (safetensors)
  /** Where the holder's inputs start after that step: sequences in its input stream, and the control log's. */
  readonly resume: { readonly act?: number; readonly grad?: number; readonly control: number };
  /** SHA-256 (hex) of the object as its holder uploaded it: anyone may write the object store, so a restore checks it. */
  readonly sha256?: string;
  /** With top-k payloads: SHA-256 (hex) of the error-feedback residual the holder held then (the object of its last sync), checked at a restore. */
  readonly residual_sha256?: string;
  /** The attempt of the step after it (1 where a post-validated run rolled that step back; actors/stage-machine.ts); absent: 0. */
  readonly next_attempt?: number;
}

/**
 * SHA-256 (hex) over a step's frames of one kind as sent, in microbatch
 * order: the digest of the concatenated SHA-256 digests of each frame's
 * payload bytes (after its codecs). Absent for a kind the stage sends none of.
 */
export interface OutputDigests {
  readonly act?: string;
  readonly grad?: string;
}

/**
 * Stage reports on `report.<replica>.<stage>`, read by the coordinator (and by
 * `caravan chaos`, to count). In 'done', Σg² per tensor is null where it is not
 * finite, and the loss (the last stage's alone) null when it is not; its
 * `digests` commit the holder to the frames it sent that step (OutputDigests),
 * which audits recompute (runtime/audit/). 'failed'
 * says the holder cannot go on, and why: the coordinator fails the run with it.
 */
export type StageReport =
  | { type: 'done'; replica: number; stage: number; generation: number; host: string; step: number; sumSquares: Array<number | null>; loss?: number | null; digests?: OutputDigests; counters: StageCounters }
  | { type: 'stepped'; replica: number; stage: number; generation: number; host: string; step: number; contributions: number[] }
  | { type: 'checkpoint'; replica: number; stage: number; generation: number; host: string; step: number; checkpoint: CheckpointPointer }
  | { type: 'final'; replica: number; stage: number; generation: number; host: string; name: string; sha256: string; counters: StageCounters }
  | ({ type: 'contribution'; generation: number; host: string; step: number } & ContributionReport)
  | { type: 'failed'; replica: number; stage: number; generation: number; host: string; reason: string };

/** A slot holder's counters since it started (a replacement: since its restore), sent with each step report. */
export interface StageCounters {
  compute: ComputeCount;
  /** Frames published, by kind: activations go to the next stage, gradients to the previous one. */
  sent_by_kind: Record<FrameKind, WireCount>;
  /** Frames this stage has received and not yet computed on, plus those still waiting in its edge streams. */
  queued: number;
}

/**
 * How this slot holder used its time: engine calls, and the epoch ms of its
 * first and last; its device ('cpu' or the GPU's name) and that device's peak
 * (a GPU's dense bf16 peak, or the CPU's measured fp32 sgemm).
 */
export interface ComputeCount {
  busy_ms: number;
  first_ms: number;
  last_ms: number;
  peak_gflops: number;
  device: string;
  /** The most bytes of activations and backward halves it has held stashed at once. */
  peak_stash_bytes?: number;
}

/** Frames this slot holder published: their float32 size, and their size on the wire (whole frames). */
export interface WireCount {
  frames: number;
  f32_bytes: number;
  wire_bytes: number;
}

/** A host's request on `ctl.register`: who it is, where, on what, and proof that it holds the key it registers. */
export interface Registration {
  readonly host: string;
  readonly datacenter: string;
  readonly device?: string;
  readonly gpu?: string;
  readonly key: string;
  readonly proof: string;
  /** Training TFLOP/s the host measured for one layer of the run's model at its microbatch shape (host/speed-probe.ts). */
  readonly tflops?: number;
}

/** The coordinator's answer to a registration. */
/** `ctl.leave` (the coordinator's credentials only): an operator asks a replica to leave the run at its next outer-step boundary. */
export interface LeaveRequest {
  readonly replica: number;
}

/** `ctl.resplit` (the coordinator's credentials only): an operator asks that the running run go on with another split. */
export interface ResplitRequest {
  readonly stage_layers: number[];
}

/** The coordinator's answer: the step the new split trains from, and the run that trains it; or why not. */
export interface ResplitReply {
  readonly ok: boolean;
  readonly reason?: string;
  readonly step?: number;
  readonly run?: string;
}

/** The coordinator's answer: the outer step the replica contributes to last, and its last step; or why not. */
export interface LeaveReply {
  readonly ok: boolean;
  readonly reason?: string;
  readonly outer?: number;
  readonly last_step?: number;
}

export interface RegistrationReply {
  readonly ok: boolean;
  readonly run?: string;
  readonly reason?: string;
  /** Refused for now: the key is another host id's, which is live; it is free once that host is lost (heartbeats stopped). */
  readonly retry?: boolean;
}

/** A heartbeat (`hb.<host>`) or a host's word that its slot is ready (`ctl.ready`). */
export interface HostAnnouncement {
  readonly host: string;
  /** In a heartbeat: how long ago the host's event loop last turned (its heartbeats come from a thread of their own). */
  readonly loop_lag_ms?: number;
}

/** `ctl.failed`: the run has failed, and why. */
export interface RunFailure {
  readonly reason: string;
}

/** `ctl.progress`: a replica committed a step (loss and gradNorm are null when not finite: a skipped step). */
export interface Progress {
  readonly replica: number;
  readonly step: number;
  readonly steps: number;
  readonly loss: number | null;
  readonly gradNorm: number | null;
  readonly tokensPerSecond: number;
}

/** Where a host started with CARAVAN_CHAOS=1 can be told to stop itself. */
export const FAULT_POINTS = ['forward', 'backward', 'publish', 'checkpoint', 'bridge-sync'] as const;
export type FaultPoint = (typeof FAULT_POINTS)[number];

/** `chaos.<host>`: stop on the after-th time the point is reached from now (1 = the next). */
export interface FaultRequest {
  readonly point: FaultPoint;
  readonly after: number;
}

export interface FaultReply {
  readonly ok: boolean;
  readonly error?: string;
}

/** `chaos-reached`: a host reached the point it was told to stop at, and stops. */
export interface FaultReached {
  readonly host: string;
  readonly pid: number;
  readonly point: FaultPoint;
}

// The messages' fields, in the order of the types above.
const STEP_CONTROL = tagged('type', {
  open: { step: count },
  commit: { step: count, gradScale: real, gradNorm: nullable(real), loss: nullable(real), skip: optional(oneOf([true])), last: optional(oneOf([true])) },
  rewind: {
    step: oneOf([0]), epoch: count, generations: arrayOf(count), resume: arrayOf(object({ act: optional(count), grad: optional(count) })),
    culprit: object({ stage: count, step: count, host: text }), discarded_steps: count,
  },
});

// Readers run-records.ts uses too (the summary's wire counts, live metrics' edges, a slot's checkpoint).
export const WIRE_COUNT_FIELDS = { frames: count, f32_bytes: count, wire_bytes: count } as const satisfies FieldList;
export const wireCountReader: FieldReader<WireCount> = object(WIRE_COUNT_FIELDS);

const STAGE_COUNTERS: FieldReader<StageCounters> = object({
  compute: object({ busy_ms: real, first_ms: real, last_ms: real, peak_gflops: real, device: text, peak_stash_bytes: optional(count) }),
  sent_by_kind: object({ act: wireCountReader, grad: wireCountReader }),
  queued: count,
});

export const checkpointPointerReader: FieldReader<CheckpointPointer> = object({
  step: count,
  object: text,
  resume: object({ act: optional(count), grad: optional(count), control: count }),
  sha256: optional(text),
  residual_sha256: optional(sha256Digest),
  next_attempt: optional(count),
});

/** Who sent a report: every kind names the slot and its holder. */
const REPORTER = { replica: count, stage: count, generation: count, host: text } as const satisfies FieldList;

const STAGE_REPORT = tagged('type', {
  done: { ...REPORTER, step: count, sumSquares: arrayOf(nullable(real)), loss: optional(nullable(real)), digests: optional(object({ act: optional(sha256Digest), grad: optional(sha256Digest) })), counters: STAGE_COUNTERS },
  stepped: { ...REPORTER, step: count, contributions: arrayOf(count) },
  checkpoint: { ...REPORTER, step: count, checkpoint: checkpointPointerReader },
  final: { ...REPORTER, name: text, sha256: text, counters: STAGE_COUNTERS },
  contribution: { ...REPORTER, step: count, outer: count, object: text, bytes_raw: count, bytes_wire: count, sha256: sha256Digest },
  failed: { ...REPORTER, reason: text },
});

const REGISTRATION = object({ host: text, datacenter: text, device: optional(text), gpu: optional(text), key: text, proof: text, tflops: optional(real) });
const LEAVE_REQUEST = object({ replica: count });
const LEAVE_REPLY = object({ ok: flag, reason: optional(text), outer: optional(count), last_step: optional(count) });
const RESPLIT_REQUEST = object({ stage_layers: arrayOf(count) });
const RESPLIT_REPLY = object({ ok: flag, reason: optional(text), step: optional(count), run: optional(text) });
const REGISTRATION_REPLY = object({ ok: flag, run: optional(text), reason: optional(text), retry: optional(flag) });
const HOST_ANNOUNCEMENT = object({ host: text, loop_lag_ms: optional(real) });
const RUN_FAILURE = object({ reason: text });
const PROGRESS = object({ replica: count, step: count, steps: count, loss: nullable(real), gradNorm: nullable(real), tokensPerSecond: real });
const FAULT_POINT = oneOf(FAULT_POINTS);
const FAULT_REQUEST = object({ point: FAULT_POINT, after: count });
const FAULT_REPLY = object({ ok: flag, error: optional(text) });
const FAULT_REACHED = object({ host: text, pid: count, point: FAULT_POINT });

export const decodeStepControl = jsonDecoder<StepControl>('step control', STEP_CONTROL);
export const decodeStageReport = jsonDecoder<StageReport>('stage report', STAGE_REPORT);
export const decodeRegistration = jsonDecoder<Registration>('registration', REGISTRATION);
export const decodeRegistrationReply = jsonDecoder<RegistrationReply>('registration reply', REGISTRATION_REPLY);
export const decodeLeaveRequest = jsonDecoder<LeaveRequest>('leave request', LEAVE_REQUEST);
export const decodeLeaveReply = jsonDecoder<LeaveReply>('leave reply', LEAVE_REPLY);
export const decodeResplitRequest = jsonDecoder<ResplitRequest>('resplit request', RESPLIT_REQUEST);
export const decodeResplitReply = jsonDecoder<ResplitReply>('resplit reply', RESPLIT_REPLY);
export const decodeHostAnnouncement = jsonDecoder<HostAnnouncement>('host announcement', HOST_ANNOUNCEMENT);
export const decodeRunFailure = jsonDecoder<RunFailure>('run failure', RUN_FAILURE);
export const decodeProgress = jsonDecoder<Progress>('progress', PROGRESS);
export const decodeFaultRequest = jsonDecoder<FaultRequest>('fault request', FAULT_REQUEST);
export const decodeFaultReply = jsonDecoder<FaultReply>('fault reply', FAULT_REPLY);
export const decodeFaultReached = jsonDecoder<FaultReached>('fault reached', FAULT_REACHED);
