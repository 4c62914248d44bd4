// How a slot's holder used its device: the time its engine calls took, the
// epoch ms of the first and the last, the device and the peak MFU is taken
// against; with what it sent and what waits to be computed, the counters
// every step report and the final report carry.
import type { StageCounters, WireCount } from '../../schemas/control-messages.ts';
import type { FrameKind } from '../../schemas/tensor-frame.ts';

export class ComputeAccounting {
  private busyMs = 0;
  private firstCompute = 0;
  private lastCompute = 0;

  constructor(private readonly peakGflops: number, private readonly device: string) {}

  /** Runs an engine call, counting its time as busy. */
  timed<R>(f: () => R): R {
    const t0 = performance.now();
    try {
      return f();
    } finally {
      const t1 = performance.now();
      this.busyMs += t1 - t0;
      if (!this.firstCompute) this.firstCompute = Date.now() - (t1 - t0);
      this.lastCompute = Date.now();
    }
  }

  counters(sentByKind: Record<FrameKind, WireCount>, queued: number, peakStashBytes: number): StageCounters {
    return {
      compute: { busy_ms: this.busyMs, first_ms: this.firstCompute, last_ms: this.lastCompute, peak_gflops: this.peakGflops, device: this.device, peak_stash_bytes: peakStashBytes },
      sent_by_kind: sentByKind,
      queued,
    };
  }
}
