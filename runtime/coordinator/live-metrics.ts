// What the coordinator knows of a run's speed while it runs, from the
// counters every stage sends with its step reports: how busy each stage is,
// the pipeline bubble beside the schedule's bound, MFU against the hosts'
// peaks, bytes on the wire per edge, frames waiting per stage, and the
// recovery events it saw. The same numbers go to `caravan status` (through
// the run's KV state) and to OpenTelemetry metrics (runtime/telemetry/metrics.ts).
import type { LlamaConfig } from '../../schemas/model-config.ts';
import { trainFlopsPerToken } from '../../schemas/model-flops.ts';
import type { ComputeCount, StageCounters, WireCount } from '../../schemas/control-messages.ts';
import type { EdgeTraffic, LiveMetrics, PipelineUse, RecoveryCounts } from '../../schemas/run-records.ts';

/** Replica 0's stages' use of their time, beside the least bubble the schedule allows and what each stage stashed. */
export function pipelineUse(stages: readonly ComputeCount[], schedule: { readonly name: string; readonly bound: number }): PipelineUse {
  const S = stages.length;
  const window = Math.max(...stages.map((c) => c.last_ms)) - Math.min(...stages.map((c) => c.first_ms));
  const utilization = stages.map((c) => (window > 0 ? c.busy_ms / window : 0));
  return {
    utilization_by_stage: utilization,
    bubble: 1 - utilization.reduce((a, b) => a + b, 0) / S,
    bubble_bound: 1 - schedule.bound,
    schedule: schedule.name,
    peak_stash_bytes_by_stage: stages.map((c) => c.peak_stash_bytes ?? 0),
  };
}

/** Model FLOPs per second over the sum of the hosts' peaks (GFLOP/s), in percent. */
export function mfuPercent(tokensPerS: number, model: LlamaConfig, seqLen: number, peaksGflops: readonly number[]): number {
  const peak = peaksGflops.reduce((a, b) => a + b, 0);
  return peak > 0 ? (100 * tokensPerS * trainFlopsPerToken(model, seqLen)) / (peak * 1e9) : 0;
}

/** Tokens one replica trains on per step: microbatches × batch × sequence. */
export function tokensPerStep(t: { readonly microbatches: number; readonly batchSize: number; readonly seqLen: number }): number {
  return t.microbatches * t.batchSize * t.seqLen;
}

export const NO_RECOVERIES: RecoveryCounts = { hosts_lost: 0, slots_reassigned: 0, coordinator_restarts: 0 };

const NO_WIRE: WireCount = { frames: 0, f32_bytes: 0, wire_bytes: 0 };

/**
 * Live metrics from the latest counters of every (replica, stage) slot,
 * keyed `${replica}.${stage}`; undefined until every stage of replica 0 has
 * reported once.
 */
export function liveMetrics(o: {
  readonly counters: ReadonlyMap<string, StageCounters>;
  readonly stages: number;
  readonly schedule: { readonly name: string; readonly bound: number };
  readonly model: LlamaConfig;
  readonly seqLen: number;
  readonly step: number;
  readonly tokensPerS: number;
  readonly recoveries: RecoveryCounts;
}): LiveMetrics | undefined {
  const replica0 = Array.from({ length: o.stages }, (_, s) => o.counters.get(`0.${s}`));
  if (replica0.some((c) => c === undefined)) return undefined;
  const stages = replica0 as StageCounters[];
  const edges = Array.from({ length: o.stages - 1 }, (_, s) => ({
    edge: `${s}-${s + 1}`,
    act: stages[s].sent_by_kind.act ?? NO_WIRE,
    grad: stages[s + 1].sent_by_kind.grad ?? NO_WIRE,
  }));
  return {
    step: o.step,
    tokens_per_s: o.tokensPerS,
    ...pipelineUse(stages.map((c) => c.compute), o.schedule),
    mfu_pct: mfuPercent(o.tokensPerS, o.model, o.seqLen, [...o.counters.values()].map((c) => c.compute.peak_gflops)),
    devices_by_stage: stages.map((c) => c.compute.device),
    edges,
    queued_by_stage: stages.map((c) => c.queued),
    recoveries: { ...o.recoveries },
  };
}
