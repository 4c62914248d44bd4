// A slot's inputs, from its edges to the engine. Who sent a frame is settled
// before anything of it is decoded: its signature is checked against the
// slot table's key for the sender's slot; then its tensor is decoded and its
// shape checked. A frame that fails either goes to the dead letters with its
// reason. One already taken while its step is still open is acked and
// dropped; one that holds NaN or ±Inf stops the run or, under
// `training.nonFinite: skip-step`, poisons its step. The rest wait here for
// the computation that takes them, while their messages stay unacked until
// their step's effect is in the weights (ACK_STEP), or was already
// (DUPLICATE): where a holder's inputs resume after a checkpoint follows from
// what is still unacked.
import type { StageEvent } from '../../actors/stage-machine.ts';
import type { CheckpointPointer } from '../../schemas/control-messages.ts';
import type { NonFinitePolicy } from '../../schemas/run-config.ts';
import { decodeFrame, FrameError, type FrameExpectation, type FrameKind, type TensorFrame } from '../../schemas/tensor-frame.ts';
import { FRAME_CODECS } from '../codecs/index.ts';
import type { Logger } from '../log.ts';
import { SIGNATURE_HEADER } from '../security/message-signature.ts';
import type { SlotSigners } from '../security/slot-signers.ts';
import type { EdgeDelivery } from '../transport/slot-inputs.ts';
import type { MicrobatchTraces } from './microbatch-traces.ts';

export interface IncomingFramesOptions {
  readonly run: string;
  readonly replica: number;
  readonly stage: number;
  readonly batchSize: number;
  readonly seqLen: number;
  readonly maxSeqLen: number;
  /** Channels of each kind of input: activations come across layerBegin, gradients across layerEnd. */
  readonly widths: Record<FrameKind, number>;
  readonly nonFinite: NonFinitePolicy;
  /** Where the restored checkpoint's inputs start, if the holder started from one. */
  readonly resume: CheckpointPointer['resume'] | undefined;
  readonly signers: SlotSigners;
  readonly traces: MicrobatchTraces;
  readonly log: Logger;
  /** Moves a refused frame to the dead letters (which acks it). */
  readonly moveToDeadLetters: (d: EdgeDelivery, fault: string, reason: string) => Promise<void>;
  /** The host's count of the frames it refused (its heartbeats carry it). */
  readonly deadLetters: { count: number };
  /** Tells the Stage actor an input is here. */
  readonly send: (event: StageEvent) => void;
}

interface Unacked {
  readonly key: string;
  readonly delivery: EdgeDelivery;
}

const key = (kind: FrameKind, step: number, mb: number, attempt: number) => `${kind}/${step}/${mb}/${attempt}`;

export class IncomingFrames {
  // Inputs that arrived, by `${kind}/${step}/${mb}/${attempt}`, and their messages by step, acked at commit.
  private readonly inputs = new Map<string, Float32Array>();
  private readonly seen = new Set<string>();
  private readonly unacked = new Map<number, Unacked[]>();
  private readonly lastSeq = new Map<FrameKind, number>();        // the last edge-stream sequence delivered, per kind
  private readonly streamPending = new Map<FrameKind, number>();  // messages left in each edge stream, as of its last delivery

  private readonly expect: Record<FrameKind, FrameExpectation>;

  constructor(private readonly o: IncomingFramesOptions) {
    const { run, replica, stage, maxSeqLen, widths } = o;
    const expect = (kind: FrameKind) => ({ run, replica, stage, kind, width: widths[kind], maxSeqLen, codecs: FRAME_CODECS });
    this.expect = { act: expect('act'), grad: expect('grad') };
  }

  /** Reads an edge until it closes. */
  async read(kind: FrameKind, edge: AsyncIterable<EdgeDelivery>): Promise<void> {
    for await (const d of edge) await this.receive(kind, d);
  }

  /** The input a computation takes; it is no longer held here. */
  take(kind: FrameKind, step: number, mb: number, attempt: number): Float32Array | undefined {
    const k = key(kind, step, mb, attempt);
    const input = this.inputs.get(k);
    this.inputs.delete(k);
    return input;
  }

  /** The step's effect is in the weights: its inputs are acked, and a redelivery of one is no longer a repeat. */
  ackStep(step: number): void {
    for (const u of this.unacked.get(step) ?? []) u.delivery.ack();
    this.unacked.delete(step);
    for (const k of this.seen) if (k.split('/')[1] === String(step)) this.seen.delete(k);
  }

  /** A frame whose effect is already in the weights, or of an attempt that was voided: it only needs its ack. */
  duplicate(kind: FrameKind, step: number, mb: number, attempt: number): void {
    const k = key(kind, step, mb, attempt);
    const pending = this.unacked.get(step) ?? [];
    for (const u of pending) if (u.key === k) u.delivery.ack();
    this.unacked.set(step, pending.filter((u) => u.key !== k));
    this.inputs.delete(k);
    this.seen.delete(k);
  }

  /** Where this holder's inputs start after `step`: the first input of a later step that arrived, or else the next one to come. */
  resumeAfter(kind: FrameKind, step: number): number {
    let min = (this.lastSeq.get(kind) ?? (this.o.resume?.[kind] ?? 1) - 1) + 1;
    let found = false;
    for (const [st, list] of this.unacked) {
      if (st <= step) continue;
      for (const u of list) if (u.key.startsWith(`${kind}/`) && (!found || u.delivery.seq < min)) { min = u.delivery.seq; found = true; }
    }
    return min;
  }

  /** Frames received and not yet computed on, plus those still waiting in the edge streams. */
  queued(): number {
    return this.inputs.size + [...this.streamPending.values()].reduce((a, b) => a + b, 0);
  }

  private async receive(kind: FrameKind, d: EdgeDelivery): Promise<void> {
    const { replica, stage, log } = this.o;
    this.lastSeq.set(kind, d.seq);
    this.streamPending.set(kind, d.pending);
    const received = Date.now();
    const sender = kind === 'act' ? stage - 1 : stage + 1;
    const signed = await this.o.signers.check({ kind: 'frame', subject: d.subject, body: d.data, header: d.header(SIGNATURE_HEADER), replica, stage: sender, edge: kind, seq: d.seq });
    if (!signed.ok) return this.deadLetter(d, signed.fault, signed.reason);
    let frame: TensorFrame;
    try {
      frame = this.decode(kind, d.data);
    } catch (err) {
      if (!(err instanceof FrameError)) throw err;
      return this.deadLetter(d, err.fault, err.message);
    }
    const k = key(kind, frame.step, frame.microbatch, frame.attempt);
    if (this.seen.has(k)) { d.ack(); return; }  // redelivered while its step is still open
    const poison = nonFiniteIn(frame.data);
    if (poison) {
      const what = `a${kind === 'act' ? 'n' : ''} ${kind} frame from stage ${sender} (host ${signed.host}, generation ${signed.generation}) for step ${frame.step} microbatch ${frame.microbatch} holds ${poison.count} non-finite value(s), the first at index ${poison.first}`;
      // Under 'stop' it never reaches the engine; under 'skip-step' it poisons this step's gradients, and the replica skips the step.
      if (this.o.nonFinite === 'stop') throw new Error(`${what}: stopping the run (training.nonFinite = stop)`);
      log.warn({ step: frame.step, mb: frame.microbatch, sender, host: signed.host, count: poison.count }, `${what}: the step will be skipped`);
    }
    this.seen.add(k);
    this.o.traces.consumed(kind, frame.step, frame.microbatch, frame.attempt, d, received, d.data.byteLength, frame.codecs);
    this.inputs.set(k, frame.data);
    let pending = this.unacked.get(frame.step);
    if (!pending) this.unacked.set(frame.step, (pending = []));
    pending.push({ key: k, delivery: d });
    this.o.send({ type: kind === 'act' ? 'ACT_ARRIVED' : 'GRAD_ARRIVED', step: frame.step, mb: frame.microbatch, attempt: frame.attempt });
  }

  private decode(kind: FrameKind, bytes: Uint8Array): TensorFrame {
    const { batchSize: B, seqLen: T } = this.o;
    const frame = decodeFrame(bytes, this.expect[kind]);
    if (frame.shape[0] !== B || frame.shape[1] !== T) throw new FrameError('shape', `frame shape [${frame.shape.join(', ')}] is not this run's [${B}, ${T}, ${this.expect[kind].width}]`);
    return frame;
  }

  /** A frame refused by signature or decoder: moved to the dead-letter stream with its reason, counted, logged. */
  private async deadLetter(d: EdgeDelivery, fault: string, reason: string): Promise<void> {
    await this.o.moveToDeadLetters(d, fault, reason);
    this.o.deadLetters.count++;
    this.o.log.warn({ fault, reason, subject: d.subject, seq: d.seq }, 'frame dead-lettered');
  }
}

/** NaN and ±Inf in a tensor: how many, and where the first is; undefined when there are none. */
function nonFiniteIn(data: Float32Array): { count: number; first: number } | undefined {
  let probe = 0;
  for (let i = 0; i < data.length; i++) probe += data[i] * 0;  // stays 0 unless some value is NaN or ±Inf
  if (probe === 0) return undefined;
  let count = 0, first = -1;
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) { count++; if (first < 0) first = i; }
  return { count, first };
}
