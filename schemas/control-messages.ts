// The control protocol: what the coordinator and the hosts say to each other
// besides tensor frames. Step control (`step.<r>`) and stage reports
// (`report.<r>.<s>`) are the run's control log in JetStream; registration,
// heartbeats, readiness, progress, the run's end and fault injection are core
// NATS. Each message has a decoder that checks it field by field.
import { decodeJson } from './json-message.ts';
import type { FrameKind } from './tensor-frame.ts';

/** Step control on `step.<replica>`, written by the coordinator. */
export type StepControl =
  | { type: 'open'; step: number }
  | { type: 'commit'; step: number; gradScale: number; gradNorm: number; loss: number; skip?: true };

/** A stage's report that its contribution to an outer step is in the Object Store. */
export interface ContributionReport {
  readonly replica: number;
  readonly stage: number;
  readonly outer: number;
  readonly object: string;
  readonly bytes_raw: number;
  readonly bytes_wire: number;
}

/** Where a slot holder's inputs start again after a checkpoint's step, and the checkpoint itself. */
export interface CheckpointPointer {
  readonly step: number;                 // the last step whose update the checkpoint holds
  readonly object: string;               // Object Store name of the stage state (safetensors)
  /** Where the holder's inputs start after that step: sequences in its input stream, and the control log's. */
  readonly resume: { readonly act?: number; readonly grad?: number; readonly control: number };
  /** SHA-256 (hex) of the object as its holder uploaded it: anyone may write the object store, so a restore checks it. */
  readonly sha256?: string;
}

/** Stage reports on `report.<replica>.<stage>`, read by the coordinator (and by `caravan chaos`, to count). */
export type StageReport =
  | { type: 'done'; replica: number; stage: number; generation: number; host: string; step: number; sumSquares: number[]; loss?: number; counters: StageCounters }
  | { type: 'stepped'; replica: number; stage: number; generation: number; host: string; step: number; contributions: number[] }
  | { type: 'checkpoint'; replica: number; stage: number; generation: number; host: string; step: number; checkpoint: CheckpointPointer }
  | { type: 'final'; replica: number; stage: number; generation: number; host: string; name: string; sha256: string; counters: StageCounters }
  | ({ type: 'contribution'; generation: number; host: string } & ContributionReport);

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
}

/** The coordinator's answer to a registration. */
export interface RegistrationReply {
  readonly ok: boolean;
  readonly run?: string;
  readonly reason?: string;
}

/** A heartbeat (`hb.<host>`) or a host's word that its slot is ready (`ctl.ready`). */
export interface HostAnnouncement {
  readonly host: string;
}

/** `ctl.failed`: the run has failed, and why. */
export interface RunFailure {
  readonly reason: string;
}

/** `ctl.progress`: a replica committed a step. */
export interface Progress {
  readonly replica: number;
  readonly step: number;
  readonly steps: number;
  readonly loss: number;
  readonly gradNorm: number;
  readonly tokensPerSecond: number;
}

/** Where a host started with CARAVAN_CHAOS=1 can be told to stop itself. */
export const FAULT_POINTS = ['forward', 'backward', 'publish', 'checkpoint'] as const;
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

export const decodeStepControl = (bytes: Uint8Array, what = 'step control'): StepControl => decodeJson<StepControl>(bytes, what);
export const decodeStageReport = (bytes: Uint8Array, what = 'stage report'): StageReport => decodeJson<StageReport>(bytes, what);
export const decodeRegistration = (bytes: Uint8Array, what = 'registration'): Registration => decodeJson<Registration>(bytes, what);
export const decodeRegistrationReply = (bytes: Uint8Array, what = 'registration reply'): RegistrationReply => decodeJson<RegistrationReply>(bytes, what);
export const decodeHostAnnouncement = (bytes: Uint8Array, what = 'host announcement'): HostAnnouncement => decodeJson<HostAnnouncement>(bytes, what);
export const decodeRunFailure = (bytes: Uint8Array, what = 'run failure'): RunFailure => decodeJson<RunFailure>(bytes, what);
export const decodeProgress = (bytes: Uint8Array, what = 'progress'): Progress => decodeJson<Progress>(bytes, what);
export const decodeFaultRequest = (bytes: Uint8Array, what = 'fault request'): FaultRequest => decodeJson<FaultRequest>(bytes, what);
export const decodeFaultReply = (bytes: Uint8Array, what = 'fault reply'): FaultReply => decodeJson<FaultReply>(bytes, what);
export const decodeFaultReached = (bytes: Uint8Array, what = 'fault reached'): FaultReached => decodeJson<FaultReached>(bytes, what);
