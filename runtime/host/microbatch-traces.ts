// One trace per microbatch, across every host it crosses: stage 0 opens the
// root span `microbatch` when it takes the microbatch and closes it when its
// backward is done; each stage adds `consume` (with `decode`), `queue` (from
// arrival to compute), `forward` and `backward` (or, under a zero-bubble
// schedule, `backward-input` and its child `backward-weight`), and `encode` and `publish`
// for what it sends on. Frames carry the context as `traceparent` in their
// headers (transport/ puts it there and reads it back), so a stage's spans
// hang under the span that sent its input; the last stage's backward hangs
// under its own forward.
import { TraceFlags, type Context, type Span } from '@opentelemetry/api';
import type { FrameKind } from '../../schemas/tensor-frame.ts';
import type { Tracing } from '../telemetry/tracing.ts';

export interface TraceIdentity {
  readonly run: string;
  readonly replica: number;
  readonly stage: number;
  readonly isFirst: boolean;
  readonly isLast: boolean;
  /** The run's pipeline schedule, on each microbatch's root span (caravan timeline reads it). */
  readonly schedule: string;
}

interface Arrival {
  readonly ctx: Context | undefined;
  readonly at: number;  // epoch ms
}

/** trace_id and span_id of a recorded span, for log lines; nothing when tracing is off. */
export function traceIds(span: Span): { trace_id?: string; span_id?: string } {
  // By the sampled flag, not isRecording(): the lines are written after their span has ended.
  const c = span.spanContext();
  if (!(c.traceFlags & TraceFlags.SAMPLED)) return {};
  return { trace_id: c.traceId, span_id: c.spanId };
}

/** The span of one computation: the forward, the fused backward, or a split backward's input (B) and weight (W) halves. */
export type ComputeSpan = 'forward' | 'backward' | 'backward-input' | 'backward-weight';

export class MicrobatchTraces {
  private readonly inputHalves = new Map<string, Context>();  // a split backward's B span, parent of its W
  private readonly roots = new Map<string, Span>();          // stage 0: `${step}/${mb}/${attempt}`
  private readonly forwards = new Map<string, Context>();    // last stage: its forward, parent of its backward
  private readonly arrivals = new Map<string, Arrival>();    // `${kind}/${step}/${mb}/${attempt}`

  constructor(private readonly tracing: Tracing, private readonly id: TraceIdentity) {}

  private attributes(step: number, mb: number, attempt = 0): Record<string, string | number> {
    const a = { 'caravan.run': this.id.run, 'caravan.replica': this.id.replica, 'caravan.stage': this.id.stage, 'caravan.step': step, 'caravan.microbatch': mb };
    return attempt > 0 ? { ...a, 'caravan.attempt': attempt } : a;
  }

  /** A frame was consumed (`from`: what it came in, which carries the sender's context): `decode` ran from `started` to now. */
  consumed(kind: FrameKind, step: number, mb: number, attempt: number, from: { traceContext(): Context | undefined }, started: number, wireBytes: number, codecs: readonly string[]): void {
    if (!this.tracing.enabled) return;
    const parent = from.traceContext();
    const attributes = { ...this.attributes(step, mb, attempt), 'caravan.kind': kind, 'caravan.bytes_wire': wireBytes, 'caravan.codecs': codecs.join('+') || 'none' };
    const consume = this.tracing.start('consume', parent, { startTime: started, attributes });
    this.tracing.start('decode', this.tracing.contextOf(consume), { startTime: started, attributes }).end();
    consume.end();
    this.arrivals.set(`${kind}/${step}/${mb}/${attempt}`, { ctx: this.tracing.contextOf(consume), at: Date.now() });
  }

  /**
   * Opens a computation of a microbatch (and `queue` for the wait before it);
   * returns the span to end. A split backward's weight half is a child of its
   * input half, which is what it waited for.
   */
  compute(kind: ComputeSpan, step: number, mb: number, attempt: number): Span {
    if (!this.tracing.enabled) return this.tracing.start(kind, undefined);  // a non-recording span: no bookkeeping
    const k = `${step}/${mb}/${attempt}`;
    const attributes = this.attributes(step, mb, attempt);
    let parent: Context | undefined;
    if (kind === 'forward' && this.id.isFirst) {
      const root = this.tracing.start('microbatch', undefined, { attributes: { ...attributes, 'caravan.schedule': this.id.schedule } });
      this.roots.set(k, root);
      parent = this.tracing.contextOf(root);
    } else if (kind === 'backward-weight') {
      parent = this.inputHalves.get(k);
      this.inputHalves.delete(k);
    } else if (kind !== 'forward' && this.id.isLast) {
      parent = this.forwards.get(k);
      this.forwards.delete(k);
    } else {
      const arrival = this.arrivals.get(`${kind === 'forward' ? 'act' : 'grad'}/${k}`);
      this.arrivals.delete(`${kind === 'forward' ? 'act' : 'grad'}/${k}`);
      parent = arrival?.ctx;
      if (arrival) this.tracing.start('queue', parent, { startTime: arrival.at, attributes }).end();
    }
    return this.tracing.start(kind, parent, { attributes });
  }

  /** Closes a compute span; the last stage keeps its forward as its backward's parent, stage 0 closes the root after its last computation of the microbatch. */
  computed(kind: ComputeSpan, step: number, mb: number, attempt: number, span: Span): void {
    span.end();
    if (!this.tracing.enabled) return;
    const k = `${step}/${mb}/${attempt}`;
    if (kind === 'forward' && this.id.isLast) this.forwards.set(k, this.tracing.contextOf(span));
    if (kind === 'backward-input') this.inputHalves.set(k, this.tracing.contextOf(span));
    if ((kind === 'backward' || kind === 'backward-weight') && this.id.isFirst) {
      this.roots.get(k)?.end();
      this.roots.delete(k);
    }
  }

  /**
   * An attempt of a step was voided (its step before was rolled back): the
   * traces of its microbatches end here, marked `caravan.voided`, and the
   * redone attempt's microbatches get traces of their own.
   */
  voided(step: number, attempt: number): void {
    if (!this.tracing.enabled) return;
    const of = (k: string, at: number) => k.split('/')[at] === String(step) && k.split('/')[at + 2] === String(attempt);
    for (const [k, root] of this.roots) if (of(k, 0)) { root.setAttribute('caravan.voided', true); root.end(); this.roots.delete(k); }
    for (const map of [this.forwards, this.inputHalves]) for (const k of map.keys()) if (of(k, 0)) map.delete(k);
    for (const k of this.arrivals.keys()) if (of(k, 1)) this.arrivals.delete(k);
  }

  /** Spans around sending a frame: `encode` then `publish`, which is handed the context the frame carries on. */
  send<T>(parent: Span, step: number, mb: number, encode: () => { bytes: Uint8Array; f32Bytes: number; codecs: readonly string[] }, publish: (bytes: Uint8Array, trace: Context) => Promise<T>): Promise<T> {
    const parentCtx = this.tracing.contextOf(parent);
    const encodeSpan = this.tracing.start('encode', parentCtx, { attributes: this.attributes(step, mb) });
    const out = encode();
    const attributes = { ...this.attributes(step, mb), 'caravan.bytes_raw': out.f32Bytes, 'caravan.bytes_wire': out.bytes.byteLength, 'caravan.codecs': out.codecs.join('+') || 'none' };
    encodeSpan.setAttributes(attributes);
    encodeSpan.end();
    const publishSpan = this.tracing.start('publish', parentCtx, { attributes });
    return publish(out.bytes, this.tracing.contextOf(publishSpan)).finally(() => publishSpan.end());
  }
}
