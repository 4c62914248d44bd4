// A slot's outputs on their way out: each frame is encoded (with its
// boundary's codecs) in an `encode` span, checked against the server's
// max_payload, counted by kind and published, signed, in a `publish` span.
// Frames go out without holding up the next computation: waiting for each
// acknowledgement put a round trip to the stream's server (across a WAN,
// tens of ms) after every forward and backward. At most MAX_FRAMES_IN_FLIGHT
// are unacknowledged at once, and the slot waits for all of them before the
// step's report (allSent), so a commit still means every frame of the step
// is stored (a checkpoint after it relies on that). A frame is encoded and
// signed on the event loop's next turn, after the slot has started its next
// computation, so that work overlaps the device's instead of delaying it; the
// engine's outputs are fresh arrays, never reused. Frames are encoded into
// buffers used again once stored (frame-buffers.ts).
import type { Span } from '@opentelemetry/api';
import type { WireCount } from '../../schemas/control-messages.ts';
import { encodeFrameWithCodecs, type FrameCodec, type FrameContent, type FrameKind } from '../../schemas/tensor-frame.ts';
import { frameDigest, type StepDigests } from '../audit/output-digests.ts';
import type { SlotOutputs } from '../transport/slot-outputs.ts';
import type { FaultPoints } from './fault-points.ts';
import { FrameBuffers } from './frame-buffers.ts';
import type { MicrobatchTraces } from './microbatch-traces.ts';

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

// Frames published and not yet acknowledged, per stage (each up to max_payload, 8 MiB).
const MAX_FRAMES_IN_FLIGHT = 8;

export interface OutgoingFramesOptions {
  readonly run: string;
  readonly replica: number;
  readonly stage: number;
  /** The holder's generation of the slot. */
  readonly generation: number;
  readonly batchSize: number;
  readonly seqLen: number;
  /** By kind: the channels and the codecs of its boundary (activations cross layerEnd, gradients layerBegin). */
  readonly wire: Record<FrameKind, { readonly width: number; readonly codecs: readonly FrameCodec[] }>;
  /** The largest message the NATS server takes, in bytes. */
  readonly maxPayload: number;
  readonly outputs: SlotOutputs;
  readonly traces: MicrobatchTraces;
  readonly faults: FaultPoints;
  /** Where each frame's digest goes, for the step's report: only in an audited run (training.audit), which alone reads them. */
  readonly digests: StepDigests | undefined;
  /** Stops the slot: a frame that could not be published. */
  readonly failed: (err: Error) => void;
}

export class OutgoingFrames {
  private readonly sending = new Set<Promise<void>>();
  private readonly sent: Record<FrameKind, WireCount> = { act: { frames: 0, f32_bytes: 0, wire_bytes: 0 }, grad: { frames: 0, f32_bytes: 0, wire_bytes: 0 } };
  private readonly buffers = new FrameBuffers(MAX_FRAMES_IN_FLIGHT + 1);

  constructor(private readonly o: OutgoingFramesOptions) {}

  /** Sends `data` as the `kind` frame of (step, mb, attempt) into stage `to`; returns once a place in flight is free. */
  async send(kind: FrameKind, to: number, at: { step: number; mb: number; attempt: number }, data: Float32Array, parent: Span): Promise<void> {
    while (this.sending.size >= MAX_FRAMES_IN_FLIGHT) await Promise.race(this.sending);
    // Encoded and published once the event loop turns: by then the slot's next computation is under way on the device.
    const sent: Promise<void> = nextTurn().then(() => this.publish(kind, to, at, data, parent))
      .catch((err: Error) => this.o.failed(err))
      .finally(() => this.sending.delete(sent));
    this.sending.add(sent);
  }

  /** Settles once every frame sent so far is stored. */
  async allSent(): Promise<void> {
    while (this.sending.size) await Promise.all([...this.sending]);
  }

  /** Frames and bytes sent so far, by kind. */
  sentByKind(): Record<FrameKind, WireCount> {
    return { act: { ...this.sent.act }, grad: { ...this.sent.grad } };
  }

  private async publish(kind: FrameKind, to: number, at: { step: number; mb: number; attempt: number }, data: Float32Array, parent: Span): Promise<void> {
    const { run, replica, stage, batchSize: B, seqLen: T, maxPayload, faults } = this.o;
    const { step, mb, attempt } = at;
    const { width, codecs } = this.o.wire[kind];
    if (faults.poisons(kind, replica, stage, step, mb)) (data = data.slice())[0] = NaN;
    const content = (d: Float32Array): FrameContent => ({ run, replica, stage: to, step, microbatch: mb, attempt, kind, shape: [B, T, width], data: d });
    const cheat = faults.cheats(replica, stage, this.o.generation, step);
    // A cheater that flips a bit reports the honest frame's digest: its report and what it sent then disagree.
    const reported = cheat === 'flip' && this.o.digests ? frameDigest(encodeFrameWithCodecs(content(data), codecs).bytes) : undefined;
    if (cheat === 'scale') data = data.map((v) => Math.fround(v * (1 + 1e-3)));
    if (cheat === 'flip') { data = data.slice(); new Uint32Array(data.buffer)[0] ^= 1; }
    let taken: Uint8Array | undefined;
    await this.o.traces.send(parent, step, mb, () => {
      const encoded = encodeFrameWithCodecs(content(data), codecs, (bytes) => (taken = this.buffers.take(bytes)));
      this.o.digests?.record(kind, step, mb, attempt, reported ?? frameDigest(encoded.bytes));
      return { ...encoded, f32Bytes: data.byteLength };
    }, (bytes, trace) => {
      const count = this.sent[kind];
      count.frames++;
      count.f32_bytes += data.byteLength;
      count.wire_bytes += bytes.byteLength;
      if (bytes.length > maxPayload) {
        throw new Error(`a ${kind} frame of ${bytes.length} bytes exceeds the server's max_payload of ${maxPayload} bytes: raise max_payload (up to 8MB) in the nats-server config, shrink B·T·d, or put a bottleneck at the boundary (--bottleneck K)`);
      }
      return this.o.outputs.frame({ kind, to, step, mb, attempt }, bytes, trace);
    });
    this.buffers.give(taken!);  // stored: not if the publish threw, as the client may still hold it
    await faults.reach('publish');
  }
}
