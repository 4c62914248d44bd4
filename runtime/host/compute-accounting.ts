// How a slot's holder used its device: the time its engine calls took, the
// epoch ms of the first and the last, the device and the peak MFU is taken
// against; with what it sent and what waits to be computed, the counters
// every step report and the final report carry.
import type { StageCounters, WireCount } from '../../schemas/control-messages.ts';
import type { FrameKind } from '../../schemas/tensor-frame.ts';
import type { DeviceResult } from '../compute/compute-stage.ts';

export class ComputeAccounting {
  private busyMs = 0;
  private firstCompute = 0;
  private lastCompute = 0;

  constructor(private readonly peakGflops: number, private readonly device: string) {}

  /** Waits for an engine call that runs off the event loop, counting the device's time on it as busy. */
  async onDevice<R>(call: Promise<DeviceResult<R>>): Promise<R> {
    const { value, deviceMs } = await call;
    this.busyMs += deviceMs;
    const now = Date.now();
    if (!this.firstCompute) this.firstCompute = now - deviceMs;
    this.lastCompute = now;
    return value;
  }

  counters(sentByKind: Record<FrameKind, WireCount>, queued: number, peakStashBytes: number): StageCounters {
    return {
      compute: { busy_ms: this.busyMs, first_ms: this.firstCompute, last_ms: this.lastCompute, peak_gflops: this.peakGflops, device: this.device, peak_stash_bytes: peakStashBytes },
      sent_by_kind: sentByKind,
      queued,
    };
  }
}
