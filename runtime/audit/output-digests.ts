// What a slot's holder commits to for each step: the digest of every frame
// it sent, by kind, in microbatch order (schemas/control-messages.ts
// OutputDigests). A frame's digest is over its payload as sent, after its
// codecs, so the receiver's copy, the sender's report and an auditor's
// recomputation (which encodes with the same codecs) can all be compared.
// Where a step was redone under a later attempt, the later frames count.
import { createHash } from 'node:crypto';
import type { OutputDigests } from '../../schemas/control-messages.ts';
import { framePayload, type FrameKind } from '../../schemas/tensor-frame.ts';

/** SHA-256 (hex) of an encoded frame's payload. */
export function frameDigest(encoded: Uint8Array): string {
  const payload = framePayload(encoded);
  if (!payload) throw new Error(`frameDigest: ${encoded.byteLength} bytes do not hold a frame's payload`);
  return createHash('sha256').update(payload).digest('hex');
}

/** The step's digest of one kind: SHA-256 over its frames' digests, microbatch 0 first. */
export function combineDigests(byMicrobatch: readonly string[]): string {
  const h = createHash('sha256');
  for (const d of byMicrobatch) h.update(d);
  return h.digest('hex');
}

/** The digests of the frames a slot sent, kept per step until its report takes them. */
export class StepDigests {
  // `${kind}/${step}` → microbatch → the latest attempt's frame digest
  private readonly frames = new Map<string, Map<number, { attempt: number; digest: string }>>();

  record(kind: FrameKind, step: number, mb: number, attempt: number, digest: string): void {
    const k = `${kind}/${step}`;
    let byMb = this.frames.get(k);
    if (!byMb) this.frames.set(k, (byMb = new Map()));
    const had = byMb.get(mb);
    if (!had || had.attempt <= attempt) byMb.set(mb, { attempt, digest });
  }

  /** The step's digests, each kind over microbatches 0..M−1; a kind with a microbatch missing is left out. */
  take(step: number, microbatches: number): OutputDigests {
    const out: { act?: string; grad?: string } = {};
    for (const kind of ['act', 'grad'] as const) {
      const byMb = this.frames.get(`${kind}/${step}`);
      this.frames.delete(`${kind}/${step}`);
      if (!byMb || byMb.size < microbatches) continue;
      out[kind] = combineDigests(Array.from({ length: microbatches }, (_, mb) => byMb.get(mb)!.digest));
    }
    return out;
  }
}
