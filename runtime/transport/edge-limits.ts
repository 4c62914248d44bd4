// How much one sender can put in front of a stage, enforced by the server on
// the edge stream, so a flooding or oversized sender is refused at publish
// time instead of filling a receiver's memory or the disk:
//
// - every message at most one frame of the run's largest shape ([B, T, d] as
//   float32, plus room for the envelope); bottlenecks and codecs only shrink it;
// - every edge subject (one per sender and direction) at most what a slot can
//   legitimately have outstanding: the frames since the last checkpoint, the
//   step in flight, and as many again re-sent by a replacement, per
//   microbatch; under a post-validated schedule also the steps redone after a
//   roll-back (at most every other step: a stage does not run ahead right
//   after a commit that rolled back), and with audits (training.audit) as
//   many intervals more as audits of the slot may wait at once, which hold
//   their inputs back from the purge.
//   Further frames are refused (discard new, per subject).
//
// A receiver's unacked inputs are bounded the same way (max_ack_pending).
import type { RunConfig } from '../../schemas/run-config.ts';
import { runSchedule } from '../config/run-schedule.ts';

/** How many audits of one slot may wait at once (runtime/coordinator/audits.ts): each holds an interval's inputs. */
export const AUDITS_PENDING_PER_SLOT = 2;

export interface EdgeLimits {
  readonly maxFrameBytes: number;
  readonly maxFramesPerEdge: number;
}

/** Room for the CBOR envelope of a frame around its payload. */
const ENVELOPE_BYTES = 64 * 1024;

export function edgeLimits(config: RunConfig): EdgeLimits {
  const t = config.training;
  const stepsHeld = t.checkpointEvery > 0 ? t.checkpointEvery * (1 + (t.audit ? AUDITS_PENDING_PER_SLOT : 0)) + 2 : t.steps + 1;
  const redone = runSchedule(config).postValidated ? Math.ceil(stepsHeld / 2) : 0;
  return {
    maxFrameBytes: t.batchSize * t.seqLen * config.model.dModel * 4 + ENVELOPE_BYTES,
    maxFramesPerEdge: (2 * stepsHeld + redone) * t.microbatches + 16,
  };
}
